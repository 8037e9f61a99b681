"""The Paillier backend: codecs of the one-shot roles, sessions and key handling."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NoReturn

import gmpy2
import numpy as np
import numpy.typing as npt

from privagg._oneshot import OneShotSession
from privagg._rng import Rng, SystemRng
from privagg.backends._common import noise_descriptor
from privagg.backends.paillier._fastexp import (
    _fixed_base_for,
    _FixedBase,
    _gil_free,
    _parallel_blocks,
    _parallel_map,
)
from privagg.backends.paillier._slots import (
    _NUMPY_MAX_SLOT_BITS,
    MARGIN_BITS,
    SlotLayout,
)
from privagg.backends.paillier.keys import (
    _MIN_TEST_KEY_BITS,
    _SCHEME,
    KEY_SIZES,
    PaillierPublicKey,
    _keygen,
    _PrivateMaterial,
    load_secret_key,
)
from privagg.distribution import Dealing, DealtMaterial
from privagg.encoding import FixedPointEncoder, noise_headroom
from privagg.envelope import PayloadReader, PayloadWriter, Scheme
from privagg.errors import (
    ConfigurationError,
    DeserializationError,
    EncodingOverflowError,
    MissingKeyError,
)
from privagg.keys import NoProtection, SecretKey, fingerprint
from privagg.layout import FloatVector, Layout
from privagg.protocols import NoiseShare, check_setup_args

_BODY_VERSION = 1
_TABLE_MIN_CIPHERTEXTS = 32  # below this, plain powmod beats building a table
# Work is done block by block (issue #13): a block is about this many values (at least
# one plaintext), so each thread's temporaries stay a few hundred KB whatever the size.
_BLOCK_VALUES = 2048
_CHECK_VALUES = 1 << 13  # values per block of the elementwise checks and rounding
_EPS = 2.0**-52


# -- codecs -------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Params:
    """Public parameters shared by the three codecs."""

    public: PaillierPublicKey
    slots: SlotLayout
    encoder: FixedPointEncoder  # bound = value bound * max_weight (weighted values)
    bound: float
    clip: bool
    max_weight: float
    max_clients: int
    noise: NoiseShare | None
    workers: int

    @property
    def n_ciphertexts(self) -> int:
        return self.slots.n_plaintexts


def _write_body(params: _Params, cts: Sequence[Any]) -> bytes:
    """A body holding ``cts`` as given (any count). For tests and small bodies: the
    codecs write their ciphertexts straight into :func:`_body_buffer`."""
    width = params.public.ciphertext_bytes
    blob = b"".join(int(c).to_bytes(width, "big") for c in cts)
    return PayloadWriter().u8(_BODY_VERSION).u32(len(cts)).blob(blob).getvalue()


def _body_buffer(params: _Params) -> tuple[bytearray, memoryview]:
    """A body with room for ``n_ciphertexts`` ciphertexts, and a view of that room.

    Once the room is filled the buffer holds exactly ``_write_body(params, cts)``
    (``u8 version || u32 count || u64 length || ciphertexts``): the codecs write each
    ciphertext into place, with no list of ciphertexts and no joined copy (issue #13).
    """
    m, width = params.n_ciphertexts, params.public.ciphertext_bytes
    prefix = PayloadWriter().u8(_BODY_VERSION).u32(m).u64(m * width).getvalue()
    buf = bytearray(len(prefix) + m * width)
    buf[: len(prefix)] = prefix
    return buf, memoryview(buf)[len(prefix) :]


def _read_body(params: _Params, body: bytes | memoryview) -> memoryview:
    """Parse a body's header: a read-only view of its ``n_ciphertexts`` ciphertexts.

    The version, the count and the exact length are checked here; each ciphertext is
    range-checked by :func:`_ciphertext` when it is read, before it is used. The view is
    of immutable ``bytes`` (a body over any other buffer is copied first), so what was
    checked cannot change afterwards.
    """
    try:
        view = memoryview(body)
        if not isinstance(view.obj, bytes):
            view = memoryview(bytes(view))
        r = PayloadReader(view)
        if r.u8() != _BODY_VERSION:
            raise DeserializationError()
        count = r.u32()
        blob = r.blob_view()
        r.done()
        width = params.public.ciphertext_bytes
        if count != params.n_ciphertexts or len(blob) != count * width:
            raise DeserializationError()
        return blob.toreadonly()
    except DeserializationError:
        raise
    except Exception:
        raise DeserializationError() from None


def _ciphertext(blob: memoryview, i: int, width: int, nn: Any) -> Any:
    """Ciphertext ``i`` of a checked body view as an mpz, range-checked: in ``[1, n**2)``.

    Raises:
        DeserializationError: out of range.
    """
    c = gmpy2.mpz(int.from_bytes(blob[i * width : (i + 1) * width], "big"))
    if not 0 < c < nn:
        raise DeserializationError()
    return c


class _ClientCodec:
    """Client side: clip/check, weight, quantise, pack, encrypt. Public key only."""

    def __init__(self, params: _Params) -> None:
        self.params = params
        self._table: _FixedBase | None = None

    def prepare(self) -> None:
        """Build the per-key fixed-base table now when encryption will use it (at least
        32 ciphertexts a vector), instead of on the first :meth:`protect`."""
        if self.params.n_ciphertexts >= _TABLE_MIN_CIPHERTEXTS:
            self._fixed_base()

    def _fixed_base(self) -> _FixedBase:
        if self._table is None:
            self._table = _fixed_base_for(self.params.public, self.params.workers)
        return self._table

    def quantise(
        self, update: FloatVector, weight: float, rng: Rng
    ) -> npt.NDArray[np.int64]:
        """Everything before packing: the weighted, rounded (and noised) int64 values.

        Checked and rounded block by block (no full-size float temporaries); the
        rounding draws from ``rng`` in value order, exactly as one call over the whole
        vector would, then the noise (whole vector), as before.

        Raises:
            ConfigurationError: NaN/Inf values or a negative/non-finite weight.
            EncodingOverflowError: a value beyond the bound (without ``clip``), a weight
                beyond ``max_weight``, or a (noisy) value that does not fit its slot.
        """
        p = self.params
        w = float(weight)
        if not math.isfinite(w) or w < 0:
            raise ConfigurationError(f"weight must be finite and >= 0, got {weight!r}")
        if w > p.max_weight:
            raise EncodingOverflowError(
                f"weight {w} exceeds the session's max_weight {p.max_weight}; nothing was encrypted"
            )
        x = np.asarray(update, dtype=np.float64).reshape(-1)
        if x.size != p.slots.n_values:
            raise ConfigurationError(
                f"expected {p.slots.n_values} values, got {x.size}"
            )
        step = _CHECK_VALUES
        for a in range(0, x.size, step):
            if not np.isfinite(x[a : a + step]).all():
                raise ConfigurationError("cannot encode NaN or infinite values")
        if not p.clip:
            for a in range(0, x.size, step):
                if float(np.max(np.abs(x[a : a + step]))) > p.bound:
                    raise EncodingOverflowError(
                        f"a value exceeds the bound {p.bound}; clip the update first or use clip=True"
                    )
        ints = np.empty(x.size, dtype=np.int64)
        for a in range(0, x.size, step):
            block = x[a : a + step]
            if p.clip:
                block = np.clip(block, -p.bound, p.bound)
            # |w*x| <= max_weight*bound exactly, and float rounding is monotone, so the
            # weighted encoder (bound = max_weight*bound) never rejects it.
            ints[a : a + step] = p.encoder.encode(w * block, rng).values
        if p.noise is not None:
            ints += np.asarray(
                p.noise.sample_encoded(x.size, scale=p.encoder.scale, rng=rng),
                dtype=np.int64,
            )
        p.slots.check_values(ints)
        return ints

    def encode(self, update: FloatVector, weight: float, rng: Rng) -> list[int]:
        """The packed plaintexts (mod n) of :meth:`quantise`, as a list (tests, small
        vectors; :meth:`protect` packs block by block instead)."""
        n = self.params.public.n
        ints = self.quantise(update, weight, rng)
        pts = self.params.slots.pack_block(ints, 0, self.params.n_ciphertexts)
        return [m % n for m in pts]

    def _encryptor(self, count: int, rng: Rng) -> Callable[[int, int], Any]:
        """``enc(i, m)``: DJN encryption of plaintext ``m`` (in ``[0, n)``) with the
        ``i``-th of ``count`` exponents, all drawn from ``rng`` now (in index order)."""
        pk = self.params.public
        ebits = pk.exponent_bits
        ebytes = (ebits + 7) // 8
        raw = rng.random_bytes(ebytes * count)
        shift = 8 * ebytes - ebits
        n = gmpy2.mpz(pk.n)
        nn = n * n
        hs = gmpy2.mpz(pk.hs)
        use_table = count >= _TABLE_MIN_CIPHERTEXTS or self._table is not None
        table = self._fixed_base() if use_table else None

        def enc(i: int, m: int) -> Any:
            a = int.from_bytes(raw[i * ebytes : (i + 1) * ebytes], "big") >> shift
            rn = table.pow(a) if table is not None else gmpy2.powmod(hs, a, nn)
            return (1 + m * n) * rn % nn

        return enc

    def encrypt(self, plaintexts: list[int], rng: Rng) -> list[Any]:
        """DJN-encrypt packed plaintexts; the exponents ``a`` come from ``rng`` (tests,
        small vectors: :meth:`protect` encrypts into its body block by block)."""
        enc = self._encryptor(len(plaintexts), rng)

        def run(items: list[tuple[int, int]]) -> list[Any]:
            with _gil_free():
                return [enc(i, m) for i, m in items]

        return _parallel_map(run, list(enumerate(plaintexts)), self.params.workers)

    def _encrypt_into(
        self, ints: npt.NDArray[np.int64], rng: Rng, room: memoryview
    ) -> None:
        """Pack, encrypt and write every ciphertext into ``room``, block by block."""
        p = self.params
        n, k = p.public.n, p.slots.slots
        width = p.public.ciphertext_bytes
        enc = self._encryptor(p.n_ciphertexts, rng)

        def run(a: int, b: int) -> None:
            pts = p.slots.pack_block(ints, a, b)
            with _gil_free():
                for i, m in enumerate(pts, a):
                    c = enc(i, m % n)
                    room[i * width : (i + 1) * width] = int(c).to_bytes(width, "big")

        _parallel_blocks(run, p.n_ciphertexts, _BLOCK_VALUES // k, p.workers)

    def protect(self, update: FloatVector, weight: float, rng: Rng) -> bytes:
        """Encode then encrypt one weighted update (all checks happen before encryption).

        Streamed (issue #13): each thread packs a block of plaintexts, encrypts them
        and writes each ciphertext straight into the preallocated body; no list of
        plaintexts or ciphertexts for the whole vector exists. The same ciphertexts as
        ``encrypt(encode(...))`` with the same ``rng``.
        """
        ints = self.quantise(update, weight, rng)
        buf, room = _body_buffer(self.params)
        self._encrypt_into(ints, rng, room)
        del ints  # not needed while the body is copied out
        room.release()
        return bytes(buf)

    def __repr__(self) -> str:
        return f"<Paillier client codec {self.params.public!r}>"


@dataclass(frozen=True, repr=False)
class _CombineCodec:
    """Aggregator side: multiply ciphertexts mod n**2. Public key only."""

    params: _Params

    def combine(self, bodies: Sequence[bytes | memoryview]) -> bytes:
        """Product of the contributions, position by position.

        Raises:
            EncodingOverflowError: more contributions than the slot headroom allows.
            DeserializationError: a malformed body, a ciphertext outside ``[1, n**2)``,
                or one sharing a factor with ``n`` (checked on the product: ``p`` divides
                the product mod ``n**2`` iff it divides one factor).
        """
        p = self.params
        if len(bodies) > p.max_clients:
            raise EncodingOverflowError(
                f"{len(bodies)} contributions exceed the slot headroom for {p.max_clients}"
            )
        if not bodies:
            raise DeserializationError()
        blobs = [_read_body(p, b) for b in bodies]  # every header before any work
        n = gmpy2.mpz(p.public.n)
        nn = n * n
        width = p.public.ciphertext_bytes
        buf, room = _body_buffer(p)

        def run(a: int, b: int) -> None:
            # block by block, from views of the received bytes, into the output body
            with _gil_free():
                for i in range(a, b):
                    acc = _ciphertext(blobs[0], i, width, nn)
                    for blob in blobs[1:]:
                        acc = acc * _ciphertext(blob, i, width, nn) % nn
                    if gmpy2.gcd(acc, n) != 1:
                        raise DeserializationError()
                    room[i * width : (i + 1) * width] = int(acc).to_bytes(width, "big")

        _parallel_blocks(
            run, p.n_ciphertexts, _BLOCK_VALUES // p.slots.slots, p.workers
        )
        room.release()
        return bytes(buf)

    def __repr__(self) -> str:
        return f"<Paillier combine codec {self.params.public!r}>"


@dataclass(frozen=True, repr=False, eq=False)  # holds the secret key: no ==
class _RecoverCodec:
    """Holder side: CRT-decrypt, restore the offset, unpack, decode."""

    params: _Params
    secret_key: SecretKey[Any]

    def recover(self, body: bytes | memoryview, n_contributions: int) -> FloatVector:
        """Decrypt the aggregate and return the float sum.

        Raises:
            EncodingOverflowError: more contributors than the headroom allows, or a
                slot sum beyond what ``n_contributions`` contributions can sum to.
            DeserializationError: malformed body, or a plaintext outside the packed range
                (wrong key or tampered ciphertext; false accept <= 2**-64 per ciphertext).

        Either way nothing is returned: the sums are written block by block into
        arrays of this call only.
        """
        p = self.params
        if not 1 <= n_contributions <= p.max_clients:
            raise EncodingOverflowError(
                f"{n_contributions} contributions; the slot headroom allows 1..{p.max_clients}"
            )
        blob = _read_body(p, body)
        n = gmpy2.mpz(p.public.n)
        nn = n * n
        width, m, k = p.public.ciphertext_bytes, p.n_ciphertexts, p.slots.slots
        block = _BLOCK_VALUES // k

        def check(a: int, b: int) -> None:
            with _gil_free():
                for i in range(a, b):
                    if gmpy2.gcd(_ciphertext(blob, i, width, nn), n) != 1:
                        raise DeserializationError()

        # every ciphertext is range-checked and a unit mod n before any is decrypted
        _parallel_blocks(check, m, 16 * block, p.workers)
        material: _PrivateMaterial = self.secret_key.unsafe_material()
        c = p.slots.offset_pattern
        if p.slots.slot_bits > _NUMPY_MAX_SLOT_BITS:
            # wide slots (> 62 bits): Python-int sums, the whole vector at once
            cts = [_ciphertext(blob, i, width, nn) for i in range(m)]
            plain = _parallel_map(material.decrypt_many, cts, p.workers)
            try:
                wide = p.slots.unpack([(int(t) + c) % p.public.n for t in plain])
            except ValueError:
                raise DeserializationError() from None
            return p.encoder.decode_sum(wide, n_contributions)
        sums = np.empty(p.slots.n_values, dtype=np.int64)

        def decrypt(a: int, b: int) -> None:
            cts = [_ciphertext(blob, i, width, nn) for i in range(a, b)]
            plain = material.decrypt_many(cts)
            try:
                p.slots.unpack_into([int((t + c) % n) for t in plain], a, sums)
            except ValueError:
                raise DeserializationError() from None

        # block by block into the preallocated sums: every range check first ...
        _parallel_blocks(decrypt, m, block, p.workers)
        out = np.empty(p.slots.n_values, dtype=np.float64)
        # ... then the overflow check and decoding (refuses a wrapped slot)
        for a in range(0, out.size, _CHECK_VALUES):
            out[a : a + _CHECK_VALUES] = p.encoder.decode_sum(
                sums[a : a + _CHECK_VALUES], n_contributions
            )
        return out

    def __repr__(self) -> str:
        return f"<Paillier recover codec {self.params.public!r}>"


def _no_holder() -> NoReturn:
    raise MissingKeyError(
        "this session has no Paillier secret key: only the result holder can recover"
    )


# -- backend ------------------------------------------------------------------------------
@dataclass
class PaillierBackend:
    """Packed Paillier secure summation (exact on the fixed-point grid).

    Args:
        key_bits: modulus size: 3072 (default, ~128-bit security, NIST SP 800-57) or
            2048 (~112-bit security, by explicit choice).
        bound: largest ``|x|`` a client may send before weighting (default 1.0).
        scale_bits: fixed-point fractional bits (resolution ``2**-scale_bits``, default 16).
        clip: clip values to ``[-bound, bound]`` instead of raising.
        workers: threads for encryption/decryption (default ``os.cpu_count()``).

    Raises:
        ConfigurationError: an invalid option (named in the message).
    """

    name: ClassVar[str] = "paillier"
    value_bound_option: ClassVar[str] = "bound"
    """The constructor option that sets :attr:`value_bound` (:class:`privagg.BoundOption`)."""
    key_bits: int = 3072
    bound: float = 1.0
    scale_bits: int = 16
    clip: bool = False
    workers: int | None = None
    _insecure_key_bits: int | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.key_bits, bool) or self.key_bits not in KEY_SIZES:
            raise ConfigurationError(
                f"key_bits must be one of {KEY_SIZES}, got {self.key_bits!r}"
            )
        if (
            isinstance(self.bound, bool)
            or not isinstance(self.bound, (int, float))
            or not (math.isfinite(self.bound) and self.bound > 0)
        ):
            raise ConfigurationError(
                f"bound must be a finite number > 0, got {self.bound!r}"
            )
        if isinstance(self.scale_bits, bool) or not isinstance(self.scale_bits, int):
            raise ConfigurationError(
                f"scale_bits must be an int, got {self.scale_bits!r}"
            )
        FixedPointEncoder(float(self.bound), self.scale_bits)  # validates scale_bits
        if not isinstance(self.clip, bool):
            raise ConfigurationError(f"clip must be a bool, got {self.clip!r}")
        if self.workers is not None and (
            isinstance(self.workers, bool)
            or not isinstance(self.workers, int)
            or self.workers < 1
        ):
            raise ConfigurationError(
                f"workers must be an int >= 1 or None, got {self.workers!r}"
            )
        self.bound = float(self.bound)

    @classmethod
    def _insecure_for_tests(
        cls, key_bits: int = 512, **options: Any
    ) -> PaillierBackend:
        """HAZMAT, tests only: a backend with a tiny, **insecure** modulus for speed."""
        if (
            not isinstance(key_bits, int)
            or key_bits < _MIN_TEST_KEY_BITS
            or key_bits % 2
        ):
            raise ConfigurationError(
                f"test key_bits must be an even int >= {_MIN_TEST_KEY_BITS}"
            )
        be = cls(**options)
        be._insecure_key_bits = key_bits
        return be

    @property
    def effective_key_bits(self) -> int:
        """Bits of the modulus this backend generates."""
        return self._insecure_key_bits or self.key_bits

    @property
    def n_workers(self) -> int:
        """Threads used for encryption and decryption."""
        return self.workers or os.cpu_count() or 1

    @property
    def value_bound(self) -> float:
        """Largest ``|x|`` per coordinate before weighting."""
        return self.bound

    @property
    def fixed_point_scale(self) -> float:
        """``2**scale_bits``: integer units per 1.0 (see :class:`privagg.FixedPointBackend`)."""
        return float(2**self.scale_bits)

    def tolerance(self, *, n_clients: int, max_abs: float) -> float:
        """Max abs error of a recovered sum of ``n_clients`` (weighted) values.

        Each contribution is rounded stochastically to the grid ``2**-scale_bits``, an
        error strictly below one unit; the integer sum is exact (no carries, no modular
        wrap). Added: float64 rounding of the weight product and of the final division,
        ``4 * n_clients * max_abs * 2**-52``. So ``n*2**-s + 4*n*max_abs*2**-52``.
        """
        return (
            n_clients * 2.0**-self.scale_bits
            + 4.0 * n_clients * max(max_abs, 0.0) * _EPS
        )

    # -- keys and sessions ------------------------------------------------------------------
    def keygen(
        self, rng: Rng | None = None
    ) -> tuple[PaillierPublicKey, SecretKey[Any]]:
        """A fresh key pair for the result holder (primes drawn from ``rng``)."""
        return _keygen(self.effective_key_bits, rng or SystemRng())

    def load_public_key(
        self, data: bytes, *, expected_fingerprint: bytes | None = None
    ) -> PaillierPublicKey:
        """Decode a public key of this backend's size (:attr:`effective_key_bits`).

        The size and ``expected_fingerprint`` are checked before any big-integer work
        (see :meth:`PaillierPublicKey.from_bytes`).

        Raises:
            DeserializationError: malformed bytes.
            ParameterMismatchError: another size, or not the trusted key.
        """
        return PaillierPublicKey.from_bytes(
            data,
            expected_fingerprint=expected_fingerprint,
            key_bits=self.effective_key_bits,
        )

    def session(
        self,
        layout: Layout,
        public_key: PaillierPublicKey,
        secret_key: SecretKey[Any] | None = None,
        *,
        max_clients: int,
        max_weight: float = 1.0,
        noise: NoiseShare | None = None,
    ) -> OneShotSession:
        """A session from existing keys (a party without ``secret_key`` cannot recover).

        Every party must use the same options, layout, ``max_clients``, ``max_weight``
        and noise: all of them enter ``params_id``.

        Raises:
            ConfigurationError: bad ``max_clients``/``max_weight`` or mismatched keys.
            EncodingOverflowError: one slot does not fit the plaintext.
        """
        if not isinstance(public_key, PaillierPublicKey):
            raise ConfigurationError("public_key must be a PaillierPublicKey")
        if public_key.key_bits != self.effective_key_bits:
            raise ConfigurationError(
                f"public key has {public_key.key_bits} bits, backend uses {self.effective_key_bits}"
            )
        if secret_key is not None and (
            not isinstance(secret_key, SecretKey)
            or secret_key.scheme != _SCHEME
            or secret_key.public_fingerprint != public_key.fingerprint
        ):
            raise ConfigurationError("secret_key does not belong to public_key")
        slots = self.session_check(
            layout, max_clients=max_clients, max_weight=max_weight, noise=noise
        )
        slot_bits = slots.slot_bits
        max_weight = float(max_weight)
        extra = noise_headroom(noise, max_clients, dim=layout.size)
        params = _Params(
            public=public_key,
            slots=slots,
            encoder=FixedPointEncoder(
                self.bound * max_weight, self.scale_bits, noise_allowance=extra
            ),
            bound=self.bound,
            clip=self.clip,
            max_weight=max_weight,
            max_clients=max_clients,
            noise=noise,
            workers=self.n_workers,
        )
        encoding = (
            PayloadWriter()
            .u32(self.scale_bits)
            .f64(self.bound)
            .int_big(max_clients)
            .f64(max_weight)
            .u32(slot_bits)
            .u32(slots.slots)
            .u32(MARGIN_BITS)
            .f64(extra)
            .u8(int(self.clip))
            .blob(noise_descriptor(noise))
            .getvalue()
        )
        # v2: the public key is (n, h) (h_s derived), and the noise share's type and
        # scale are bound too, not only its headroom.
        params_id = fingerprint(
            b"paillier/v2", public_key.to_bytes(), encoding, layout.fingerprint
        )
        recover: Callable[[], Any]
        if secret_key is None:
            recover = _no_holder
        else:
            codec = _RecoverCodec(params, secret_key)

            def recover() -> _RecoverCodec:
                return codec

        return OneShotSession(
            "paillier",
            Scheme.PAILLIER,
            layout,
            params_id,
            _ClientCodec(params),
            _CombineCodec(params),
            recover,
            max_weight=max_weight,
        )

    def setup(
        self,
        layout: Layout,
        *,
        max_clients: int,
        max_weight: float = 1.0,
        noise: NoiseShare | None = None,
        rng: Rng | None = None,
    ) -> OneShotSession:
        """Generate a key pair and a session (one process plays every role).

        Raises:
            ConfigurationError: bad ``max_clients`` or ``max_weight``.
            EncodingOverflowError: a slot for ``max_clients`` x ``max_weight`` x ``bound``
                (plus noise headroom) does not fit the plaintext.
        """
        if not isinstance(layout, Layout):
            raise ConfigurationError("layout must be a privagg.Layout")
        # validate the cheap things before generating a key
        self.session_check(
            layout, max_clients=max_clients, max_weight=max_weight, noise=noise
        )
        public, secret = self.keygen(rng)
        return self.session(
            layout,
            public,
            secret,
            max_clients=max_clients,
            max_weight=max_weight,
            noise=noise,
        )

    # -- deployment: one role per process -----------------------------------------------
    def dealing(self) -> Dealing:
        """``DEALER``: the holder's secret key must be made once and handed out."""
        return Dealing.DEALER

    def deal(
        self,
        layout: Layout,
        party_ids: Sequence[str],
        *,
        max_clients: int,
        max_weight: float = 1.0,
        rng: Rng | None = None,
    ) -> DealtMaterial:
        """Make every role's material for a deployment (the operator's one-time step).

        Clients and the aggregator get the public key; the holder gets
        ``len(public key) (u32, big-endian) || public key || secret key`` (the secret
        exported with an explicit :class:`~privagg.NoProtection`: write it only to a
        0600 file on the holder's machine).

        Raises:
            ConfigurationError: empty or repeated party ids, or bad session options.
        """
        if not party_ids or len(set(party_ids)) != len(party_ids):
            raise ConfigurationError("party_ids must be non-empty and unique")
        self.session_check(layout, max_clients=max_clients, max_weight=max_weight)
        public, secret = self.keygen(rng)
        pub = bytes(public.to_bytes())
        sk = bytes(secret.to_bytes(protection=NoProtection()))
        holder = len(pub).to_bytes(4, "big") + pub + sk
        return DealtMaterial(pub, holder, dict.fromkeys(party_ids, pub))

    def load_role(
        self,
        layout: Layout,
        role: str,
        party_id: str | None,
        material: bytes,
        *,
        max_clients: int,
        max_weight: float = 1.0,
        noise: NoiseShare | None = None,
    ) -> OneShotSession:
        """A session for one role from that role's material (see :meth:`deal`).

        ``noise`` is the clients' DP noise share, as for :meth:`setup`: every role must
        be given the same one (it sizes the slots and enters ``params_id``); only a
        client adds it.

        Raises:
            ConfigurationError: an unknown role, or a client without a party id.
            DeserializationError: malformed material.
            ParameterMismatchError: a public key of another size.
        """
        secret = None
        if role == "client" and not party_id:
            raise ConfigurationError("a Paillier client role needs its party id")
        if role == "holder":
            if len(material) < 4:
                raise DeserializationError()
            n = int.from_bytes(material[:4], "big")
            if len(material) < 4 + n:
                raise DeserializationError()
            material, secret = material[4 : 4 + n], load_secret_key(material[4 + n :])
        elif role not in ("aggregator", "client"):
            raise ConfigurationError(
                f"role must be aggregator, client or holder, got {role!r}"
            )
        session = self.session(
            layout,
            self.load_public_key(material),
            secret,
            max_clients=max_clients,
            max_weight=max_weight,
            noise=noise,
        )
        if role == "client":
            # the per-key fixed-base table (about 38 MB at 3072 bits, 17 MB at 2048,
            # whatever the vector size) is built once here, with the key, not inside
            # the first round: every round of this process reuses it
            codec = session.client_codec
            if isinstance(codec, _ClientCodec):
                codec.prepare()
        return session

    def session_check(
        self,
        layout: Layout,
        *,
        max_clients: int,
        max_weight: float = 1.0,
        noise: NoiseShare | None = None,
    ) -> SlotLayout:
        """The slot layout a session would use, without generating keys.

        Raises:
            ConfigurationError, EncodingOverflowError: as :meth:`session`.
        """
        max_clients, max_weight = check_setup_args(max_clients, max_weight)
        extra = noise_headroom(noise, max_clients, dim=layout.size)
        base = FixedPointEncoder(self.bound, self.scale_bits)
        slot_bits = base.sum_bits(
            max_clients, max_weight=float(max_weight), extra=extra
        )
        return SlotLayout.for_key(
            key_bits=self.effective_key_bits, slot_bits=slot_bits, n_values=layout.size
        )

    def __repr__(self) -> str:
        insecure = (
            f", INSECURE_TEST_KEY={self._insecure_key_bits}"
            if self._insecure_key_bits
            else ""
        )
        return (
            f"PaillierBackend(key_bits={self.key_bits}, bound={self.bound}, "
            f"scale_bits={self.scale_bits}, clip={self.clip}, workers={self.workers}{insecure})"
        )
