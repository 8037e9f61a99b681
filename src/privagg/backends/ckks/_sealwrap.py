"""The SEAL wrapper: one parameter set's SEAL objects, ciphertext words in and out."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import numpy.typing as npt

from privagg.backends._ckks_params import CkksParams
from privagg.backends.ckks._bits import _U64, _pack, _unpack
from privagg.backends.ckks._release import FloodSource, _flood_rows
from privagg.backends.ckks._sealio import (
    _SEAL_HEADER,
    _SEAL_MAGIC,
    _ZSTD,
    _CompressedError,
    _read,
    _scratch_path,
    _seal_body,
    _seal_load,
    _translate,
    _write,
)
from privagg.backends.ckks._sealio import (
    sealapi as _seal,
)
from privagg.errors import (
    ConfigurationError,
    DeserializationError,
    MissingKeyError,
)
from privagg.layout import FloatVector

_BLOCK = 32  # ciphertexts per block in block-wise encrypt/combine/decrypt


# -- SEAL state -------------------------------------------------------------------------
class _Seal:
    """SEAL objects for one parameter set (and optionally keys). Never pickled."""

    def __init__(self, params: CkksParams) -> None:
        self.params = params
        n = params.poly_modulus_degree
        try:
            parms = _seal.EncryptionParameters(_seal.SCHEME_TYPE.CKKS)
            parms.set_poly_modulus_degree(n)
            parms.set_coeff_modulus(
                _seal.CoeffModulus.Create(n, params.coeff_mod_bit_sizes)
            )
            ctx = _seal.SEALContext(parms, True, _seal.SEC_LEVEL_TYPE.TC128)
        except (RuntimeError, ValueError, TypeError) as exc:
            _translate("parameter setup")(exc)
        if not ctx.parameters_set():
            raise ConfigurationError(
                f"SEAL rejected the CKKS parameters: {ctx.parameters_error_message()}"
            )
        self.context = ctx
        self.encoder = _seal.CKKSEncoder(ctx)
        data = ctx.first_context_data().parms().coeff_modulus()
        self.moduli = tuple(int(m.value()) for m in data)
        if len(self.moduli) != len(params.data_bits):
            raise ConfigurationError(
                "unexpected CKKS modulus chain"
            )  # pragma: no cover
        self.bits = tuple(q.bit_length() for q in self.moduli)
        self._q_column = np.array(self.moduli, dtype=_U64).reshape(1, 1, -1, 1)
        self.n = n
        self.level = len(self.moduli)
        self.encryptor: Any = None
        self.decryptor: Any = None
        self.evaluator: Any = None
        self._prefix: bytes | None = None
        self._header: tuple[int, int] | None = None

    # keys
    def set_public_key(self, pk_bytes: bytes) -> Any:
        pk = _seal.PublicKey()
        try:
            _seal_load(pk, self.context, pk_bytes)
        except (RuntimeError, ValueError, OSError):
            raise DeserializationError() from None
        self.encryptor = _seal.Encryptor(self.context, pk)
        return pk

    def set_secret_key(self, sk: Any) -> None:
        self.decryptor = _seal.Decryptor(self.context, sk)
        self.evaluator = _seal.Evaluator(self.context)

    # ciphertext layout
    def _template(self) -> tuple[bytes, tuple[int, int]]:
        """SEAL's serialization of a fresh ciphertext, up to its coefficient words.

        Ciphertext::save writes parms_id (4 x u64), is_ntt_form (u8), size,
        poly_modulus_degree, coeff_modulus_size (u64 each), scale (f64),
        correction_factor (u64), then the coefficient DynArray: a nested SEAL
        header, its length (u64) and the words.
        """
        if self._prefix is None or self._header is None:
            with _scratch_path() as path:
                _seal.Plaintext().save(path)
                blob = _read(path)
            vmaj, vmin = blob[3], blob[4]
            nwords = 2 * self.level * self.n
            pid = [int(x) for x in self.context.first_parms_id()]
            self._prefix = b"".join(
                (
                    struct.pack("<4Q", *pid),
                    b"\x01",
                    struct.pack("<QQQdQ", 2, self.n, self.level, self.params.scale, 1),
                    _SEAL_HEADER.pack(
                        _SEAL_MAGIC, 16, vmaj, vmin, 0, 0, 24 + 8 * nwords
                    ),
                    struct.pack("<Q", nwords),
                )
            )
            self._header = (vmaj, vmin)
        return self._prefix, self._header

    def _ct_words(self, ct: Any, path: str) -> npt.NDArray[np.uint64]:
        nwords = 2 * self.level * self.n
        ct.save(path)
        blob = _read(path)
        prefix, _ = self._template()
        try:
            body = _seal_body(blob)
        except _CompressedError:
            # zstd squeezed the words (primes well below 64 bits): decompress with
            # SEAL's own zstd, else read the words one by one (slow).
            full = None
            if _ZSTD is not None and blob[5] == 2:
                full = _ZSTD(blob[16:], len(prefix) + 8 * nwords)
            if full is None:  # pragma: no cover - TenSEAL always ships zstd
                arr = ct.dyn_array()
                return np.array([arr.at(i) for i in range(nwords)], dtype=_U64)
            body = full
        if len(body) != len(prefix) + 8 * nwords or not body.startswith(prefix):
            raise ConfigurationError("SEAL produced an unexpected ciphertext layout")
        return np.frombuffer(body, dtype=_U64, offset=len(prefix))

    def encrypt_words(self, values: FloatVector) -> npt.NDArray[np.uint64]:
        """Encrypt a flat float vector: words of shape (n_ct, 2, level, N)."""
        if self.encryptor is None:
            raise MissingKeyError("this CKKS context holds no public key")
        n = self.n
        n_ct = -(-values.size // n)
        padded = np.zeros(n_ct * n, dtype=np.float64)
        padded[: values.size] = values
        cplx = padded[0::2] + 1j * padded[1::2]
        out = np.empty((n_ct, 2 * self.level * n), dtype=_U64)
        scale = self.params.scale
        pt = _seal.Plaintext()
        try:
            with _scratch_path() as path:
                for i in range(n_ct):
                    self.encoder.encode(
                        cplx[i * (n // 2) : (i + 1) * (n // 2)].tolist(), scale, pt
                    )
                    ct = _seal.Ciphertext(self.context)
                    self.encryptor.encrypt(pt, ct)
                    out[i] = self._ct_words(ct, path)
        except (RuntimeError, ValueError, TypeError) as exc:
            _translate("encryption")(exc)
        return out.reshape(n_ct, 2, self.level, n)

    def flood_residues(self, flood: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
        """Integer noise (n_ct, N) -> residues (n_ct, level, N) modulo each data prime."""
        q = np.array(self.moduli, dtype=np.int64).reshape(1, -1, 1)
        return np.mod(flood[:, None, :], q).astype(_U64)

    def decrypt_words(
        self,
        words: npt.NDArray[np.uint64],
        size: int,
        flood: npt.NDArray[np.int64] | None = None,
    ) -> FloatVector:
        """Decrypt words of shape (n_ct, 2, level, N) into ``size`` floats.

        With ``flood`` (integer noise, shape (n_ct, N)), each ciphertext first gets
        ``flood[i]`` added to its *coefficients*: SEAL transforms the polynomial
        ``(f, 1)`` to NTT form (its ``1`` keeps the ciphertext from being transparent
        and is cancelled by subtracting ``NTT(1) = (1, ..., 1)`` from ``c1``), the
        evaluator adds it, and only then is the sum decrypted and decoded. The float64
        decoding error is then post-processing of ``m + e + f``.
        """
        if self.decryptor is None:
            raise MissingKeyError("decryption needs the secret CKKS context")
        prefix, (vmaj, vmin) = self._template()
        n = self.n
        n_ct = words.shape[0]
        body_len = 16 + len(prefix) + 8 * 2 * self.level * n
        head = _SEAL_HEADER.pack(_SEAL_MAGIC, 16, vmaj, vmin, 0, 0, body_len)
        # the same serialization with is_ntt_form = 0 (coefficient form)
        coeff_prefix = prefix[:32] + b"\x00" + prefix[33:]
        if flood is not None:
            if flood.shape != (n_ct, n):
                raise ConfigurationError("flooding noise of the wrong shape")
            q = self._q_column[0, 0]
            words = words.copy()
            c1 = words[:, 1]
            np.subtract(c1, np.uint64(1), out=c1)
            np.minimum(c1, c1 + q, out=c1)  # 0 - 1 wraps to 2**64 - 1: add q back
            fl = np.zeros((n_ct, 2, self.level, n), dtype=_U64)
            fl[:, 0] = self.flood_residues(flood)
            fl[:, 1, :, 0] = 1
        out = np.empty(n_ct * n, dtype=np.float64)
        pt = _seal.Plaintext()
        try:
            with _scratch_path() as path:
                for i in range(n_ct):
                    _write(path, head + prefix, words[i].astype(_U64, copy=False))
                    ct = _seal.Ciphertext(self.context)
                    ct.load(self.context, path)
                    if flood is not None:
                        _write(path, head + coeff_prefix, fl[i])
                        fct = _seal.Ciphertext(self.context)
                        fct.load(self.context, path)
                        self.evaluator.transform_to_ntt_inplace(fct)
                        self.evaluator.add_inplace(ct, fct)
                    self.decryptor.decrypt(ct, pt)
                    z = np.asarray(self.encoder.decode_complex(pt), dtype=np.complex128)
                    out[i * n : (i + 1) * n : 2] = z.real
                    out[i * n + 1 : (i + 1) * n : 2] = z.imag
        except (RuntimeError, ValueError, TypeError):
            raise DeserializationError() from None
        return out[:size]

    # packing
    def pack(self, words: npt.NDArray[np.uint64]) -> bytes:
        """Words (n_ct, 2, level, N) -> bytes, ciphertext-major, each row at its width."""
        if words.shape[0] == 0:
            return b""
        if len(set(self.bits)) == 1:  # same width everywhere: one pass, same layout
            return _pack(words, self.bits[0]).tobytes()
        rows = [_pack(words[:, :, j, :], b) for j, b in enumerate(self.bits)]
        return np.concatenate(rows, axis=-1).tobytes()

    def packed_size(self, n_ct: int) -> int:
        return n_ct * 2 * sum(self.n * b // 8 for b in self.bits)

    def unpack(self, data: bytes | memoryview, n_ct: int) -> npt.NDArray[np.uint64]:
        """Inverse of :meth:`pack`; DeserializationError unless every word is < q."""
        if len(data) != self.packed_size(n_ct):
            raise DeserializationError()
        out = np.empty((n_ct, 2, self.level, self.n), dtype=_U64)
        if n_ct == 0:
            return out
        raw = np.frombuffer(data, dtype=np.uint8).reshape(n_ct, 2, -1)
        if len(set(self.bits)) == 1:
            out = _unpack(raw.reshape(n_ct, 2, self.level, -1), self.bits[0], self.n)
            if (out >= self._q_column).any():
                raise DeserializationError()
            return out
        pos = 0
        for j, (b, q) in enumerate(zip(self.bits, self.moduli, strict=True)):
            width = self.n * b // 8
            w = _unpack(np.ascontiguousarray(raw[:, :, pos : pos + width]), b, self.n)
            if w.max(initial=0) >= q:
                raise DeserializationError()
            out[:, :, j, :] = w
            pos += width
        return out

    @property
    def ct_bytes(self) -> int:
        """Packed bytes of one ciphertext."""
        return self.packed_size(1)

    def encrypt_packed_into(self, values: FloatVector, out: memoryview) -> None:
        """Encrypt and pack block by block straight into ``out`` (exactly the packed
        size): no list of packed blocks and no joined copy of them (issue #13)."""
        n, cb = self.n, self.ct_bytes
        n_ct = -(-values.size // n)
        if len(out) != n_ct * cb:
            raise ValueError("output buffer of the wrong size")
        for a in range(0, n_ct, _BLOCK):
            b = min(a + _BLOCK, n_ct)
            out[a * cb : b * cb] = self.pack(self.encrypt_words(values[a * n : b * n]))

    def encrypt_packed(self, values: FloatVector) -> bytes:
        """Encrypt and pack block by block (peak memory ~ twice the packed output)."""
        buf = bytearray(-(-values.size // self.n) * self.ct_bytes)
        self.encrypt_packed_into(values, memoryview(buf))
        return bytes(buf)

    def decrypt_packed(
        self,
        packed: bytes | memoryview,
        n_ct: int,
        size: int,
        flood: FloodSource = None,
    ) -> FloatVector:
        """Unpack (checking every word < q) and decrypt block by block, each block
        flooded with its own rows of ``flood`` (drawn block by block from a stream:
        only one block's noise and words exist at a time)."""
        view = memoryview(packed)
        cb = self.ct_bytes
        if len(view) != n_ct * cb:
            raise DeserializationError()
        out = np.empty(n_ct * self.n, dtype=np.float64)
        for a in range(0, n_ct, _BLOCK):
            b = min(a + _BLOCK, n_ct)
            words = self.unpack(view[a * cb : b * cb], b - a)
            out[a * self.n : b * self.n] = self.decrypt_words(
                words, (b - a) * self.n, _flood_rows(flood, a, b)
            )
        return out[:size]

    def add_into(
        self, acc: npt.NDArray[np.uint64], other: npt.NDArray[np.uint64]
    ) -> None:
        """``acc += other`` modulo each data prime, in place.

        Words are < q < 2**60, so ``r = a + b`` cannot overflow; ``r - q`` wraps to a
        huge value exactly when ``r < q``, so ``min(r, r - q)`` is ``r mod q``.
        """
        q = self._q_column
        np.add(acc, other, out=acc)
        np.minimum(acc, acc - q, out=acc)
