"""Cryptographic building blocks of SecAgg+ and the additive backend (all from ``cryptography``).

* X25519 key agreement, HKDF-SHA256 key derivation, AES-256-GCM for shares;
* Ed25519 signatures (the active-security variant);
* mask expansion (:func:`mask_key`, :func:`mask_cipher`): a mask seed (32 bytes) is
  turned into an AES-128 key by HKDF-SHA256 under its own label (:data:`MASK_PRG_INFO`),
  and the mask is that key's AES-128-CTR keystream (the project PRG,
  :func:`privagg._rng.aes_ctr_keystream`, with a zero 128-bit counter block) read as
  little-endian ring words, written straight into a reusable buffer (``update_into``)
  and added to or subtracted from an accumulator. 128-bit keys are the standard PRG
  choice for SecAgg masks (a mask hides one round's update; AES-128 keeps 128-bit
  security against key search); everything that carries a secret across the wire
  (share and seed encryption, AES-256-GCM) and every seed itself stays 256-bit.
"""

from __future__ import annotations

import functools

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from privagg._rng import Rng
from privagg.errors import DeserializationError, ProtocolError

__all__ = [
    "KEY_SIZE",
    "MASK_KEY_SIZE",
    "MASK_PRG",
    "MASK_PRG_INFO",
    "MaskExpander",
    "aead_decrypt",
    "aead_encrypt",
    "ecdh",
    "ed25519_key",
    "ed25519_public",
    "ed25519_sign",
    "ed25519_verify",
    "hkdf",
    "mask_cipher",
    "mask_key",
    "clamp_x25519",
    "new_ed25519",
    "new_x25519",
    "x25519_key",
    "x25519_public",
]

KEY_SIZE = 32
_NONCE = bytes(12)
_COUNTER0 = bytes(16)

#: The mask PRG, as bound into the SecAgg+ and additive params_id (format v3).
MASK_PRG = b"aes-128-ctr/hkdf-sha256"
MASK_KEY_SIZE = 16
#: HKDF ``info`` of the mask key: no other derivation in privagg uses this label.
MASK_PRG_INFO = b"privagg/mask-prg/v1/aes-128-ctr"


def new_x25519(rng: Rng) -> bytes:
    """Fresh X25519 private key bytes from ``rng`` (clamped by X25519 itself)."""
    return rng.random_bytes(KEY_SIZE)


def clamp_x25519(private: bytes) -> bytes:
    """The canonical (RFC 7748 clamped) form of 32 X25519 private key bytes: the
    bytes X25519 actually uses. Keys that differ only in the bits clamping sets or
    clears have the same public key; only one of them is in clamped form."""
    if len(private) != KEY_SIZE:
        raise ValueError("X25519 private keys are 32 bytes")
    k = bytearray(private)
    k[0] &= 248
    k[31] = (k[31] & 127) | 64
    return bytes(k)


def x25519_public(private: bytes | X25519PrivateKey) -> bytes:
    """The raw 32-byte public key of an X25519 private key (bytes or :func:`x25519_key`;
    building a key object computes its public key: reuse one where there is one)."""
    if isinstance(private, bytes):
        private = X25519PrivateKey.from_private_bytes(private)
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def x25519_key(private: bytes) -> X25519PrivateKey:
    """An X25519 key object (to reuse for many exchanges)."""
    return X25519PrivateKey.from_private_bytes(private)


def ecdh(private: bytes | X25519PrivateKey, peer_public: bytes) -> bytes:
    """X25519 shared secret; a low-order peer key raises :class:`ProtocolError`."""
    if isinstance(private, bytes):
        private = X25519PrivateKey.from_private_bytes(private)
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:
        raise ProtocolError("invalid X25519 public key") from None


_SHA256 = hashes.SHA256()  # stateless algorithm descriptor, shared by every HKDF


def hkdf(secret: bytes, *, salt: bytes, info: bytes, length: int = KEY_SIZE) -> bytes:
    """HKDF-SHA256."""
    return HKDF(algorithm=_SHA256, length=length, salt=salt, info=info).derive(secret)


def mask_key(seed: bytes) -> bytes:
    """The 16-byte AES-128 key of the mask of ``seed`` (a 32-byte mask seed):
    ``HKDF-SHA256(ikm=seed, salt=none, info=MASK_PRG_INFO, L=16)``."""
    if len(seed) != KEY_SIZE:
        raise ProtocolError(f"a mask seed is {KEY_SIZE} bytes, got {len(seed)}")
    return hkdf(seed, salt=b"", info=MASK_PRG_INFO, length=MASK_KEY_SIZE)


def mask_cipher(seed: bytes) -> Cipher[modes.CTR]:
    """AES-128-CTR (zero counter block) under :func:`mask_key` of ``seed``: its
    keystream is the mask of ``seed``."""
    return Cipher(algorithms.AES128(mask_key(seed)), modes.CTR(_COUNTER0))


def aead_encrypt(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM with a zero nonce: every key here encrypts exactly one message."""
    return AESGCM(key).encrypt(_NONCE, plaintext, aad)


def aead_decrypt(key: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    """Inverse of :func:`aead_encrypt`; a bad tag raises :class:`DeserializationError`."""
    try:
        return AESGCM(key).decrypt(_NONCE, ciphertext, aad)
    except (InvalidTag, ValueError):
        raise DeserializationError() from None


def new_ed25519(rng: Rng) -> bytes:
    """Fresh Ed25519 private key bytes from ``rng``."""
    return rng.random_bytes(KEY_SIZE)


def ed25519_public(private: bytes) -> bytes:
    """The raw 32-byte Ed25519 public key."""
    return (
        Ed25519PrivateKey.from_private_bytes(private)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )


def ed25519_key(private: bytes) -> Ed25519PrivateKey:
    """An Ed25519 signing key object (to reuse for several signatures: building one
    derives the public key, a scalar multiplication as costly as a signature)."""
    return Ed25519PrivateKey.from_private_bytes(private)


def ed25519_sign(private: bytes | Ed25519PrivateKey, message: bytes) -> bytes:
    """A 64-byte Ed25519 signature (``private``: key bytes or :func:`ed25519_key`)."""
    if isinstance(private, bytes):
        private = Ed25519PrivateKey.from_private_bytes(private)
    return private.sign(message)


def ed25519_verify(public: bytes, signature: bytes, message: bytes) -> bool:
    """True iff ``signature`` is valid on ``message`` under ``public``."""
    try:
        _ed25519_key(bytes(public)).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


@functools.lru_cache(maxsize=1024)
def _ed25519_key(public: bytes) -> Ed25519PublicKey:
    # public keys only (a round verifies each party's key many times); an invalid key
    # raises ValueError, which is not cached
    return Ed25519PublicKey.from_public_bytes(public)


class MaskExpander:
    """Expands 32-byte seeds into ring-word masks of a fixed length, without copies.

    The mask of a seed is ``aes_ctr_keystream(mask_key(seed), size * itemsize)`` read
    as little-endian unsigned words of ``dtype`` (uint32 or uint64): arithmetic modulo
    ``2**32`` or ``2**64``.
    """

    __slots__ = ("_buf", "_dtype", "_size", "_view", "_zeros")

    def __init__(self, size: int, dtype: type[np.unsignedinteger]) -> None:
        self._dtype = np.dtype(dtype).newbyteorder("<")
        self._size = size
        nbytes = size * self._dtype.itemsize
        self._zeros = memoryview(bytes(nbytes))
        self._buf = bytearray(nbytes + 15)
        self._view = np.frombuffer(self._buf, dtype=self._dtype, count=size)

    def _expand(self, seed: bytes) -> npt.NDArray[np.unsignedinteger]:
        enc = mask_cipher(seed).encryptor()
        if self._size:
            enc.update_into(self._zeros, self._buf)
        return self._view

    def mask(self, seed: bytes) -> npt.NDArray[np.unsignedinteger]:
        """A fresh array holding the mask of ``seed``."""
        return self._expand(seed).astype(self._dtype.newbyteorder("="), copy=True)

    def add(
        self, acc: npt.NDArray[np.unsignedinteger], seed: bytes, sign: int = 1
    ) -> None:
        """``acc += sign * mask(seed)`` in place, modulo the word size."""
        ks = self._expand(seed)
        if sign >= 0:
            np.add(acc, ks, out=acc)
        else:
            np.subtract(acc, ks, out=acc)
