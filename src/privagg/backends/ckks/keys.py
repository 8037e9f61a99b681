"""CKKS keys: the public context (clients, aggregator) and the secret context (holder)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt

from privagg._rng import Rng, SystemRng
from privagg.backends._ckks_params import PRESETS, CkksParams
from privagg.backends.ckks._release import (
    _check_count,
    _check_release_range,
    _check_values,
    _FloodSampler,
    _round_release,
)
from privagg.backends.ckks._sealio import (
    _seal_load,
    _seal_save,
    _translate,
)
from privagg.backends.ckks._sealio import (
    sealapi as _seal,
)
from privagg.backends.ckks._sealwrap import _BLOCK, _Seal
from privagg.backends.ckks._wireformat import (
    EncryptedUpdate,
)
from privagg.envelope import (
    Header,
    PayloadReader,
    PayloadWriter,
    Scheme,
    open_envelope,
    seal,
)
from privagg.errors import (
    ConfigurationError,
    DeserializationError,
    MissingKeyError,
    ParameterMismatchError,
)
from privagg.keys import (
    Protection,
    SecretKey,
    fingerprint,
    read_secret_file,
    write_secret_file,
)
from privagg.layout import FloatVector

_PUBLIC_CTX_KIND = 0x20


# -- contexts and keys -------------------------------------------------------------------
def _key_fp(params: CkksParams, pk_bytes: bytes) -> bytes:
    return fingerprint(b"ckks-public-context/v1", params.to_bytes(), pk_bytes)


class CkksPublicContext:
    """Parameters + public encryption key: what clients and the aggregator hold.

    It holds no secret key and no Galois or relinearization keys (aggregation needs
    only additions), so it cannot decrypt: :meth:`decrypt` raises
    :class:`~privagg.MissingKeyError`.
    """

    __slots__ = ("_pk_bytes", "_seal", "fingerprint", "params")

    def __init__(self, params: CkksParams, pk_bytes: bytes) -> None:
        self.params = params
        self._pk_bytes = bytes(pk_bytes)
        self.fingerprint = _key_fp(params, self._pk_bytes)
        self._seal: _Seal | None = None

    @property
    def has_secret_key(self) -> bool:
        """Always False."""
        return False

    def seal_state(self) -> _Seal:
        """The SEAL objects (built on first use)."""
        if self._seal is None:
            st = _Seal(self.params)
            st.set_public_key(self._pk_bytes)
            self._seal = st
        return self._seal

    def public_key_bytes(self) -> bytes:
        """SEAL's serialization of the public key."""
        return self._pk_bytes

    def encrypt(self, values: npt.ArrayLike) -> EncryptedUpdate:
        """Encrypt a flat vector (|values| <= value_bound) into an :class:`EncryptedUpdate`."""
        vec = _check_values(
            np.asarray(values, dtype=np.float64).reshape(-1), self.params, 1.0
        )
        st = self.seal_state()
        return EncryptedUpdate(self.fingerprint, st, 1, vec.size, st.encrypt_words(vec))

    def decrypt(self, update: EncryptedUpdate) -> NoReturn:
        """Always raises: the public context has no secret key."""
        raise MissingKeyError(
            "the public CKKS context has no secret key and cannot decrypt; "
            "only the key holders' secret context can"
        )

    def to_bytes(self) -> bytes:
        """Serialize (parameters + public key) in a privagg envelope."""
        payload = (
            PayloadWriter().blob(self.params.to_bytes()).blob(self._pk_bytes).getvalue()
        )
        return seal(Header(Scheme.CKKS, _PUBLIC_CTX_KIND, self.fingerprint, 0), payload)

    @classmethod
    def from_bytes(cls, data: bytes) -> CkksPublicContext:
        """Decode :meth:`to_bytes`; any malformation raises DeserializationError."""
        try:
            header, payload = open_envelope(data)
            if header.scheme != Scheme.CKKS or header.kind != _PUBLIC_CTX_KIND:
                raise DeserializationError()
            r = PayloadReader(payload)
            params = CkksParams.from_bytes(r.blob())
            pk = r.blob()
            r.done()
            ctx = cls(params, pk)
            if ctx.fingerprint != header.params_id:
                raise DeserializationError()
            ctx.seal_state()  # SEAL validates the key against the parameters
        except DeserializationError:
            raise
        except Exception:
            raise DeserializationError() from None
        return ctx

    def __repr__(self) -> str:
        return f"<CkksPublicContext N={self.params.poly_modulus_degree} fp={self.fingerprint[:4].hex()}…>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (CkksPublicContext.from_bytes, (self.to_bytes(),))


class _SecretMaterial:
    """The SEAL secret key and its decryptor; lives only inside a SecretKey."""

    __slots__ = ("sk", "state")

    def __init__(self, sk: Any, state: _Seal) -> None:
        self.sk = sk
        self.state = state

    def __repr__(self) -> str:
        return "<CKKS secret material>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("CKKS secret material cannot be pickled")


def _export_secret(m: _SecretMaterial) -> bytes:
    return _seal_save(m.sk)


class CkksSecretContext:
    """The key holders' context: the public context plus the secret key.

    The secret key is a :class:`privagg.SecretKey`: never pickled or printed; export
    only with :meth:`to_bytes` (explicit protection) or :meth:`save` (mode 0600).
    """

    __slots__ = ("public", "secret_key")

    def __init__(
        self, public: CkksPublicContext, secret_key: SecretKey[_SecretMaterial]
    ) -> None:
        self.public = public
        self.secret_key = secret_key

    @property
    def params(self) -> CkksParams:
        """The parameter set."""
        return self.public.params

    @property
    def has_secret_key(self) -> bool:
        """Always True."""
        return True

    def seal_state(self) -> _Seal:
        """SEAL objects with both keys."""
        return self.secret_key.unsafe_material().state

    def encrypt(self, values: npt.ArrayLike) -> EncryptedUpdate:
        """Encrypt like the public context does (public-key encryption)."""
        return self.public.encrypt(values)

    def decrypt(self, update: EncryptedUpdate) -> FloatVector:
        """Deprecated: a raw decryption that skips flooding.

        Use :func:`privagg.hazmat.ckks.raw_decrypt` (key-holder-only use) or, for
        anything that leaves the key holders, the holder role or :meth:`release`.
        """
        warnings.warn(
            "CkksSecretContext.decrypt skips flooding and is deprecated; use "
            "privagg.hazmat.ckks.raw_decrypt (key holders only) or release()",
            DeprecationWarning,
            stacklevel=2,
        )
        return raw_decrypt(self, update)

    def release(
        self,
        update: EncryptedUpdate,
        rng: Rng | None = None,
        *,
        max_weight: float | None = None,
    ) -> FloatVector:
        """Flood (coefficient domain), decrypt and round: the only safe way to publish.

        The integer flooding noise comes from ``rng`` (default: the OS CSPRNG).
        The count must fit the parameters, and a decryption outside the honest range
        ``count * value_bound * max_weight`` (+ tolerance) is refused, not released
        (see :func:`_check_release_range`).

        Raises:
            EncodingOverflowError: the count does not fit, or the decryption is out
                of the honest range (a malformed ciphertext).
        """
        if update.key_fingerprint != self.public.fingerprint:
            raise ParameterMismatchError(
                "the ciphertext was made under another CKKS key"
            )
        per = (
            self.params.value_bound
            if max_weight is None
            else (self.params.value_bound * max_weight)
        )
        _check_count(self.params, update.count, per)
        st = self.seal_state()
        n_ct = update.n_ciphertexts
        flood = _FloodSampler(self.params, update.count, n_ct, rng or SystemRng())
        # Block by block: one block's words copy and flooding noise at a time.
        raw = np.empty(n_ct * st.n, dtype=np.float64)
        for a in range(0, n_ct, _BLOCK):
            b = min(a + _BLOCK, n_ct)
            raw[a * st.n : b * st.n] = st.decrypt_words(
                update.words[a:b], (b - a) * st.n, flood.draw(b - a)
            )
        raw = raw[: update.size]
        _check_release_range(self.params, raw, update.count, per)
        return _round_release(self.params, raw, update.count)

    def to_bytes(self, *, protection: Protection) -> bytes:
        """Export the secret key (``protection`` mandatory) with the public context."""
        sk = self.secret_key.to_bytes(protection=protection)
        return PayloadWriter().blob(self.public.to_bytes()).blob(sk).getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, *, protection: Protection) -> CkksSecretContext:
        """Load :meth:`to_bytes` output. A public context raises MissingKeyError."""
        try:
            CkksPublicContext.from_bytes(data)
        except DeserializationError:
            pass
        else:
            raise MissingKeyError(
                "these bytes are a public CKKS context: no secret key"
            )
        try:
            r = PayloadReader(data)
            public = CkksPublicContext.from_bytes(r.blob())
            wrapped = r.blob()
            r.done()
        except DeserializationError:
            raise
        except Exception:
            raise DeserializationError() from None
        scheme, fp, raw = protection.unwrap(wrapped)
        if scheme != "ckks" or fp != public.fingerprint:
            raise ParameterMismatchError(
                "the secret key does not match this public context"
            )
        state = _Seal(public.params)
        state.set_public_key(public.public_key_bytes())
        sk = _seal.SecretKey()
        try:
            _seal_load(sk, state.context, raw)
        except (RuntimeError, ValueError, OSError):
            raise DeserializationError() from None
        state.set_secret_key(sk)
        return cls(public, _wrap_secret(sk, state, public.fingerprint))

    def save(self, path: str | os.PathLike[str], *, protection: Protection) -> Path:
        """Write the exported context to ``path`` with mode 0600."""
        return write_secret_file(path, self.to_bytes(protection=protection))

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, protection: Protection
    ) -> CkksSecretContext:
        """Read a file written by :meth:`save` (refuses group/other-readable files)."""
        return cls.from_bytes(read_secret_file(path), protection=protection)

    def __repr__(self) -> str:
        return f"<CkksSecretContext {self.secret_key!r}>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("CkksSecretContext holds a secret key and cannot be pickled")


def raw_decrypt(secret: CkksSecretContext, update: EncryptedUpdate) -> FloatVector:
    """Decrypt an update or aggregate *without* flooding or rounding (hazmat).

    Exposed as :func:`privagg.hazmat.ckks.raw_decrypt`. Use the holder role (or
    :meth:`CkksSecretContext.release`) for anything that leaves the key holders: raw
    CKKS decryptions can leak the key (IND-CPA-D).

    Raises:
        ParameterMismatchError: the ciphertext was made under another key.
    """
    if update.key_fingerprint != secret.public.fingerprint:
        raise ParameterMismatchError("the ciphertext was made under another CKKS key")
    return secret.seal_state().decrypt_words(update.words, update.size)


def _wrap_secret(sk: Any, state: _Seal, fp: bytes) -> SecretKey[_SecretMaterial]:
    return SecretKey(
        "ckks", _SecretMaterial(sk, state), public_fingerprint=fp, export=_export_secret
    )


def keygen(params: CkksParams | str = "secure") -> CkksSecretContext:
    """Generate a CKKS key pair: the holders' secret context (``.public`` for the rest).

    Only the secret and public keys are generated: no relinearization or Galois keys.
    """
    p = PRESETS[params] if isinstance(params, str) and params in PRESETS else params
    if not isinstance(p, CkksParams):
        raise ConfigurationError(
            f"unknown CKKS preset {params!r}; known: {sorted(PRESETS)}"
        )
    state = _Seal(p)
    try:
        kg = _seal.KeyGenerator(state.context)
        sk = kg.secret_key()
        pk = _seal.PublicKey()
        kg.create_public_key(pk)
        pk_bytes = _seal_save(pk)
    except (RuntimeError, ValueError, TypeError) as exc:
        _translate("key generation")(exc)
    public = CkksPublicContext(p, pk_bytes)
    state.set_public_key(pk_bytes)
    state.set_secret_key(sk)
    public._seal = _Seal(p)
    public._seal.set_public_key(pk_bytes)
    return CkksSecretContext(public, _wrap_secret(sk, state, public.fingerprint))
