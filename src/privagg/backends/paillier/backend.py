"""The Paillier backend: codecs of the one-shot roles, sessions and key handling."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NoReturn

import gmpy2
import numpy as np

from privagg._oneshot import OneShotSession
from privagg._rng import Rng, SystemRng
from privagg.backends._common import noise_descriptor
from privagg.backends.paillier._fastexp import (
    _fixed_base_for,
    _FixedBase,
    _gil_free,
    _parallel_map,
)
from privagg.backends.paillier._slots import MARGIN_BITS, SlotLayout
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
    width = params.public.ciphertext_bytes
    blob = b"".join(int(c).to_bytes(width, "big") for c in cts)
    return PayloadWriter().u8(_BODY_VERSION).u32(len(cts)).blob(blob).getvalue()


def _read_body(params: _Params, body: bytes) -> list[Any]:
    """Parse and range-check a body: ``n_ciphertexts`` integers in ``[1, n**2)``."""
    try:
        r = PayloadReader(body)
        if r.u8() != _BODY_VERSION:
            raise DeserializationError()
        count = r.u32()
        blob = r.blob_view()
        r.done()
        width = params.public.ciphertext_bytes
        if count != params.n_ciphertexts or len(blob) != count * width:
            raise DeserializationError()
        nn = params.public.n * params.public.n
        out = []
        for i in range(count):
            c = int.from_bytes(blob[i * width : (i + 1) * width], "big")
            if not 0 < c < nn:
                raise DeserializationError()
            out.append(gmpy2.mpz(c))
        return out
    except DeserializationError:
        raise
    except Exception:
        raise DeserializationError() from None


class _ClientCodec:
    """Client side: clip/check, weight, quantise, pack, encrypt. Public key only."""

    def __init__(self, params: _Params) -> None:
        self.params = params
        self._table: _FixedBase | None = None

    def _fixed_base(self) -> _FixedBase:
        if self._table is None:
            self._table = _fixed_base_for(self.params.public, self.params.workers)
        return self._table

    def encode(self, update: FloatVector, weight: float, rng: Rng) -> list[int]:
        """Everything before encryption: returns the packed plaintexts (mod n).

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
        if not np.isfinite(x).all():
            raise ConfigurationError("cannot encode NaN or infinite values")
        if p.clip:
            x = np.clip(x, -p.bound, p.bound)
        elif x.size and float(np.max(np.abs(x))) > p.bound:
            raise EncodingOverflowError(
                f"a value exceeds the bound {p.bound}; clip the update first or use clip=True"
            )
        # |w*x| <= max_weight*bound exactly, and float rounding is monotone, so the
        # weighted encoder (bound = max_weight*bound) never rejects it.
        ints = p.encoder.encode(w * x, rng).values
        if p.noise is not None:
            noise = np.asarray(
                p.noise.sample_encoded(x.size, scale=p.encoder.scale, rng=rng),
                dtype=np.int64,
            )
            ints = ints + noise
        n = p.public.n
        return [m % n for m in p.slots.pack(ints)]

    def encrypt(self, plaintexts: list[int], rng: Rng) -> list[Any]:
        """DJN-encrypt packed plaintexts; the exponents ``a`` come from ``rng``."""
        pk = self.params.public
        ebits = pk.exponent_bits
        ebytes = (ebits + 7) // 8
        raw = rng.random_bytes(ebytes * len(plaintexts))
        shift = 8 * ebytes - ebits
        exps = [
            int.from_bytes(raw[i * ebytes : (i + 1) * ebytes], "big") >> shift
            for i in range(len(plaintexts))
        ]
        n = gmpy2.mpz(pk.n)
        nn = n * n
        hs = gmpy2.mpz(pk.hs)
        use_table = len(plaintexts) >= _TABLE_MIN_CIPHERTEXTS or self._table is not None
        table = self._fixed_base() if use_table else None

        def enc(items: list[tuple[int, int]]) -> list[Any]:
            out = []
            with _gil_free():
                for m, a in items:
                    rn = table.pow(a) if table is not None else gmpy2.powmod(hs, a, nn)
                    out.append((1 + m * n) * rn % nn)
            return out

        return _parallel_map(
            enc, list(zip(plaintexts, exps, strict=True)), self.params.workers
        )

    def protect(self, update: FloatVector, weight: float, rng: Rng) -> bytes:
        """Encode then encrypt one weighted update (all checks happen before encryption)."""
        plaintexts = self.encode(update, weight, rng)
        return _write_body(self.params, self.encrypt(plaintexts, rng))

    def __repr__(self) -> str:
        return f"<Paillier client codec {self.params.public!r}>"


@dataclass(frozen=True, repr=False)
class _CombineCodec:
    """Aggregator side: multiply ciphertexts mod n**2. Public key only."""

    params: _Params

    def combine(self, bodies: Sequence[bytes]) -> bytes:
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
        acc = _read_body(p, bodies[0])
        nn = gmpy2.mpz(p.public.n) ** 2
        for b in bodies[1:]:
            cts = _read_body(p, b)
            acc = [x * y % nn for x, y in zip(acc, cts, strict=True)]
        n = gmpy2.mpz(p.public.n)
        if any(gmpy2.gcd(c, n) != 1 for c in acc):
            raise DeserializationError()
        return _write_body(p, acc)

    def __repr__(self) -> str:
        return f"<Paillier combine codec {self.params.public!r}>"


@dataclass(frozen=True, repr=False, eq=False)  # holds the secret key: no ==
class _RecoverCodec:
    """Holder side: CRT-decrypt, restore the offset, unpack, decode."""

    params: _Params
    secret_key: SecretKey[Any]

    def recover(self, body: bytes, n_contributions: int) -> FloatVector:
        """Decrypt the aggregate and return the float sum.

        Raises:
            EncodingOverflowError: more contributors than the headroom allows.
            DeserializationError: malformed body, or a plaintext outside the packed range
                (wrong key or tampered ciphertext; false accept <= 2**-64 per ciphertext).
        """
        p = self.params
        if not 1 <= n_contributions <= p.max_clients:
            raise EncodingOverflowError(
                f"{n_contributions} contributions; the slot headroom allows 1..{p.max_clients}"
            )
        cts = _read_body(p, body)
        n_mpz = gmpy2.mpz(p.public.n)
        if any(gmpy2.gcd(c, n_mpz) != 1 for c in cts):
            raise DeserializationError()
        material: _PrivateMaterial = self.secret_key.unsafe_material()
        plain = _parallel_map(material.decrypt_many, cts, p.workers)
        n, c = p.public.n, p.slots.offset_pattern
        try:
            sums = p.slots.unpack([(int(t) + c) % n for t in plain])
        except ValueError:
            raise DeserializationError() from None
        return p.encoder.decode_sum(sums, n_contributions)  # refuses a wrapped slot

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
    ) -> OneShotSession:
        """A session for one role from that role's material (see :meth:`deal`).

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
        return self.session(
            layout,
            self.load_public_key(material),
            secret,
            max_clients=max_clients,
            max_weight=max_weight,
        )

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
