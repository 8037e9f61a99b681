"""The result holder node's proof of identity: a pinned Ed25519 key (issue #14, r3).

With ``holder = "node"`` the ServerApp sends the protected aggregate to one SuperNode
and applies the vector and contributor list it sends back. Which node that is must not
be a node's own claim. The holder node therefore has its own Ed25519 identity key,
made on its machine (``privagg keygen --backend secagg --party-id holder``; node config
``privagg-identity-key``, optional ``privagg-identity-password-env``), and the run
config pins its fingerprint (``holder-key``: the hex ``keygen`` prints).

* **Hello.** The ServerApp sends a fresh 32-byte challenge (the system CSPRNG) with
  every hello request. A node with ``privagg-holder=true`` answers with its public key
  and an Ed25519 signature over :func:`hello_message` (context string, version, the
  challenge, its party id, the Flower node id it answers from). The ServerApp accepts the claim only if the key is a valid
  Ed25519 point (:func:`privagg.identity.check_public_key`), its fingerprint equals
  the pin (constant-time compare) and the signature verifies
  (:func:`verify_holder_claim`).
* **Recovery.** The recover request carries the same challenge; the holder signs
  :func:`recovery_message` (context string, version, the challenge, the round id and
  :func:`fedtrain.flower.transport.recovery_check` of the aggregate it was asked to
  recover, the vector and the contributor list). The ServerApp checks it with the key
  it accepted at hello, so a reply from another node, of another round or of another
  run is refused before anything is applied or recorded.

What the pin does not do: it authenticates the holder to the ServerApp; it does not
make the holder trustworthy (it still sees and returns the sum).

**Party ids.** The same hello binds the clients' party ids when the run config names
an identity directory (``identity-directory``: party id -> Ed25519 public key, the file
``privagg directory`` writes; any backend). A node with ``privagg-identity-key`` signs
:func:`party_hello_message` (another context string: the challenge, its party id and
its Flower node id);
the ServerApp accepts the claim of a party id the directory lists only if that
signature verifies under the directory's key for that id
(:func:`verify_party_claim`), and ignores every other claim, a ``role = "server"``
claim included (an additive run's servers are listed in the directory too). So a node
cannot take the party id of a node that misses hello, nor knock a node out by
announcing its id. The hello request asks for the party proof only when the run has a
directory (meta ``party-proof``). Without a directory a party id is the node's own
claim (see docs/flower.md).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from flwr.app import Context

import privagg
from fedtrain.flower.errors import FlowerConfigError, FlowerProtocolError
from privagg import SystemRng
from privagg.identity import (
    IDENTITY_SCHEME,
    check_public_key,
    identity_fingerprint,
    load_identity_key,
)
from privagg.keys import NoProtection, Protection, SecretBytes, SecretKey

__all__ = [
    "CHALLENGE_BYTES",
    "HolderSigner",
    "hello_message",
    "holder_key_fingerprint",
    "make_holder_key",
    "new_challenge",
    "party_hello_message",
    "parse_challenge",
    "parse_holder_pin",
    "recovery_message",
    "verify_holder_claim",
    "verify_party_claim",
    "verify_recovery",
]

CHALLENGE_BYTES = 32
"""Length of the ServerApp's hello challenge (the run's nonce), in bytes."""

_VERSION = 1
_HELLO_CONTEXT = b"fedtrain-flower/holder-hello"
_RECOVER_CONTEXT = b"fedtrain-flower/holder-recover"
_PARTY_CONTEXT = b"fedtrain-flower/party-hello"
_HEX32 = re.compile(r"[0-9a-f]{64}")
_HEX64 = re.compile(r"[0-9a-f]{128}")


def new_challenge() -> bytes:
    """A fresh hello challenge from the system CSPRNG."""
    return SystemRng().random_bytes(CHALLENGE_BYTES)


def _frame(context: bytes, *parts: bytes) -> bytes:
    out = bytearray(context + b"\x00" + _VERSION.to_bytes(2, "big"))
    for part in parts:
        out += len(part).to_bytes(8, "big") + part
    return bytes(out)


def _challenge(challenge: bytes) -> bytes:
    if not isinstance(challenge, bytes) or len(challenge) != CHALLENGE_BYTES:
        raise FlowerProtocolError("a holder challenge is 32 bytes")
    return challenge


def _party(party: object) -> bytes:
    """A party id's UTF-8 bytes ("" for none).

    Raises:
        FlowerProtocolError: not a str, or not encodable (a lone surrogate).
    """
    if not isinstance(party, str):
        raise FlowerProtocolError("a party id is a str")
    try:
        return party.encode("utf-8")
    except UnicodeEncodeError:
        raise FlowerProtocolError("a party id is not valid unicode") from None


def _node_id(node_id: object) -> bytes:
    """A Flower node id as 8 big-endian bytes.

    Raises:
        FlowerProtocolError: not an int (a bool, a float, a str, an int subclass) or
            outside the unsigned 64-bit range.
    """
    if type(node_id) is not int or not 0 <= node_id < 2**64:
        raise FlowerProtocolError("a Flower node id is an unsigned 64-bit integer")
    return node_id.to_bytes(8, "big")


def hello_message(challenge: bytes, party: str, node_id: int) -> bytes:
    """What the holder signs at hello: the challenge, its party id ("" if none) and
    the Flower node id it answers from (so a holder proof relayed by another node
    does not verify: review r8).

    Raises:
        FlowerProtocolError: a malformed challenge, party id or node id.
    """
    return _frame(
        _HELLO_CONTEXT, _challenge(challenge), _party(party), _node_id(node_id)
    )


def party_hello_message(challenge: bytes, party: str, node_id: int) -> bytes:
    """What a node signs at hello to prove its party id (run config
    ``identity-directory``): the challenge, the id and the Flower node id it answers
    from (so a proof relayed by another node, even in the same run, does not verify),
    under its own context string (a holder's hello signature is never a party proof,
    nor the reverse).

    Raises:
        FlowerProtocolError: a malformed challenge, party id or node id (an int in
            the unsigned 64-bit range).
    """
    return _frame(
        _PARTY_CONTEXT, _challenge(challenge), _party(party), _node_id(node_id)
    )


def recovery_message(challenge: bytes, round_id: int, check: str) -> bytes:
    """What the holder signs with a recovery reply: the run's challenge, the round id
    and the reply's :func:`~fedtrain.flower.transport.recovery_check` (which covers
    the round id, the aggregate, the vector and the contributor list).

    Raises:
        FlowerProtocolError: a round id that is not an int in the signed 64-bit range
            (a bool, a float, a str, an int subclass), or a check value that is not an
            ASCII str.
    """
    if type(round_id) is not int or not -(2**63) <= round_id < 2**63:
        raise FlowerProtocolError("the round id does not fit a signed 64-bit integer")
    if not isinstance(check, str) or not check.isascii():
        raise FlowerProtocolError("a recovery check value is ASCII text")
    return _frame(
        _RECOVER_CONTEXT,
        _challenge(challenge),
        round_id.to_bytes(8, "big", signed=True),
        check.encode("ascii"),
    )


def parse_challenge(text: object) -> bytes:
    """A challenge from its hex text in a request's meta.

    Raises:
        FlowerProtocolError: not 64 lowercase hex characters.
    """
    if not isinstance(text, str) or not _HEX32.fullmatch(text):
        raise FlowerProtocolError("the request carries no well-formed holder challenge")
    return bytes.fromhex(text)


def parse_holder_pin(text: object) -> bytes:
    """The run config's ``holder-key``: the holder's identity fingerprint (64 hex
    characters, as ``privagg keygen`` prints it).

    Raises:
        FlowerConfigError: missing or malformed.
    """
    value = text.strip().lower() if isinstance(text, str) else ""
    if not _HEX32.fullmatch(value):
        raise FlowerConfigError(
            "holder = 'node' needs run config 'holder-key': the result holder's "
            "identity fingerprint (64 hex characters, printed by 'privagg keygen "
            "--backend secagg' on the holder's machine)"
        )
    return bytes.fromhex(value)


class HolderSigner:
    """A node's identity signing key (node config ``privagg-identity-key``): the
    holder's proof, and any node's party-id proof at hello."""

    def __init__(self, secret: bytes) -> None:
        self._key = Ed25519PrivateKey.from_private_bytes(secret)
        self.public_key = self._key.public_key().public_bytes_raw()

    @classmethod
    def from_node_config(
        cls, context: Context, protection: Protection | None
    ) -> HolderSigner | None:
        """The key named by node config ``privagg-identity-key``, or None if unset.

        Raises:
            privagg.PrivaggError: an unreadable key file.
        """
        path = context.node_config.get("privagg-identity-key")
        if not path:
            return None
        secret = load_identity_key(
            privagg.read_secret_file(str(path)), protection=protection
        )
        return cls(secret.reveal())

    def sign(self, message: bytes) -> str:
        """The hex Ed25519 signature of ``message``."""
        return self._key.sign(message).hex()


def make_holder_key(
    path: str | Path, *, protection: Protection | None = None
) -> tuple[Path, str]:
    """Write a new holder key file at ``path`` (0600, atomic; the same format as
    ``privagg keygen --backend secagg``) from the system CSPRNG; return the path and
    the fingerprint the run config pins as ``holder-key``. For in-process setups (the
    simulation); a deployment's holder runs ``privagg keygen`` on its own machine.
    """
    secret = SecretBytes(SystemRng().random_bytes(32), label="holder identity key")
    public = Ed25519PrivateKey.from_private_bytes(secret.reveal()).public_key()
    fp = identity_fingerprint(public.public_bytes_raw())
    key: SecretKey[SecretBytes] = SecretKey(
        IDENTITY_SCHEME, secret, public_fingerprint=fp, export=lambda m: m.reveal()
    )
    out = privagg.write_secret_file(
        Path(path), key.to_bytes(protection=protection or NoProtection())
    )
    return Path(out), fp.hex()


def holder_key_fingerprint(
    path: str | Path, *, protection: Protection | None = None
) -> str:
    """The fingerprint (hex) of the holder key file at ``path``: what ``privagg keygen``
    printed for it and the run config pins as ``holder-key``.

    Raises:
        privagg.PrivaggError: not a readable identity key file.
    """
    secret = load_identity_key(privagg.read_secret_file(path), protection=protection)
    public = Ed25519PrivateKey.from_private_bytes(secret.reveal()).public_key()
    return identity_fingerprint(public.public_bytes_raw()).hex()


def _verify(public_key: object, signature: object, message: bytes) -> bool:
    if not isinstance(signature, str) or not _HEX64.fullmatch(signature):
        return False
    if not isinstance(public_key, bytes):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            bytes.fromhex(signature), message
        )
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_holder_claim(
    meta: Mapping[str, str], challenge: bytes, party: str, pin: bytes, node_id: int
) -> bytes | None:
    """The claimant's public key if its hello reply proves the pinned holder key,
    else None (no key, a malformed or invalid key, another fingerprint, a signature
    that does not verify over this challenge, party id and Flower node id
    ``node_id``: the reply's source, as the SuperLink reports it)."""
    if not isinstance(meta, Mapping):
        return None
    text = meta.get("holder-key", "")
    if not isinstance(text, str) or not _HEX32.fullmatch(text):
        return None
    try:
        key = check_public_key(bytes.fromhex(text))
    except privagg.ConfigurationError:
        return None
    if not hmac.compare_digest(identity_fingerprint(key), pin):
        return None
    try:
        message = hello_message(challenge, party, node_id)
    except FlowerProtocolError:
        return None
    return key if _verify(key, meta.get("holder-signature"), message) else None


def verify_party_claim(
    meta: Mapping[str, str],
    challenge: bytes,
    party: str,
    public_key: bytes,
    node_id: int,
) -> bool:
    """Whether a hello reply's ``party-signature`` proves ``party`` under
    ``public_key`` (the identity directory's key for that id) over this challenge,
    from Flower node ``node_id`` (the reply's source, as the SuperLink reports it)."""
    if not isinstance(meta, Mapping):
        return False
    try:
        message = party_hello_message(challenge, party, node_id)
    except FlowerProtocolError:
        return False
    return _verify(public_key, meta.get("party-signature"), message)


def verify_recovery(
    public_key: bytes, signature: object, challenge: bytes, round_id: int, check: str
) -> None:
    """Check the holder's signature of a recovery reply.

    Raises:
        FlowerProtocolError: missing, malformed or not by ``public_key`` over this
            challenge, round and check value.
    """
    if not _verify(public_key, signature, recovery_message(challenge, round_id, check)):
        raise FlowerProtocolError(
            "the result holder's reply is not signed by the pinned holder key for "
            "this run and round (forged, replayed or damaged): not applied"
        )
