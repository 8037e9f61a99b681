"""CKKS homomorphic aggregation on TenSEAL (Microsoft SEAL through ``tenseal.sealapi``).

The aggregator adds ciphertexts and never holds a key that decrypts them. It must be
honest-but-curious: a malicious aggregator can present one client's ciphertext (or one
plus its own encryptions of known values) as "the aggregate" and have the holder decrypt
it; contributions are not authenticated to the holder (``docs/backends/ckks.md``).

* **Keys** (:func:`keygen`): a :class:`CkksSecretContext` for the result holder (the
  secret key, wrapped in :class:`privagg.SecretKey`) and a :class:`CkksPublicContext`
  (parameters + public encryption key, *no* secret key and no Galois/relinearization
  keys: none is ever generated) for clients and the aggregator.
* **Per-role sessions** (:meth:`CkksBackend.session`): clients and the aggregator
  build their session from the public context alone (``holder()`` raises
  :class:`~privagg.MissingKeyError`), the holder from the secret context; all agree on
  ``params_id``. :meth:`CkksBackend.deal` / :meth:`CkksBackend.load_role` are the
  deployment hook (``fedtrain.flower.material``): public context for clients and the
  aggregator, secret context (explicitly protected export) for the holder only.
* **Packing**: a whole flat update goes into ``ceil(size / N)`` ciphertexts, N real
  values each (the real *and* imaginary parts of the N/2 complex slots).
* **Wire format**: SEAL's ciphertext coefficients (NTT form, one row per data prime)
  bit-packed at the prime's width: 15 bytes per value for one 60-bit prime (``compact``),
  22.25 for 60 + 29 bits (``secure``), 30 for two 60-bit primes (``secure-large``).
  SEAL writes them; privagg reads the raw words from SEAL's own serialization (raw
  zstd blocks, or SEAL's own linked zstd for compressed frames) and never
  re-implements encryption.
* **Aggregation**: coefficient-wise addition modulo each prime (exactly what SEAL's
  ``add`` does), vectorized with numpy; the aggregate counts its contributions. A
  client contribution must say ``count == 1``; only aggregates carry larger counts.
* **Release** (IND-CPA-D, Li-Micciancio 2021; Li-Micciancio-Schultz-Sorrell 2022):
  before decrypting, the holder adds integer flooding noise ``f`` (rounded Gaussian,
  std ``2**flood_bits`` times the modelled coefficient-domain decryption noise, drawn
  from the injected :class:`~privagg.Rng`) to the aggregate's *coefficients*: SEAL
  transforms ``(f, 1)`` to NTT form and the evaluator adds it (the ``1`` is cancelled
  in ``c1`` beforehand), then decrypts and decodes. SEAL's float64 decoding error is
  thus post-processing of an already flooded value. The result is rounded to a
  power-of-two grid. See ``docs/backends/ckks.md``.

Randomness note: SEAL samples its encryption and key randomness from its own CSPRNG
(Blake2xb seeded from the OS); privagg's injected :class:`~privagg.Rng` drives the
flooding noise and DP noise. Seeding SEAL from the injected Rng is not possible
without seed reuse across ciphertexts (SEAL's fixed-seed factories repeat streams).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import math
import multiprocessing
import os
import shutil
import struct
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NoReturn

import numpy as np
import numpy.typing as npt

from privagg._oneshot import OneShotSession
from privagg._rng import Rng, SystemRng, uniform01
from privagg.backends._ckks_params import PRESETS, CkksParams
from privagg.encoding import noise_headroom
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
    EncodingOverflowError,
    MissingKeyError,
    ParameterMismatchError,
)
from privagg.keys import (
    NoProtection,
    Protection,
    SecretKey,
    fingerprint,
    read_secret_file,
    write_secret_file,
)
from privagg.layout import FloatVector, Layout
from privagg.protocols import NoiseShare, check_setup_args

try:
    import tenseal.sealapi as _seal
except ImportError as _exc:  # pragma: no cover - the registry reports this
    raise ImportError(f"the ckks backend needs TenSEAL: {_exc}") from _exc

__all__ = [
    "PRESETS",
    "CkksBackend",
    "CkksMaterial",
    "CkksParams",
    "CkksPublicContext",
    "CkksSecretContext",
    "EncryptedUpdate",
    "keygen",
]

_PUBLIC_CTX_KIND = 0x20
_BODY_VERSION = 1
_SEAL_MAGIC = 0xA15E
_SEAL_HEADER = struct.Struct("<HBBBBHQ")
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Forking a worker costs roughly a page-table copy of the parent; only updates with at
# least this many ciphertexts per worker amortize it.
_POOL_MIN_PER_WORKER = 64
_BLOCK = 32  # ciphertexts per block in block-wise encrypt/combine/decrypt
_MAX_CONTRIBUTIONS = 1 << 40


# -- SEAL object <-> bytes (in memory) ----------------------------------------------
@contextlib.contextmanager
def _scratch_path() -> Iterator[str]:
    """A path SEAL can ``save``/``load`` through: an anonymous memory file on Linux.

    TenSEAL's ``sealapi`` binds SEAL's ``save``/``load`` on file paths only (SEAL's
    stream overloads are not exposed, and ``tenseal.context_from`` reads TenSEAL's own
    context format, not the bare SEAL objects this backend uses), so SEAL objects, the
    secret key included, pass through a path. On Linux it is a ``memfd`` (anonymous
    memory, never on a file system; ``/proc/self/fd/N`` is private to this process).
    """
    memfd = getattr(os, "memfd_create", None)
    fd = -1
    if memfd is not None:
        try:
            fd = memfd("privagg-ckks", getattr(os, "MFD_CLOEXEC", 0))
        except OSError:  # e.g. refused by a seccomp filter: take the file path
            fd = -1
    if fd >= 0:
        try:
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    # Without memfd: a 0600 file in a fresh 0700 directory (mkdtemp), overwritten with
    # zeros and removed in ``finally`` (security review #11, finding 9). Best effort:
    # the file system may keep old blocks (use an encrypted or RAM-backed TMPDIR
    # where that matters).
    d = tempfile.mkdtemp(prefix="privagg-ckks-")
    try:
        os.chmod(d, 0o700)
        path = os.path.join(d, "obj")
        os.close(
            os.open(
                path,
                os.O_CREAT
                | os.O_EXCL
                | os.O_RDWR
                | getattr(os, "O_NOFOLLOW", 0)
                | getattr(os, "O_CLOEXEC", 0),
                0o600,
            )
        )
        try:
            yield path
        finally:
            _wipe(path)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _wipe(path: str) -> None:
    """Overwrite a scratch file with zeros and fsync it before it is removed."""
    try:
        with open(path, "r+b") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(0)
            fh.write(bytes(size))
            fh.flush()
            os.fsync(fh.fileno())
    except OSError:
        pass


_FD_PREFIX = "/proc/self/fd/"


def _read(path: str) -> bytes:
    if path.startswith(_FD_PREFIX):  # our memfd: read it without reopening
        fd = int(path[len(_FD_PREFIX) :])
        size = os.fstat(fd).st_size
        data = os.pread(fd, size, 0)
        if len(data) == size:
            return data
    with open(path, "rb") as fh:  # pragma: no cover - non-Linux or short read
        return fh.read()


def _write(path: str, *parts: bytes | npt.NDArray[Any]) -> None:
    """Replace the file's content by the concatenation of ``parts`` (no joining copy)."""
    bufs = [
        memoryview(p).cast("B")
        if isinstance(p, bytes)
        else np.ascontiguousarray(p).reshape(-1).view(np.uint8).data
        for p in parts
    ]
    total = sum(len(b) for b in bufs)
    if path.startswith(_FD_PREFIX) and hasattr(os, "pwritev"):
        fd = int(path[len(_FD_PREFIX) :])
        done = os.pwritev(fd, bufs, 0)
        if done < total:  # pragma: no cover - short write: finish it piece by piece
            joined = memoryview(b"".join(bufs))
            while done < total:
                done += os.pwrite(fd, joined[done:], done)
        os.ftruncate(fd, total)
        return
    with open(path, "wb") as fh:  # pragma: no cover - non-Linux
        for b in bufs:
            fh.write(b)


def _seal_save(obj: Any) -> bytes:
    with _scratch_path() as p:
        obj.save(p)
        return _read(p)


def _seal_load(obj: Any, context: Any, data: bytes) -> None:
    with _scratch_path() as p:
        _write(p, data)
        obj.load(context, p)


class _CompressedError(Exception):
    """SEAL compressed this object (not a raw zstd frame): take the slow path."""


def _seal_body(blob: bytes) -> bytes:
    """The uncompressed body of a SEAL serialization (after its 16-byte header).

    SEAL compresses with zstd; random ciphertext words are incompressible, so zstd
    stores them as raw (or RLE) blocks, which this reads. A compressed block raises
    :class:`_CompressedError` and the caller falls back to reading words one by one.
    """
    magic, hsize, _vmaj, _vmin, mode, _res, size = _SEAL_HEADER.unpack_from(blob, 0)
    if magic != _SEAL_MAGIC or hsize != 16 or size != len(blob):
        raise _CompressedError
    body = memoryview(blob)[16:]
    if mode == 0:
        return bytes(body)
    if mode != 2 or bytes(body[:4]) != _ZSTD_MAGIC:
        raise _CompressedError
    fhd = body[4]
    pos = 5
    single = (fhd >> 5) & 1
    if not single:
        pos += 1
    pos += (0, 1, 2, 4)[fhd & 3]
    pos += (1 if single else 0, 2, 4, 8)[fhd >> 6]
    out: list[bytes] = []
    while True:
        if pos + 3 > len(body):
            raise _CompressedError
        h = int.from_bytes(body[pos : pos + 3], "little")
        pos += 3
        last, btype, bsize = h & 1, (h >> 1) & 3, h >> 3
        if btype == 0:
            out.append(bytes(body[pos : pos + bsize]))
            pos += bsize
        elif btype == 1:
            out.append(bytes(body[pos : pos + 1]) * bsize)
            pos += 1
        else:
            raise _CompressedError
        if last:
            break
    return b"".join(out)


def _load_zstd() -> Callable[[bytes, int], bytes | None] | None:
    """``ZSTD_decompress`` from the zstd SEAL itself links (or the system's), or None.

    TenSEAL's ``_sealapi_cpp`` extension links zstd statically and exports its
    symbols; SEAL compresses with it, so decompressing with the same library is
    exact. Without it the caller falls back to reading words one by one.
    """
    names: list[str] = []
    mod = sys.modules.get("_sealapi_cpp")
    if mod is not None and getattr(mod, "__file__", None):
        names.append(str(mod.__file__))
    system = ctypes.util.find_library("zstd")
    if system:
        names.append(system)
    for name in names:
        try:
            lib = ctypes.CDLL(name)
            fn = lib.ZSTD_decompress
            is_error = lib.ZSTD_isError
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_size_t
        fn.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_char_p,
            ctypes.c_size_t,
        ]
        is_error.restype = ctypes.c_uint
        is_error.argtypes = [ctypes.c_size_t]

        def decompress(
            frame: bytes, size: int, fn: Any = fn, err: Any = is_error
        ) -> bytes | None:
            out = ctypes.create_string_buffer(size)
            got = fn(out, size, frame, len(frame))
            if err(got) or got != size:
                return None
            return out.raw

        return decompress
    return None  # pragma: no cover - TenSEAL always ships zstd


_ZSTD = _load_zstd()


def _translate(what: str) -> Callable[[BaseException], NoReturn]:
    def raise_(exc: BaseException) -> NoReturn:
        # SEAL messages describe parameters, never values; keep them out anyway.
        raise ConfigurationError(f"CKKS {what} failed ({type(exc).__name__})") from None

    return raise_


# -- bit packing ----------------------------------------------------------------------
_U64 = np.dtype("<u8")


def _pack(words: npt.NDArray[np.uint64], bits: int) -> npt.NDArray[np.uint8]:
    """Pack rows of uint64 words (< 2**bits; row length a multiple of 8) at ``bits``.

    Returns a uint8 array of shape ``rows.shape[:-1] + (row_len * bits // 8,)``;
    word ``i`` occupies bits ``[i*bits, (i+1)*bits)`` of its row, little-endian.
    """
    lead = words.shape[:-1]
    n = words.shape[-1]
    if bits % 4 == 0 and bits > 48:
        # Fast path (60-bit primes): two words -> one 128-bit pair -> 2*bits/8 bytes.
        w = np.ascontiguousarray(words, dtype=_U64).reshape(-1, 2)
        pair = np.empty((w.shape[0], 2), dtype=_U64)
        pair[:, 0] = w[:, 0] | (w[:, 1] << np.uint64(bits))
        pair[:, 1] = w[:, 1] >> np.uint64(64 - bits)
        out = pair.view(np.uint8)[:, : bits // 4]
        return np.ascontiguousarray(out).reshape(*lead, n * bits // 8)
    # Groups of 8 words -> ``bits`` bytes, assembled in ceil(bits/8) 64-bit lanes.
    w = np.ascontiguousarray(words, dtype=_U64).reshape(-1, 8)
    g = w.shape[0]
    lanes = np.zeros((g, -(-bits // 8)), dtype=_U64)
    for k in range(8):
        li, sh = (k * bits) >> 6, (k * bits) & 63
        v = w[:, k]
        lanes[:, li] |= v << np.uint64(sh)
        if sh + bits > 64:
            lanes[:, li + 1] |= v >> np.uint64(64 - sh)
    out = lanes.view(np.uint8)[:, :bits]
    return np.ascontiguousarray(out).reshape(*lead, n * bits // 8)


def _unpack(data: npt.NDArray[np.uint8], bits: int, n: int) -> npt.NDArray[np.uint64]:
    """Inverse of :func:`_pack` for rows of ``n`` words: shape ``lead + (n,)``."""
    lead = data.shape[:-1]
    mask = np.uint64((1 << bits) - 1)
    if bits % 4 == 0 and bits > 32:
        # Pairs of words in rows of 2*bits/8 bytes: read two overlapping unaligned
        # 8-byte windows per row (first word at byte 0, second at bit ``bits``).
        width = bits // 4
        g = data.size // width
        flat = np.zeros(data.size + 8, dtype=np.uint8)
        flat[: data.size] = data.reshape(-1)
        buf = flat.data
        first = np.ndarray((g,), dtype=_U64, buffer=buf, offset=0, strides=(width,))
        second = np.ndarray(
            (g,), dtype=_U64, buffer=buf, offset=bits // 8, strides=(width,)
        )
        out = np.empty((g, 2), dtype=_U64)
        np.bitwise_and(first, mask, out=out[:, 0])
        np.bitwise_and(second >> np.uint64(bits % 8), mask, out=out[:, 1])
        return out.reshape(*lead, n)
    g = data.size // bits
    nl = -(-bits // 8)
    src = np.zeros((g, 8 * nl), dtype=np.uint8)
    src[:, :bits] = data.reshape(g, bits)
    lanes = src.view(_U64)
    res = np.empty((g, 8), dtype=_U64)
    for k in range(8):
        li, sh = (k * bits) >> 6, (k * bits) & 63
        v = lanes[:, li] >> np.uint64(sh)
        if sh + bits > 64:
            v |= lanes[:, li + 1] << np.uint64(64 - sh)
        np.bitwise_and(v, mask, out=res[:, k])
    return res.reshape(*lead, n)


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

    def encrypt_packed(self, values: FloatVector) -> bytes:
        """Encrypt and pack block by block (peak memory ~ the packed output)."""
        step = _BLOCK * self.n
        return b"".join(
            self.pack(self.encrypt_words(values[a : a + step]))
            for a in range(0, values.size, step)
        )

    def decrypt_packed(
        self,
        packed: bytes | memoryview,
        n_ct: int,
        size: int,
        flood: npt.NDArray[np.int64] | None = None,
    ) -> FloatVector:
        """Unpack (checking every word < q) and decrypt block by block (flooded)."""
        view = memoryview(packed)
        cb = self.ct_bytes
        if len(view) != n_ct * cb:
            raise DeserializationError()
        out = np.empty(n_ct * self.n, dtype=np.float64)
        for a in range(0, n_ct, _BLOCK):
            b = min(a + _BLOCK, n_ct)
            words = self.unpack(view[a * cb : b * cb], b - a)
            out[a * self.n : b * self.n] = self.decrypt_words(
                words, (b - a) * self.n, None if flood is None else flood[a:b]
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
        """Decrypt an update or aggregate *without* release protection (hazmat).

        Use the holder role (or :meth:`release`) for anything that leaves the key
        holders: raw CKKS decryptions can leak the key (IND-CPA-D).
        """
        if update.key_fingerprint != self.public.fingerprint:
            raise ParameterMismatchError(
                "the ciphertext was made under another CKKS key"
            )
        return self.seal_state().decrypt_words(update.words, update.size)

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
        flood = _flood_noise(
            self.params, update.count, update.n_ciphertexts, rng or SystemRng()
        )
        raw = st.decrypt_words(update.words, update.size, flood)
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


# -- encrypted updates ------------------------------------------------------------------
class EncryptedUpdate:
    """Encrypted flat vector (or a sum of them) under one key; counts its contributions.

    ``a + b`` adds ciphertexts (refusing other keys, parameters or sizes);
    ``to_bytes``/``from_bytes`` use the packed wire format.
    """

    __slots__ = ("_state", "count", "key_fingerprint", "size", "words")

    def __init__(
        self,
        key_fingerprint: bytes,
        state: _Seal,
        count: int,
        size: int,
        words: npt.NDArray[np.uint64],
    ) -> None:
        self.key_fingerprint = key_fingerprint
        self._state = state
        self.count = count
        self.size = size
        self.words = words

    @property
    def n_ciphertexts(self) -> int:
        """Ciphertexts holding the vector."""
        return int(self.words.shape[0])

    def __add__(self, other: object) -> EncryptedUpdate:
        if not isinstance(other, EncryptedUpdate):
            return NotImplemented
        if other.key_fingerprint != self.key_fingerprint:
            raise ParameterMismatchError(
                "cannot add CKKS ciphertexts of different keys/parameters"
            )
        if other.size != self.size:
            raise ParameterMismatchError(
                f"cannot add CKKS updates of {self.size} and {other.size} values"
            )
        _check_count(
            self._state.params, self.count + other.count, self._state.params.value_bound
        )
        words = self.words.copy()
        self._state.add_into(words, other.words)
        return EncryptedUpdate(
            self.key_fingerprint,
            self._state,
            self.count + other.count,
            self.size,
            words,
        )

    def to_bytes(self) -> bytes:
        """Body: version, contribution count, value count, packed coefficients."""
        return (
            PayloadWriter()
            .u8(_BODY_VERSION)
            .u64(self.count)
            .u64(self.size)
            .blob(self._state.pack(self.words))
            .getvalue()
        )

    @classmethod
    def from_bytes(
        cls,
        data: bytes | memoryview,
        context: CkksPublicContext | CkksSecretContext,
        *,
        size: int | None = None,
    ) -> EncryptedUpdate:
        """Decode :meth:`to_bytes`; DeserializationError on any malformation."""
        pub = context.public if isinstance(context, CkksSecretContext) else context
        return _decode_body(data, pub.fingerprint, context.seal_state(), size)

    def __repr__(self) -> str:
        return (
            f"EncryptedUpdate(values={self.size}, ciphertexts={self.n_ciphertexts}, "
            f"contributions={self.count})"
        )


def _decode_body(
    data: bytes | memoryview, fp: bytes, state: _Seal, size: int | None
) -> EncryptedUpdate:
    try:
        r = PayloadReader(data)
        if r.u8() != _BODY_VERSION:
            raise DeserializationError()
        count = r.u64()
        n_values = r.u64()
        packed = r.blob_view()
        r.done()
        if not 1 <= count <= _MAX_CONTRIBUTIONS or n_values > 1 << 40:
            raise DeserializationError()
        if size is not None and n_values != size:
            raise DeserializationError()
        n_ct = -(-n_values // state.n)
        words = state.unpack(packed, n_ct)
    except DeserializationError:
        raise
    except Exception:
        raise DeserializationError() from None
    return EncryptedUpdate(fp, state, count, n_values, words)


def _check_count(params: CkksParams, count: int, per_contribution: float) -> None:
    """Refuse sums of more contributions than the modulus holds (they would wrap)."""
    if not params.max_sum(count * per_contribution, count):
        raise EncodingOverflowError(
            f"a CKKS sum of {count} contributions could wrap the modulus; "
            "set up the session with a larger max_clients or smaller value_bound"
        )


def _check_values(v: FloatVector, params: CkksParams, max_weight: float) -> FloatVector:
    if not np.isfinite(v).all():
        raise ConfigurationError("CKKS cannot encrypt NaN or infinite values")
    limit = params.value_bound * max_weight
    if v.size and float(np.max(np.abs(v))) > limit * (1 + 1e-12):
        raise EncodingOverflowError(
            f"a value exceeds the CKKS bound {limit:.6g} (value_bound * max_weight); "
            "clip the update or configure a larger value_bound"
        )
    return v


def _gaussian(rng: Rng, n: int) -> npt.NDArray[np.float64]:
    """``n`` standard normal samples (Box-Muller, both outputs, 53-bit uniforms)."""
    half = (n + 1) // 2
    u = uniform01(rng, 2 * half)
    radius = np.sqrt(-2.0 * np.log1p(-u[:half]))  # 1 - u in (0, 1]
    angle = 2.0 * math.pi * u[half:]
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:n]


def _flood_noise(
    params: CkksParams, count: int, n_ct: int, rng: Rng
) -> npt.NDArray[np.int64] | None:
    """Integer flooding noise for ``n_ct`` ciphertexts of a ``count``-sum, or None.

    A rounded Gaussian of std ``params.flood_coeff_std(count)`` per coefficient,
    drawn from the injected ``rng`` (never numpy's or Python's generators).
    """
    if params.flood_bits is None:
        raise ConfigurationError(
            "flood_bits=None: releasing an unflooded CKKS decryption is refused "
            "(IND-CPA-D); use CkksSecretContext.decrypt (hazmat) for key-holder-only use"
        )
    sigma = params.flood_coeff_std(count)
    if sigma <= 0 or n_ct == 0:
        return None
    if not params.flood_exact(count):
        raise ConfigurationError(
            f"CKKS flooding std {sigma:.3g} for {count} contributions is beyond exact "
            "float64 sampling; refuse rather than release with biased noise"
        )
    n = params.poly_modulus_degree
    z = np.rint(sigma * _gaussian(rng, n_ct * n))
    return z.astype(np.int64).reshape(n_ct, n)


def _check_release_range(
    params: CkksParams, v: FloatVector, count: int, per_contribution: float
) -> None:
    """Refuse a decryption that no honest set of contributions can produce.

    A ciphertext is not proven well formed: a malicious client (or an aggregator
    that injects ciphertexts) can submit ``(0, T)``, which decrypts to ``T * s``; a
    large ``T`` would put the secret key in the published sum. Honest sums are at
    most ``count * per_contribution`` plus the declared tolerance, so anything
    larger is refused before release. This stops the one-shot attack only; a
    patient attacker with ``T * s`` below the honest range is NOT stopped (see the
    threat model in docs/backends/ckks.md).
    """
    if not v.size:
        return
    limit = count * per_contribution + params.tolerance(count, per_contribution)
    # The message names only public bounds: the offending magnitude is a function of
    # the secret key when the ciphertext was crafted, so it is not echoed.
    if not float(np.max(np.abs(v))) <= limit:
        raise EncodingOverflowError(
            f"the CKKS decryption is beyond any honest sum of {count} contributions "
            f"(<= {limit:.3g}): a malformed ciphertext was aggregated; nothing is "
            "released"
        )


def _round_release(params: CkksParams, v: FloatVector, count: int) -> FloatVector:
    """Round a flooded decryption to the power-of-two release grid."""
    g = params.release_grid(count)
    return np.round(v / g) * g


# -- parallel encryption / decryption ------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _worker_init(params_bytes: bytes, pk_bytes: bytes, sk_bytes: bytes | None) -> None:
    st = _Seal(CkksParams.from_bytes(params_bytes))
    st.set_public_key(pk_bytes)
    if sk_bytes is not None:
        sk = _seal.SecretKey()
        _seal_load(sk, st.context, sk_bytes)
        st.set_secret_key(sk)
    _WORKER["state"] = st


def _worker_encrypt(values: FloatVector) -> bytes:
    st: _Seal = _WORKER["state"]
    return st.encrypt_packed(values)


def _worker_decrypt(
    packed: bytes, n_ct: int, flood: npt.NDArray[np.int64] | None
) -> FloatVector:
    st: _Seal = _WORKER["state"]
    return st.decrypt_packed(packed, n_ct, n_ct * st.n, flood)


def _n_workers(threads: int | None, n_ct: int) -> int:
    """Worker processes for ``n_ct`` ciphertexts (1: inline).

    ``threads=None`` takes the cores available to the process that are not already
    busy (per the 1-minute load average), so a shared machine is not oversubscribed;
    an explicit ``threads`` is an upper bound used as given.
    """
    if "fork" not in multiprocessing.get_all_start_methods():
        return 1  # pragma: no cover - non-POSIX
    if threads is None:
        avail = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        threads = max(1, round(avail - busy))
    return max(1, min(threads, n_ct // _POOL_MIN_PER_WORKER))


def _spans(n_ct: int, parts: int) -> list[tuple[int, int]]:
    step = -(-n_ct // parts)
    return [(a, min(a + step, n_ct)) for a in range(0, n_ct, step)]


def _pool(workers: int, initargs: tuple[Any, ...]) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_worker_init,
        initargs=initargs,
    )


def _encrypt_packed(
    ctx: CkksPublicContext, vec: FloatVector, threads: int | None
) -> bytes:
    st = ctx.seal_state()
    n_ct = -(-vec.size // st.n)
    workers = _n_workers(threads, n_ct)
    if workers <= 1:
        return st.encrypt_packed(vec)
    spans = _spans(n_ct, workers * 4)
    with _pool(workers, (ctx.params.to_bytes(), ctx.public_key_bytes(), None)) as ex:
        parts = ex.map(_worker_encrypt, [vec[a * st.n : b * st.n] for a, b in spans])
        return b"".join(parts)


def _decrypt_packed(
    ctx: CkksSecretContext,
    packed: memoryview,
    n_ct: int,
    size: int,
    threads: int | None,
    flood: npt.NDArray[np.int64] | None = None,
) -> FloatVector:
    st = ctx.seal_state()
    workers = _n_workers(threads, n_ct)
    if workers <= 1:
        return st.decrypt_packed(packed, n_ct, size, flood)
    cb = st.ct_bytes
    spans = _spans(n_ct, workers * 4)
    # The forked workers inherit the key in memory; it never crosses a pipe or a disk.
    sk_bytes = _export_secret(ctx.secret_key.unsafe_material())
    init = (ctx.params.to_bytes(), ctx.public.public_key_bytes(), sk_bytes)
    with _pool(workers, init) as ex:
        chunks = [
            (
                bytes(packed[a * cb : b * cb]),
                b - a,
                None if flood is None else flood[a:b],
            )
            for a, b in spans
        ]
        parts = ex.map(_worker_decrypt, *zip(*chunks, strict=True))
        return np.concatenate(list(parts))[:size]


def _read_body(
    data: bytes | memoryview, state: _Seal, size: int
) -> tuple[int, memoryview, int]:
    """Parse a body's header: (contributions, packed view, ciphertext count)."""
    try:
        r = PayloadReader(data)
        if r.u8() != _BODY_VERSION:
            raise DeserializationError()
        count = r.u64()
        n_values = r.u64()
        packed = r.blob_view()
        r.done()
    except DeserializationError:
        raise
    except Exception:
        raise DeserializationError() from None
    if not 1 <= count <= _MAX_CONTRIBUTIONS or n_values != size:
        raise DeserializationError()
    n_ct = -(-n_values // state.n)
    if len(packed) != n_ct * state.ct_bytes:
        raise DeserializationError()
    return count, packed, n_ct


def _body(count: int, size: int, packed: bytes | bytearray) -> bytes:
    return (
        PayloadWriter().u8(_BODY_VERSION).u64(count).u64(size).blob(packed).getvalue()
    )


# -- codecs ----------------------------------------------------------------------------------
@dataclass
class _ClientCodec:
    context: CkksPublicContext
    size: int
    max_weight: float
    threads: int | None
    noise: NoiseShare | None

    def protect(self, update: FloatVector, weight: float, rng: Rng) -> bytes:
        params = self.context.params
        v = np.asarray(update, dtype=np.float64).reshape(-1)
        if v.size != self.size:
            raise ParameterMismatchError(
                f"update has {v.size} values, layout has {self.size}"
            )
        if not np.isfinite(v).all():
            raise ConfigurationError("CKKS cannot encrypt NaN or infinite values")
        if not (math.isfinite(weight) and 0 <= weight <= self.max_weight * (1 + 1e-12)):
            raise ConfigurationError(
                f"weight must be in [0, {self.max_weight}], got {weight}"
            )
        _check_values(v, params, 1.0)
        v = weight * v
        if self.noise is not None:
            v = v + self.noise.sample_real(v.size, rng=rng)
            if not np.isfinite(v).all():
                raise ConfigurationError("DP noise produced non-finite values")
        return _body(1, self.size, _encrypt_packed(self.context, v, self.threads))


@dataclass
class _CombineCodec:
    context: CkksPublicContext
    size: int
    per_contribution: float = 1.0  # max |weighted value| + DP noise, per contribution
    max_clients: int = _MAX_CONTRIBUTIONS

    def combine(self, bodies: Sequence[bytes]) -> bytes:
        """Sum block by block modulo each prime; validates every body first.

        ``bodies`` are client contributions (in contributor-id order, as the one-shot
        aggregator passes them): each must carry ``count == 1``. Before this check a
        single client could claim any count up to 2**40 and so make ``combine`` raise
        (modulus overflow) or the holder refuse the round (count vs contributor list).

        Raises:
            DeserializationError: a malformed body, another size/parameter set, or a
                contribution whose count is not 1 (its position is named).
            EncodingOverflowError: more bodies than the session's ``max_clients`` (its
                headroom was sized for that many), or a sum the modulus cannot hold.
        """
        if len(bodies) > self.max_clients:
            raise EncodingOverflowError(
                f"{len(bodies)} contributions exceed the session's max_clients="
                f"{self.max_clients} (the headroom was checked for that many)"
            )
        st = self.context.seal_state()
        parsed = [_read_body(b, st, self.size) for b in bodies]
        if not parsed:
            raise DeserializationError()
        for i, (c, _, _) in enumerate(parsed):
            if c != 1:
                raise DeserializationError(
                    f"contribution #{i} of {len(parsed)} (contributors in id order) "
                    f"claims {c} contributions; a client contribution must have count 1"
                )
        _check_count(
            self.context.params, sum(c for c, _, _ in parsed), self.per_contribution
        )
        n_ct = parsed[0][2]
        cb = st.ct_bytes
        out = bytearray(n_ct * cb)
        for a in range(0, n_ct, _BLOCK):
            b = min(a + _BLOCK, n_ct)
            acc = st.unpack(parsed[0][1][a * cb : b * cb], b - a)
            for _, packed, _ in parsed[1:]:
                st.add_into(acc, st.unpack(packed[a * cb : b * cb], b - a))
            out[a * cb : b * cb] = st.pack(acc)
        count = sum(c for c, _, _ in parsed)
        if count > _MAX_CONTRIBUTIONS:
            raise DeserializationError()
        return _body(count, self.size, out)


class _RecoverCodec:
    """Holder side: decrypt, check the contribution count, flood and round."""

    __slots__ = ("_ctx", "_max_clients", "_per", "_rng", "_size", "_threads")

    def __init__(
        self,
        ctx: CkksSecretContext,
        size: int,
        threads: int | None,
        rng: Rng,
        per_contribution: float = 1.0,
        max_clients: int = _MAX_CONTRIBUTIONS,
    ) -> None:
        if not isinstance(ctx, CkksSecretContext):
            raise MissingKeyError(
                "recovering a CKKS aggregate needs the secret context"
            )
        self._ctx = ctx
        self._size = size
        self._threads = threads
        self._rng = rng
        self._per = per_contribution
        self._max_clients = max_clients

    def recover(self, body: bytes, n_contributions: int) -> FloatVector:
        if n_contributions > self._max_clients:
            raise EncodingOverflowError(
                f"{n_contributions} contributions exceed the session's max_clients="
                f"{self._max_clients}"
            )
        count, packed, n_ct = _read_body(body, self._ctx.seal_state(), self._size)
        if count != n_contributions:
            raise DeserializationError(
                "aggregate count does not match its contributor list"
            )
        _check_count(self._ctx.params, count, self._per)
        params = self._ctx.params
        flood = _flood_noise(params, count, n_ct, self._rng)
        raw = _decrypt_packed(self._ctx, packed, n_ct, self._size, self._threads, flood)
        _check_release_range(params, raw, count, self._per)
        return _round_release(params, raw, count)

    def __repr__(self) -> str:
        return f"<CKKS recover codec {self._ctx.secret_key!r}>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("the CKKS holder holds a secret key and cannot be pickled")


def _noise_descriptor(noise: NoiseShare | None) -> bytes:
    """What ``params_id`` binds of the DP noise share: its type and its ``stddev``."""
    w = PayloadWriter()
    if noise is None:
        return w.text("none").getvalue()
    t = type(noise)
    stddev = getattr(noise, "stddev", None)
    w.text(f"{t.__module__}.{t.__qualname__}")
    if isinstance(stddev, (int, float)) and not isinstance(stddev, bool):
        return w.u8(1).f64(float(stddev)).getvalue()
    return w.u8(0).getvalue()


def _no_holder() -> NoReturn:
    raise MissingKeyError(
        "this CKKS session holds only the public context: only the result holder "
        "(built from the secret context) can recover"
    )


@dataclass(frozen=True, repr=False)
class CkksMaterial:
    """Dealt material, one opaque blob per role (see :meth:`CkksBackend.deal`).

    ``holder`` contains the secret key, so the object cannot be pickled or copied
    (write each blob to its own file: :func:`~privagg.keys.write_secret_file` for the
    holder's) and its ``repr`` shows only the public key's fingerprint (security
    review #11, finding 9).

    Attributes:
        aggregator: the public context (parameters + public key).
        holder: the secret context (public context + exported secret key).
        clients: party id -> the public context.
    """

    aggregator: bytes
    holder: bytes  # holds the secret key: never printed
    clients: Mapping[str, bytes]

    def __repr__(self) -> str:
        try:
            fp = open_envelope(self.aggregator)[0].params_id[:4].hex()
        except Exception:  # a malformed public blob: show nothing of it
            fp = "?"
        return (
            f"<CkksMaterial public fp={fp}… clients={len(self.clients)}, "
            "the holder's secret context hidden>"
        )

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            "CkksMaterial holds the holder's secret key and cannot be pickled; write "
            "each role's blob to its own file (write_secret_file for the holder's)"
        )

    def __copy__(self) -> NoReturn:
        raise TypeError("CkksMaterial holds a secret key and cannot be copied")

    def __deepcopy__(self, memo: object) -> NoReturn:
        raise TypeError("CkksMaterial holds a secret key and cannot be copied")


# -- backend ---------------------------------------------------------------------------------
class CkksBackend:
    """CKKS (TenSEAL/SEAL) additive aggregation.

    Args:
        preset: "secure" (default: N=4096, 22.25 bytes/value, 2**40
            coefficient-domain noise flooding, sums up to 2**10.5), "secure-large"
            (N=8192, 30 bytes/value, same flooding, sums up to 2**36.5), "compact"
            (N=4096, 15 bytes/value, heuristic flooding: not for releases beyond the
            key holder) or "test-fast".
        poly_modulus_degree: overrides the preset (custom path; validated, see
            :class:`CkksParams`), like the next five.
        data_bits: overrides the preset.
        special_bits: overrides the preset.
        scale_bits: overrides the preset.
        value_bound: overrides the preset.
        flood_bits: overrides the preset.
        threads: worker processes for large updates (None: all cores; 1: inline).
    """

    name: ClassVar[str] = "ckks"

    def __init__(
        self,
        *,
        preset: str = "secure",
        poly_modulus_degree: int | None = None,
        data_bits: Sequence[int] | None = None,
        special_bits: int | str | None = "preset",
        scale_bits: int | None = None,
        value_bound: float | None = None,
        flood_bits: int | str | None = "preset",
        threads: int | None = None,
    ) -> None:
        if not isinstance(preset, str) or preset not in PRESETS:
            raise ConfigurationError(
                f"preset must be one of {sorted(PRESETS)}, got {preset!r}"
            )
        if threads is not None and (
            isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
        ):
            raise ConfigurationError(
                f"threads must be None or an int >= 1, got {threads!r}"
            )
        changes: dict[str, Any] = {}
        if poly_modulus_degree is not None:
            changes["poly_modulus_degree"] = poly_modulus_degree
        if data_bits is not None:
            if isinstance(data_bits, (str, bytes)) or not isinstance(
                data_bits, Sequence
            ):
                raise ConfigurationError(
                    f"data_bits must be a sequence of ints, got {data_bits!r}"
                )
            changes["data_bits"] = tuple(data_bits)
        if special_bits != "preset":
            changes["special_bits"] = special_bits
        if scale_bits is not None:
            changes["scale_bits"] = scale_bits
        if value_bound is not None:
            changes["value_bound"] = value_bound
        if flood_bits != "preset":
            changes["flood_bits"] = flood_bits
        self.params = (
            PRESETS[preset].with_options(**changes) if changes else PRESETS[preset]
        )
        self.preset = preset
        self.threads = threads

    @property
    def value_bound(self) -> float | None:
        """Largest |value| per coordinate, before weighting."""
        return float(self.params.value_bound)

    def tolerance(self, *, n_clients: int, max_abs: float) -> float:
        """Declared max abs error of a released sum (see :meth:`CkksParams.tolerance`)."""
        return self.params.tolerance(n_clients, max_abs)

    def keygen(self) -> CkksSecretContext:
        """A fresh key pair for these parameters (run once, by the result holder).

        Returns:
            The holder's :class:`CkksSecretContext`; hand only its ``.public``
            (:class:`CkksPublicContext`) to clients and the aggregator.
        """
        return keygen(self.params)

    def session_check(
        self,
        layout: Layout,
        *,
        max_clients: int,
        max_weight: float = 1.0,
        noise: NoiseShare | None = None,
    ) -> float:
        """Validate session options without touching keys.

        Args:
            layout: the update layout.
            max_clients: most contributions one aggregate may hold.
            max_weight: largest client weight.
            noise: the clients' DP noise share, if any.

        Returns:
            The DP noise headroom for ``max_clients`` (0.0 without noise).

        Raises:
            ConfigurationError: bad layout, ``max_clients`` or ``max_weight``, or sums
                that could wrap the modulus (max_clients * max_weight * value_bound,
                plus the noise headroom, too large).
        """
        if not isinstance(layout, Layout):
            raise ConfigurationError("layout must be a privagg.Layout")
        max_clients, max_weight = check_setup_args(max_clients, max_weight)
        p = self.params
        extra = noise_headroom(noise, max_clients, dim=layout.size)
        p.check_headroom(
            max_clients * float(max_weight) * p.value_bound + extra, max_clients
        )
        return extra

    def session(
        self,
        layout: Layout,
        context: CkksPublicContext | CkksSecretContext,
        *,
        max_clients: int,
        max_weight: float = 1.0,
        noise: NoiseShare | None = None,
        rng: Rng | None = None,
    ) -> OneShotSession:
        """A session for one party from its own key material.

        Clients and the aggregator pass the :class:`CkksPublicContext`: their session
        encrypts and combines, and its ``holder()`` raises
        :class:`~privagg.MissingKeyError`. Only the result holder passes the
        :class:`CkksSecretContext`. ``params_id`` depends on the *public* key only (plus
        parameters, layout and options), so sessions built separately by each party
        from the same key pair agree and their messages interoperate. Every party must
        use the same backend options, layout, ``max_clients``, ``max_weight`` and
        noise: all of them enter ``params_id``.

        Args:
            layout: the update layout.
            context: the public context (clients, aggregator) or the secret context
                (result holder).
            max_clients: most contributions one aggregate may hold; ``combine``
                refuses more.
            max_weight: largest client weight.
            noise: the clients' DP noise share, if any.
            rng: randomness for the holder's flooding noise (default: the OS).

        Returns:
            A one-shot session.

        Raises:
            ConfigurationError: bad options or a ``context`` of another type, or sums
                that could wrap the modulus.
            ParameterMismatchError: ``context`` uses other CKKS parameters than this
                backend.
        """
        if isinstance(context, CkksSecretContext):
            secret: CkksSecretContext | None = context
            public = context.public
        elif isinstance(context, CkksPublicContext):
            secret, public = None, context
        else:
            raise ConfigurationError(
                "context must be a CkksPublicContext or a CkksSecretContext, got "
                f"{type(context).__name__}"
            )
        if public.params != self.params:
            raise ParameterMismatchError("the given CKKS keys use other parameters")
        extra = self.session_check(
            layout, max_clients=max_clients, max_weight=max_weight, noise=noise
        )
        p = self.params
        # Bound to params_id (v2): the key and CKKS parameters (public.fingerprint covers
        # CkksParams.to_bytes: N, primes, scale, value_bound, flood_bits), the layout,
        # and the session options every party must share: max_clients, max_weight and
        # the DP noise configuration (type, stddev, headroom for max_clients).
        session_options = (
            PayloadWriter()
            .int_big(max_clients)
            .f64(float(max_weight))
            .f64(float(extra))
            .blob(_noise_descriptor(noise))
            .getvalue()
        )
        params_id = fingerprint(
            b"ckks/v2", public.fingerprint, layout.fingerprint, session_options
        )
        size = layout.size
        client = _ClientCodec(public, size, float(max_weight), self.threads, noise)
        per = float(max_weight) * p.value_bound + extra / max_clients
        combine = _CombineCodec(public, size, per, max_clients)
        recover: Callable[[], _RecoverCodec]
        if secret is None:
            recover = _no_holder
        else:
            keys = secret
            recover_rng = rng or SystemRng()

            def recover() -> _RecoverCodec:
                return _RecoverCodec(
                    keys, size, self.threads, recover_rng, per, max_clients
                )

        session = OneShotSession(
            "ckks",
            Scheme.CKKS,
            layout,
            params_id,
            client,
            combine,
            recover,
            max_weight=float(max_weight),
        )
        if secret is not None:
            session.ckks_keys = secret  # type: ignore[attr-defined]
        return session

    def setup(
        self,
        layout: Layout,
        *,
        max_clients: int,
        max_weight: float = 1.0,
        noise: NoiseShare | None = None,
        rng: Rng | None = None,
        keys: CkksSecretContext | None = None,
    ) -> OneShotSession:
        """Generate keys (or use ``keys``) and build every role in one process.

        Raises:
            ConfigurationError: bad max_clients/max_weight, or sums that could wrap
                the modulus (max_clients * max_weight * value_bound too large).
            ParameterMismatchError: ``keys`` use other CKKS parameters.
        """
        # validate the cheap things before generating a key
        self.session_check(
            layout, max_clients=max_clients, max_weight=max_weight, noise=noise
        )
        if keys is None:
            keys = keygen(self.params)
        return self.session(
            layout,
            keys,
            max_clients=max_clients,
            max_weight=max_weight,
            noise=noise,
            rng=rng,
        )

    # -- deployment: one role per process -----------------------------------------------
    def deal(
        self,
        layout: Layout,
        party_ids: Sequence[str],
        *,
        max_clients: int,
        max_weight: float = 1.0,
        protection: Protection | None = None,
    ) -> CkksMaterial:
        """Make every role's material for a deployment (the operator's one-time step).

        Clients and the aggregator get the :class:`CkksPublicContext` (parameters and
        public key: no secret). The result holder gets the :class:`CkksSecretContext`
        exported with ``protection``; without one it is exported with an explicit
        :class:`~privagg.NoProtection`, so write it only to a 0600 file (as
        ``fedtrain.flower.material.deal`` does) on the holder's machine.

        Args:
            layout: the update layout (validated against the options; keys do not
                depend on it).
            party_ids: the client parties (non-empty, unique).
            max_clients: the sessions' ``max_clients`` (validated before keygen).
            max_weight: the sessions' ``max_weight``.
            protection: how to export the holder's secret key (default: none, the
                file mode protects it).

        Returns:
            One blob per role.

        Raises:
            ConfigurationError: empty or repeated party ids, or bad session options.
        """
        if not party_ids or len(set(party_ids)) != len(party_ids):
            raise ConfigurationError("party_ids must be non-empty and unique")
        self.session_check(layout, max_clients=max_clients, max_weight=max_weight)
        secret = self.keygen()
        public = secret.public.to_bytes()
        # An explicit protection choice: NoProtection only when the caller gave none.
        holder = secret.to_bytes(protection=protection or NoProtection())
        return CkksMaterial(public, holder, dict.fromkeys(party_ids, public))

    def load_role(
        self,
        layout: Layout,
        role: str,
        party_id: str | None,
        material: bytes,
        *,
        max_clients: int,
        max_weight: float = 1.0,
        protection: Protection | None = None,
        rng: Rng | None = None,
    ) -> OneShotSession:
        """A session for one role, built from that role's material only.

        ``"aggregator"`` and ``"client"`` accept only a public context: given the
        holder's file they raise instead of loading the secret key. ``"holder"``
        needs the secret context.

        Args:
            layout: the update layout.
            role: ``"aggregator"``, ``"client"`` or ``"holder"``.
            party_id: the client's party id (required for ``"client"``).
            material: this role's blob from :meth:`deal`.
            max_clients: as given to :meth:`deal`.
            max_weight: as given to :meth:`deal`.
            protection: how the holder's secret was exported (default: none).
            rng: randomness for the holder's flooding noise (default: the OS).

        Returns:
            A session; only ``role``'s method is usable (the aggregator's and the
            clients' ``holder()`` raise :class:`~privagg.MissingKeyError`).

        Raises:
            ConfigurationError: an unknown role, or a client without a party id.
            DeserializationError: malformed material, or secret material given to the
                aggregator or a client.
            MissingKeyError: the holder was given public material.
            ParameterMismatchError: material for other CKKS parameters.
        """
        context: CkksPublicContext | CkksSecretContext
        if role in ("aggregator", "client"):
            if role == "client" and not party_id:
                raise ConfigurationError("a CKKS client role needs its party id")
            try:
                context = CkksPublicContext.from_bytes(material)
            except DeserializationError:
                raise DeserializationError(
                    f"the CKKS {role} material must be a public context "
                    "(parameters + public key only)"
                ) from None
        elif role == "holder":
            context = CkksSecretContext.from_bytes(
                material, protection=protection or NoProtection()
            )
        else:
            raise ConfigurationError(
                f"role must be aggregator, client or holder, got {role!r}"
            )
        return self.session(
            layout, context, max_clients=max_clients, max_weight=max_weight, rng=rng
        )

    def __repr__(self) -> str:
        return f"CkksBackend(preset={self.preset!r}, params={self.params!r})"
