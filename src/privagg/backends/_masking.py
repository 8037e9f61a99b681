"""The ring-masking core shared by SecAgg+ and additive secret sharing.

Both backends encode a weighted update as fixed-point words of the ring ``Z_2**bits``
(``bits`` 32 or 64), hide it behind AES-CTR keystreams derived from X25519 agreements,
and have a holder decode the unmasked sum. What they share lives here, once:

* :class:`RingOptions`: the backend options of the ring (value bound, fixed-point
  scale bits, clipping), their validation, the declared error tolerance and the ring
  width a session needs (:meth:`RingOptions.size_ring`) and, with it, what the
  session's ``params_id`` binds of the DP noise share (:meth:`RingOptions.size_session`,
  :class:`RingSizing`, :func:`noise_binding`); :class:`RingBackend`, what a backend
  declares from them;
* :class:`RingConfig`: the public per-session configuration every role holds, with
  the cheap header check every role runs before decoding a message and the client's
  fused encode-and-mask pass;
* :class:`RingAggregator`: what both aggregators report of the clients whose replies
  they did not use (``rejected``, ``rejection_reasons``), and the round's end at its
  first refusal (from :class:`~privagg.backends._common.FinishedResult`);
* :func:`check_round_id`, :func:`check_client_update`: argument checks of the roles;
* :func:`open_result` and :func:`decode_total`: the holder's checks and decoding;
* :func:`valid_x25519`: refuses low-order (unusable) X25519 public keys;
* :func:`kdf_context`, :func:`party_field`, :func:`ids_digest`: one builder for the
  byte strings that key derivations and signatures bind.

Nothing here changes a byte on the wire of a session without DP noise: every helper
reproduces what both backends computed before (see ``tests/vectors/masking`` and the
pinned ``params_id`` values of ``tests/privagg/test_masking_noise_binding.py``). A
session with a noise share binds it in ``params_id`` (#14), so its ``params_id`` (and
with it every key derivation and transcript) differs from earlier releases'.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import math
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Generic, Literal, Protocol, Self, TypeVar

import numpy as np
import numpy.typing as npt

from privagg._rng import Rng
from privagg.backends import _wire
from privagg.backends._common import FinishedResult, noise_descriptor
from privagg.backends._primitives import MASK_PRG, ecdh, x25519_key
from privagg.backends._ringcode import centred, encode_to_ring
from privagg.encoding import FixedPointEncoder, noise_headroom
from privagg.envelope import PayloadWriter, Scheme, open_envelope
from privagg.errors import (
    ConfigurationError,
    DeserializationError,
    EncodingOverflowError,
    ParameterMismatchError,
    ProtocolError,
)
from privagg.keys import fingerprint
from privagg.layout import FloatVector
from privagg.protocols import NoiseShare, check_round_id

__all__ = [
    "UNREADABLE",
    "RingBackend",
    "RingAggregator",
    "RingClient",
    "RingConfig",
    "RingOptions",
    "RingSession",
    "RingSizing",
    "check_client_update",
    "check_round_id",
    "decode_total",
    "ids_digest",
    "kdf_context",
    "log_dropped",
    "noise_binding",
    "open_result",
    "party_field",
    "unreadable_reason",
    "valid_x25519",
]

#: What :meth:`RingConfig.read_reply` raises for a reply it cannot use.
UNREADABLE = (DeserializationError, ParameterMismatchError, ProtocolError)


class _Reply(Protocol):
    """A client reply message: its stage's kind, its sender, its parser."""

    KIND: ClassVar[int]

    @property
    def party(self) -> str: ...

    @classmethod
    def from_bytes(cls, data: bytes) -> Self: ...


_M = TypeVar("_M", bound=_Reply)


def log_dropped(
    log: logging.Logger,
    label: str,
    round_id: int,
    sender: str,
    error: type[Exception],
) -> None:
    """One warning for a party dropped for a reply that could not be used: the round,
    the sender and the error's type only (never bytes, keys or the error's text)."""
    log.warning(
        label + " round %d: ignoring %s's unreadable reply (%s); it is treated as "
        "dropped",
        round_id,
        sender,
        error.__name__,
    )


def unreadable_reason(error: type[Exception]) -> str:
    """The reported reason for a reply that could not be read: the error's type only
    (never its text, which can carry a sender-chosen label, nor any byte of the reply)."""
    return f"unreadable reply: {error.__name__}"


#: The reported reason for a reply that was read but failed a content check.
UNUSABLE_REPLY = "unusable reply"


class RingAggregator(FinishedResult):
    """What the SecAgg+ and additive aggregators share: the report of the clients whose
    replies were not used, and a round that ends at its first refusal."""

    _LOG_LABEL: ClassVar[str]
    _LOGGER: ClassVar[logging.Logger]
    _round: int

    def __init__(self) -> None:
        #: client id -> why its reply was not used: ``"unreadable reply: <ErrorType>"``
        #: or a short fixed phrase (:data:`UNUSABLE_REPLY`, ...); never a byte of the
        #: reply or an error's text
        self.rejection_reasons: dict[str, str] = {}

    @property
    def rejected(self) -> set[str]:
        """The clients whose replies were not used (unreadable or unusable)."""
        return set(self.rejection_reasons)

    def _reject(self, sender: str, reason: str = UNUSABLE_REPLY) -> None:
        """List ``sender`` as rejected (its first reason is kept, unless a proven one
        replaces it: :meth:`_convict`)."""
        self.rejection_reasons.setdefault(sender, reason)

    def _convict(self, sender: str, reason: str) -> None:
        """List ``sender`` for misbehaviour the aggregator has proven (it dealt wrong
        shares): this reason replaces any earlier one, so a client cannot hide a proven
        lie behind a milder reason it collected first (a garbage reply that reads as a
        dropout). The replaced reason is logged."""
        earlier = self.rejection_reasons.get(sender)
        if earlier is not None and earlier != reason:
            self._LOGGER.warning(
                "%s round %d: %s is reported for %r (proven), not for %r",
                self._LOG_LABEL,
                self._round,
                sender,
                reason,
                earlier,
            )
        self.rejection_reasons[sender] = reason

    def _drop(self, sender: str, error: type[Exception]) -> None:
        """Treat ``sender`` as dropped at this stage for a reply it cannot read; the log
        and the report name the error's type only (never the bytes or the error's text)."""
        log_dropped(self._LOGGER, self._LOG_LABEL, self._round, sender, error)
        self._reject(sender, unreadable_reason(error))


# -- options -------------------------------------------------------------------------------
@dataclass(frozen=True)
class RingOptions:
    """The ring options of a masking backend (validated on construction).

    Attributes:
        bound: largest |value| a client may contribute (before weighting).
        scale_bits: fixed-point fractional bits.
        clip: clip out-of-range values instead of raising.
    """

    bound: float
    scale_bits: int
    clip: bool

    def __post_init__(self) -> None:
        FixedPointEncoder(self.bound, self.scale_bits)  # validates bound and scale_bits
        if not isinstance(self.clip, bool):
            raise ConfigurationError(f"clip must be a bool, got {self.clip!r}")
        object.__setattr__(self, "bound", float(self.bound))

    def tolerance(self, *, n_clients: int, max_abs: float) -> float:
        """See :meth:`privagg.FixedPointEncoder.sum_error_bound`."""
        return FixedPointEncoder(1.0, self.scale_bits).sum_error_bound(
            n_clients, max_abs
        )

    def size_ring(
        self,
        size: int,
        max_clients: int,
        max_weight: float,
        noise: NoiseShare | None,
    ) -> tuple[FixedPointEncoder, int]:
        """The encoder and the ring width (32 or 64 bits) for sums of ``max_clients``
        weighted updates of ``size`` values, with the DP noise headroom over every
        coordinate of every round (review #11, finding 7).

        Raises:
            EncodingOverflowError: the sums would not fit the 64-bit ring.
        """
        sizing = self.size_session(size, max_clients, max_weight, noise)
        return sizing.encoder, sizing.ring_bits

    def size_session(
        self,
        size: int,
        max_clients: int,
        max_weight: float,
        noise: NoiseShare | None,
    ) -> RingSizing:
        """As :meth:`size_ring`, with what ``params_id`` binds of ``noise``
        (:func:`noise_binding`): both backends build their ``params_id`` from it
        (:meth:`RingSizing.params_id`).

        Raises:
            EncodingOverflowError: the sums would not fit the 64-bit ring.
        """
        extra = noise_headroom(noise, max_clients, dim=size)
        encoder = FixedPointEncoder(
            self.bound * max_weight, self.scale_bits, noise_allowance=extra
        )
        need = encoder.sum_bits(max_clients, extra=extra)
        if need > 64:
            raise EncodingOverflowError(
                f"sums need {need} bits, more than the 64-bit ring"
            )
        return RingSizing(
            encoder, 32 if need <= 32 else 64, noise_binding(noise, extra)
        )


def noise_binding(noise: NoiseShare | None, headroom: float) -> tuple[bytes, ...]:
    """The ``params_id`` parts that bind the clients' DP noise share (#14).

    No part without noise, so that a session without one keeps the ``params_id`` of
    earlier releases byte for byte. With a share, one part: ``"noise"``, the share's
    canonical descriptor (:func:`~privagg.backends._common.noise_descriptor`: its
    type's qualified name and its ``stddev`` as an IEEE-754 double, the encoding CKKS
    and Paillier bind) and its ``headroom`` for the session (``max_clients`` shares over
    every coordinate; as CKKS binds it). Every part of a ``params_id`` is
    length-prefixed (:func:`privagg.keys.fingerprint`), so a noised session's id is
    never a noiseless one's: a role loaded with another share, or without the
    aggregator's, computes another ``params_id`` and the first message it exchanges
    is refused (:class:`~privagg.errors.ParameterMismatchError`).
    """
    if noise is None:
        return ()
    part = PayloadWriter().text("noise").blob(noise_descriptor(noise)).f64(headroom)
    return (part.getvalue(),)


@dataclass(frozen=True)
class RingSizing:
    """What a masking session derives from its options and its noise share.

    Attributes:
        encoder: the fixed-point encoder (value bound, scale, noise allowance).
        ring_bits: the ring width, 32 or 64.
        noise_parts: :func:`noise_binding` of the share (empty without noise).
    """

    encoder: FixedPointEncoder
    ring_bits: int
    noise_parts: tuple[bytes, ...]

    def params_id(self, tag: bytes, public: bytes, layout_fingerprint: bytes) -> bytes:
        """``fingerprint(tag, MASK_PRG, public, layout_fingerprint, *noise_parts)``:
        the ``params_id`` of a masking backend (``tag``: ``b"secagg/v5"`` or
        ``b"additive/v3"``; ``public``: its packed options and public keys)."""
        return fingerprint(tag, MASK_PRG, public, layout_fingerprint, *self.noise_parts)


class RingBackend:
    """What a masking backend declares from its :class:`RingOptions` (``self._ring``)."""

    _ring: RingOptions

    value_bound_option: ClassVar[str] = "bound"
    """The constructor option that sets :attr:`value_bound` (:class:`privagg.BoundOption`)."""

    @property
    def value_bound(self) -> float | None:
        """Largest |value| a client may contribute (before weighting)."""
        return self._ring.bound

    @property
    def fixed_point_scale(self) -> float:
        """``2**scale_bits``: integer units per 1.0 (see :class:`privagg.FixedPointBackend`)."""
        return float(2**self._ring.scale_bits)

    def tolerance(self, *, n_clients: int, max_abs: float) -> float:
        """See :meth:`privagg.FixedPointEncoder.sum_error_bound`."""
        return self._ring.tolerance(n_clients=n_clients, max_abs=max_abs)


# -- per-session configuration -------------------------------------------------------------
@dataclass(frozen=True)
class RingConfig:
    """Public parameters of a masking session, identical for every role.

    Subclasses set :attr:`SCHEME` and add their protocol's own fields.
    """

    SCHEME: ClassVar[Scheme]

    params_id: bytes
    size: int
    encoder: FixedPointEncoder
    value_bound: float
    clip: bool
    max_weight: float
    ring_bits: int
    max_clients: int

    @property
    def dtype(self) -> type[np.unsignedinteger]:
        """The numpy type of ring words."""
        return np.uint32 if self.ring_bits == 32 else np.uint64

    def check_header(self, data: bytes, round_id: int, kind: int, who: str) -> None:
        """Cheap checks before decoding: scheme, parameters, round, kind.

        Raises:
            DeserializationError: not an envelope.
            ParameterMismatchError: a message of another session.
            ProtocolError: another scheme, round (replay?) or stage.
        """
        h = _wire.peek_header(data)
        if h.scheme != self.SCHEME:
            raise ProtocolError(f"{who}: message of another scheme")
        if not hmac.compare_digest(h.params_id, self.params_id):
            raise ParameterMismatchError(
                f"{who}: message made under different parameters or keys"
            )
        if h.round_id != round_id:
            raise ProtocolError(
                f"{who}: message for round {h.round_id}, expected {round_id} (replay?)"
            )
        if h.kind != kind:
            raise ProtocolError(
                f"{who}: unexpected message kind {h.kind} at this stage (expected {kind})"
            )

    def read_reply(self, data: bytes, round_id: int, cls: type[_M], sender: str) -> _M:
        """``sender``'s reply decoded as ``cls`` (a message of this session, round
        and stage, labelled with its sender).

        Raises:
            DeserializationError, ParameterMismatchError, ProtocolError (together
            :data:`UNREADABLE`): garbage, a cut message, another party's, one replayed
            from another round or session. The aggregators treat them as that party
            dropping at this stage (:func:`log_dropped`).
        """
        self.check_header(data, round_id, cls.KIND, f"reply of {sender!r}")
        msg = cls.from_bytes(data)
        if msg.party != sender:
            # the label is the sender's choice: never in the error's text
            raise ProtocolError(
                f"party {sender!r} sent a reply labelled as another party"
            )
        return msg

    def encode(
        self,
        update: FloatVector,
        weight: float,
        *,
        rng: Rng,
        noise: NoiseShare | None,
        who: str,
        masks: Sequence[tuple[bytes, int]],
    ) -> npt.NDArray[np.unsignedinteger]:
        """``weight * update`` (+ DP noise) as ring words plus ``sum(sign * PRG(seed))``
        over ``masks``, in one cache-blocked pass (see
        :func:`~privagg.backends._ringcode.encode_to_ring`)."""
        return encode_to_ring(
            self.encoder,
            update,
            weight,
            value_bound=self.value_bound,
            clip=self.clip,
            rng=rng,
            dtype=self.dtype,
            noise=noise,
            who=who,
            masks=masks,
        )

    def check_ring_array(self, words: npt.NDArray[np.unsignedinteger]) -> bool:
        """True if ``words`` is a vector of this session's ring words and size."""
        return words.dtype == np.dtype(self.dtype) and words.shape == (self.size,)


_C = TypeVar("_C", bound=RingConfig)


class RingClient(Generic[_C]):
    """A masking client for one round: its update, weight, streams and DP noise."""

    def __init__(
        self,
        cfg: _C,
        party_id: str,
        round_id: int,
        update: FloatVector,
        weight: float,
        rng: Rng,
        noise: NoiseShare | None,
    ) -> None:
        self._cfg = cfg
        self._id = party_id
        self._round = round_id
        self._update = update
        self._weight = weight
        self._rng = rng
        self._noise = noise

    @property
    def party_id(self) -> str:
        """This client's id."""
        return self._id

    def _masked_update(
        self, masks: Sequence[tuple[bytes, int]]
    ) -> npt.NDArray[np.unsignedinteger]:
        """The encoded update plus ``masks`` (see :meth:`RingConfig.encode`); the
        plaintext update is dropped once it is masked."""
        words = self._cfg.encode(
            self._update,
            self._weight,
            rng=self._rng,
            noise=self._noise,
            who=f"client {self._id!r}",
            masks=masks,
        )
        self._update = np.zeros(0)
        return words


class RingSession(Generic[_C]):
    """What a masking session declares from its :class:`RingConfig` (``self._cfg``),
    and fresh round ids from the ids its roles have used (:meth:`_used_round_ids`)."""

    _cfg: _C
    _round_counter: int = 0

    @property
    def params_id(self) -> bytes:
        """Public fingerprint of the session's parameters (and keys, where it has any)."""
        return self._cfg.params_id

    @property
    def ring_bits(self) -> int:
        """Bits of the ring the masked sums live in (32 or 64)."""
        return self._cfg.ring_bits

    def _used_round_ids(self) -> set[int]:
        raise NotImplementedError

    def next_round_id(self) -> int:
        """A round id this session has not used before (for ``run_round``).

        A counter, skipping every id this session's roles have already used. Ids of
        other sessions do not matter: their messages carry another params_id.
        """
        used = self._used_round_ids()
        while self._round_counter in used:
            self._round_counter += 1
        rid = self._round_counter
        self._round_counter += 1
        return rid


def check_client_update(
    client_id: str, update: FloatVector, size: int, weight: float, max_weight: float
) -> float:
    """Check a client's update shape and weight; the weight as a float.

    Raises:
        ParameterMismatchError: the update does not have the layout's size.
        ConfigurationError: a weight outside ``[0, max_weight]``.
    """
    if update.shape != (size,):
        raise ParameterMismatchError(
            f"client {client_id!r}: update has {update.shape}, layout size is {size}"
        )
    w = float(weight)
    if not (math.isfinite(w) and 0 <= w <= max_weight):
        raise ConfigurationError(f"weight must be in [0, {max_weight}], got {weight!r}")
    return w


# -- the holder ----------------------------------------------------------------------------
def open_result(
    cfg: RingConfig, result: bytes, kind: int, *, what: str, other: str
) -> None:
    """Check a result's scheme, kind and parameters before it is decoded.

    The header is read unverified first, so that the digest over the (P-word) result
    is computed once, by the message's ``from_bytes``; a mismatch is reported only after
    :func:`~privagg.envelope.open_envelope` has checked the digest (corrupted bytes stay
    a :class:`~privagg.errors.DeserializationError`).

    Args:
        cfg: the session configuration.
        result: the aggregator's result message.
        kind: the scheme's result kind.
        what: the result's name in the error message ("a SecAgg+ result").
        other: what a result of another session was made under ("parameters").

    Raises:
        DeserializationError: corrupted bytes.
        ProtocolError: not a result of this scheme.
        ParameterMismatchError: a result of another session.
    """
    h = _wire.peek_header(result)
    ours = h.scheme == cfg.SCHEME and h.kind == kind
    same = hmac.compare_digest(h.params_id, cfg.params_id)
    if not (ours and same):
        open_envelope(result)
    if not ours:
        raise ProtocolError(f"not {what}")
    if not same:
        raise ParameterMismatchError(f"the result was made under different {other}")


def decode_total(
    cfg: RingConfig, total: npt.NDArray[np.unsignedinteger], n_contributors: int
) -> FloatVector:
    """The float sum of ``n_contributors`` updates from its ring words.

    A sum beyond the range the ring was sized for wrapped: it is refused, never returned
    as a wrong aggregate (review #11, finding 7).
    """
    return cfg.encoder.decode_sum(centred(total), n_contributors)


# -- keys ----------------------------------------------------------------------------------
# Any fixed scalar works: X25519 clamps it to a multiple of the cofactor, so a low-order
# point gives the all-zero output (which ``ecdh`` refuses) whatever the scalar.
_PROBE_KEY = x25519_key(hashlib.sha256(b"privagg/masking/x25519-probe").digest())


def valid_x25519(pk: bytes) -> bool:
    """False for a low-order (or otherwise unusable) X25519 public key."""
    try:
        ecdh(_PROBE_KEY, pk)
    except ProtocolError:
        return False
    return True


def party_field(party: str, *, length: Literal["bytes", "chars"] = "bytes") -> bytes:
    """A party id as a field of a derivation context: a u32 length, then its UTF-8.

    ``length="chars"`` prefixes the number of characters instead of bytes, as the
    SecAgg+ v2 transcripts do (the same bytes for ASCII ids; kept so that no v2
    signature or key changes).
    """
    return _party_field(party, length == "chars")


@functools.lru_cache(maxsize=4096)
def _party_field(party: str, chars: bool) -> bytes:
    # ids are public and repeat in every context of a round: computed once each
    raw = party.encode()
    return struct.pack(">I", len(party) if chars else len(raw)) + raw


def kdf_context(params_id: bytes, round_id: int, *fields: bytes) -> bytes:
    """``params_id || round_id (u64) || fields``: what a derived key or a signed
    transcript binds, in one canonical order."""
    return params_id + round_id.to_bytes(8, "big") + b"".join(fields)


def ids_digest(
    ids: Iterable[str],
    *,
    domain: bytes = b"",
    field: Callable[[str], bytes] = party_field,
) -> bytes:
    """SHA-256 over ``domain`` and the party ids in the given order, each as
    ``field(id)`` (callers sort where the set, not the order, is meant)."""
    h = hashlib.sha256(domain)
    for i in ids:
        h.update(field(i))
    return h.digest()
