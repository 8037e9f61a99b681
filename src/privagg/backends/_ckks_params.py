"""CKKS parameter sets for aggregation: presets, validation and the error bound.

Aggregation only adds ciphertexts, so the modulus chain holds *data* primes and at
most one special prime (no multiplications, no rescaling, no key switching). The
128-bit limits are the Homomorphic Encryption Standard table (classical, ternary
secret), the same table SEAL enforces with ``sec_level_type.tc128``:

=======  ===========================
N        max total modulus bits
=======  ===========================
2048     54
4096     109
8192     218
16384    438
32768    881
=======  ===========================

Everything here is pure Python (no TenSEAL), so the options of a backend are
validated, and its error bound computed, before any key exists.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, replace

from privagg.errors import ConfigurationError

__all__ = [
    "GAUSSIAN_TAIL",
    "HE_STANDARD_MAX_BITS",
    "PRESETS",
    "TAIL_SIGMAS",
    "CkksParams",
]

#: Homomorphic Encryption Standard (2018), Table 1, 128-bit classical security.
HE_STANDARD_MAX_BITS: dict[int, int] = {
    2048: 54,
    4096: 109,
    8192: 218,
    16384: 438,
    32768: 881,
}

#: Tail factor of the error bound: a sub-Gaussian error exceeds 10 standard
#: deviations with probability <= 2 exp(-50) < 2**-71 per value; a union bound over
#: 2**27 values (more than 1e8) leaves a failure probability below 2**-44 per sum.
TAIL_SIGMAS = 10.0

#: Largest |z| the flooding sampler can output: Box-Muller on 53-bit uniforms gives
#: ``sqrt(-2 ln 2**-53) = sqrt(106 ln 2)`` ~ 8.57.
GAUSSIAN_TAIL = math.sqrt(106.0 * math.log(2.0))

# SEAL 4.x samples errors from a centred binomial distribution of variance 21/2 and
# secrets (and the encryption mask u) uniformly from {-1, 0, 1} (variance 2/3).
_ERR_VAR = 10.5
_TERNARY_VAR = 2.0 / 3.0
_MIN_PRIME_BITS = 20
_MAX_PRIME_BITS = 60
_MIN_SCALE_BITS = 20
_FLOAT_EPS = 2.0**-52


@dataclass(frozen=True)
class CkksParams:
    """One CKKS parameter set for additive aggregation.

    Attributes:
        poly_modulus_degree: ring dimension N; a ciphertext carries N real values
            (N/2 complex slots, real and imaginary parts both used).
        data_bits: bit sizes of the primes a ciphertext lives under.
        special_bits: bit size of the special prime (key level only; encryption
            happens there and is scaled down, which divides the encryption noise), or
            None for a single-level chain (then ``data_bits`` must be one prime).
        scale_bits: log2 of the CKKS scale Delta.
        value_bound: largest |value| a client may contribute, before weighting.
        flood_bits: before decrypting an aggregate, the holder adds integer
            (rounded Gaussian) noise of standard deviation ``2**flood_bits`` times
            the coefficient-domain decryption-noise deviation to its coefficients
            (IND-CPA-D mitigation, Li-Micciancio 2021); None disables flooding
            (unsafe to release).
    """

    poly_modulus_degree: int
    data_bits: tuple[int, ...]
    special_bits: int | None
    scale_bits: int
    value_bound: float
    flood_bits: int | None

    def __post_init__(self) -> None:
        n = self.poly_modulus_degree
        if (
            isinstance(n, bool)
            or not isinstance(n, int)
            or n not in HE_STANDARD_MAX_BITS
        ):
            raise ConfigurationError(
                f"poly_modulus_degree must be one of {sorted(HE_STANDARD_MAX_BITS)}, "
                f"got {n!r}"
            )
        if not isinstance(self.data_bits, tuple) or not self.data_bits:
            raise ConfigurationError(
                f"data_bits must be a non-empty tuple of ints, got {self.data_bits!r}"
            )
        primes = list(self.data_bits)
        if self.special_bits is not None:
            primes.append(self.special_bits)
        elif len(self.data_bits) != 1:
            raise ConfigurationError(
                "several data primes need a special prime (special_bits), got "
                f"data_bits={self.data_bits!r}, special_bits=None"
            )
        for b in primes:
            if isinstance(b, bool) or not isinstance(b, int):
                raise ConfigurationError(f"prime sizes must be ints, got {b!r}")
            if not _MIN_PRIME_BITS <= b <= _MAX_PRIME_BITS:
                raise ConfigurationError(
                    f"prime sizes must be in [{_MIN_PRIME_BITS}, {_MAX_PRIME_BITS}] "
                    f"bits, got {b}"
                )
        total = sum(primes)
        limit = HE_STANDARD_MAX_BITS[n]
        if total > limit:
            raise ConfigurationError(
                f"total coefficient modulus of {total} bits exceeds the 128-bit "
                f"security limit of {limit} bits for poly_modulus_degree={n} "
                "(Homomorphic Encryption Standard)"
            )
        sb = self.scale_bits
        if isinstance(sb, bool) or not isinstance(sb, int):
            raise ConfigurationError(f"scale_bits must be an int, got {sb!r}")
        vb = self.value_bound
        if isinstance(vb, bool) or not isinstance(vb, (int, float)):
            raise ConfigurationError(f"value_bound must be a number, got {vb!r}")
        if not (math.isfinite(vb) and vb > 0):
            raise ConfigurationError(f"value_bound must be finite and > 0, got {vb!r}")
        fb = self.flood_bits
        if fb is not None and (
            isinstance(fb, bool) or not isinstance(fb, int) or not 0 <= fb <= 60
        ):
            raise ConfigurationError(
                f"flood_bits must be None or an int in [0, 60], got {fb!r}"
            )
        if sb < _MIN_SCALE_BITS:
            raise ConfigurationError(
                f"scale_bits must be >= {_MIN_SCALE_BITS}, got {sb}"
            )
        if sb > self.data_total_bits - 4:
            # SEAL itself refuses scales within a bit of the modulus ("scale out of
            # bounds"); ask for room for the sign, one unit and a spare bit.
            raise ConfigurationError(
                f"scale_bits={sb} leaves no room under the {self.data_total_bits}-bit "
                f"data modulus: it must be <= {self.data_total_bits - 4}"
            )
        # One client of weight 1 must fit: the sharper check runs in setup().
        self.check_headroom(float(vb))

    # -- derived -----------------------------------------------------------------------
    @property
    def data_total_bits(self) -> int:
        """Bits of the modulus the ciphertexts live under (sum of data primes)."""
        return sum(self.data_bits)

    @property
    def total_bits(self) -> int:
        """Bits of the whole coefficient modulus (data primes + special prime)."""
        return self.data_total_bits + (self.special_bits or 0)

    @property
    def coeff_mod_bit_sizes(self) -> list[int]:
        """The prime sizes in SEAL order (special prime last)."""
        out = list(self.data_bits)
        if self.special_bits is not None:
            out.append(self.special_bits)
        return out

    @property
    def values_per_ciphertext(self) -> int:
        """Real values packed in one ciphertext: N (real and imaginary slot parts)."""
        return self.poly_modulus_degree

    @property
    def scale(self) -> float:
        """The CKKS scale Delta = 2**scale_bits."""
        return float(2.0**self.scale_bits)

    def max_sum(self, magnitude: float, n_contributions: int = 1) -> bool:
        """True when a slot sum of this magnitude decodes without wrapping.

        A slot z = a + ib with |a|, |b| <= M gives coefficients of magnitude at most
        sqrt(2) M Delta; they plus ``TAIL_SIGMAS`` deviations of noise and flooding
        (``n_contributions`` contributions) must stay below Q/2 with two spare bits.
        """
        if not self.flood_exact(n_contributions):
            return False
        coeff = math.sqrt(2.0) * max(magnitude, 0.0) * self.scale
        coeff += TAIL_SIGMAS * math.hypot(
            self.coeff_noise_std(n_contributions),
            self.flood_coeff_std(n_contributions),
        )
        return math.log2(max(coeff, 1.0)) <= self.data_total_bits - 3

    def flood_exact(self, n_contributions: int) -> bool:
        """True when the flooding noise can be sampled exactly in float64/int64.

        The sampler's normals are bounded by ``GAUSSIAN_TAIL`` (Box-Muller on 53-bit
        uniforms); ``GAUSSIAN_TAIL * sigma`` must stay below 2**52 so every integer
        draw is exact. Beyond 2**53 a float64 is a multiple of 2 and the flooding
        would be even, revealing the low bit of the decryption noise.
        """
        return GAUSSIAN_TAIL * self.flood_coeff_std(n_contributions) < 2.0**52

    def check_headroom(self, magnitude: float, n_contributions: int = 1) -> None:
        """Raise ConfigurationError unless sums up to ``magnitude`` fit the modulus."""
        if not self.flood_exact(n_contributions):
            raise ConfigurationError(
                f"CKKS flooding for {n_contributions} contributions would need noise "
                f"of std {self.flood_coeff_std(n_contributions):.3g} per coefficient, "
                "beyond exact float64 sampling (2**52 / GAUSSIAN_TAIL); lower "
                "max_clients or flood_bits"
            )
        if not self.max_sum(magnitude, n_contributions):
            room = self.data_total_bits - 3.5 - self.scale_bits
            raise ConfigurationError(
                f"CKKS sums up to {magnitude:.6g} do not fit: scale_bits="
                f"{self.scale_bits} with {self.data_total_bits} data-modulus bits "
                f"leaves room for |sum| <= 2**{room:.1f} (less the flooding noise); "
                "lower scale_bits, value_bound, max_clients, max_weight or flood_bits"
            )

    # -- error model ---------------------------------------------------------------------
    @property
    def slot_factor(self) -> float:
        """Slot std per unit of coefficient std: ``sqrt(N/2) / Delta``.

        The real (or imaginary) part of a slot is ``sum_k c_k cos(theta_k) / Delta``
        over the N coefficients; for independent coefficient errors of variance V its
        variance is ``N * V / 2 / Delta**2``.
        """
        return math.sqrt(self.poly_modulus_degree / 2.0) / self.scale

    def coeff_noise_std(self, n_contributions: int) -> float:
        """Std of one *coefficient* of the decryption error of a sum (integer units).

        Per contribution, the coefficient error variance is (SEAL public-key
        encryption ``c = u*pk + (e1 + m, e2)``, decryption ``c0 + c1*s``):
        ``V = N*var_e*2/3 (e*u) + N*var_e*2/3 (e2*s) + var_e (e1)``; with a special
        prime p the encryption happens one level up and is divided by p, leaving
        ``V/p**2 + (1 + N*2/3)/12`` (rounding of c0 and c1*s). Encoding adds 1/12
        (rounding of the scaled message to integers). n independent contributions add.
        """
        n = self.poly_modulus_degree
        fresh = 2.0 * n * _ERR_VAR * _TERNARY_VAR + _ERR_VAR
        if self.special_bits is not None:
            p = 2.0 ** (self.special_bits - 1)  # the prime is at least this large
            var = fresh / (p * p) + (1.0 + n * _TERNARY_VAR) / 12.0
        else:
            var = fresh
        var += 1.0 / 12.0
        return math.sqrt(max(n_contributions, 1) * var)

    def noise_std(self, n_contributions: int) -> float:
        """Std of one released *value* of a sum due to the RLWE decryption error."""
        return self.coeff_noise_std(n_contributions) * self.slot_factor

    def flood_coeff_std(self, n_contributions: int) -> float:
        """Std of the holder's integer flooding noise per coefficient (0.0: none).

        ``2**flood_bits * coeff_noise_std``: the flooding is added to the aggregate
        ciphertext in the coefficient domain, *before* SEAL decodes, so the float64
        decoding error is post-processing of an already flooded value.
        """
        if self.flood_bits is None:
            return 0.0
        return float(2.0**self.flood_bits) * self.coeff_noise_std(n_contributions)

    def flood_std(self, n_contributions: int) -> float:
        """Std of the flooding noise in one released value (0.0 when disabled)."""
        return self.flood_coeff_std(n_contributions) * self.slot_factor

    def release_grid(self, n_contributions: int) -> float:
        """Power-of-two grid the released sum is rounded to (<= the noise deviation)."""
        s = max(self.flood_std(n_contributions), self.noise_std(n_contributions))
        return float(2.0 ** math.floor(math.log2(s)))

    def tolerance(self, n_clients: int, max_abs: float) -> float:
        """Declared max abs error of a released sum of ``n_clients`` weighted values.

        ``TAIL_SIGMAS * sqrt(noise_std**2 + flood_std**2)`` (RLWE noise plus the
        coefficient-domain flooding, both sub-Gaussian, mapped to a slot by
        :attr:`slot_factor`) + half the release grid + a float64 term for SEAL's FFT
        encode/decode, ``2**-45 * n * max(max_abs, 1) + 4 * 2**-52``. The float64
        term matters for unflooded decryptions at large scales (at scale 2**75 the
        float64 encode/decode error, ~1e-16 per unit of magnitude, is far above the
        modelled RLWE noise); ``2**-45`` (~2.8e-14) per unit and client covers it
        with a wide margin.
        """
        n = max(int(n_clients), 1)
        sig = math.hypot(self.noise_std(n), self.flood_std(n))
        fp = 2.0**-45 * n * max(float(max_abs), 1.0) + 4 * _FLOAT_EPS
        return TAIL_SIGMAS * sig + 0.5 * self.release_grid(n) + fp

    # -- bytes -------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Canonical public encoding (part of every params_id)."""
        parts = [
            b"ckks-params/v1",
            struct.pack(">IB", self.poly_modulus_degree, len(self.data_bits)),
            bytes(self.data_bits),
            struct.pack(">B", self.special_bits or 0),
            struct.pack(">H", self.scale_bits),
            struct.pack(">d", float(self.value_bound)),
            struct.pack(">b", -1 if self.flood_bits is None else self.flood_bits),
        ]
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> CkksParams:
        """Decode :meth:`to_bytes`; raises ConfigurationError/struct.error on junk."""
        tag = b"ckks-params/v1"
        if not data.startswith(tag):
            raise ConfigurationError("not a CKKS parameter set")
        pos = len(tag)
        n, k = struct.unpack_from(">IB", data, pos)
        pos += 5
        bits = tuple(data[pos : pos + k])
        pos += k
        (special,) = struct.unpack_from(">B", data, pos)
        (scale_bits,) = struct.unpack_from(">H", data, pos + 1)
        (bound,) = struct.unpack_from(">d", data, pos + 3)
        (flood,) = struct.unpack_from(">b", data, pos + 11)
        if pos + 12 != len(data) or len(bits) != k:
            raise ConfigurationError("trailing or missing bytes in CKKS parameters")
        return cls(
            n, bits, special or None, scale_bits, bound, None if flood < 0 else flood
        )

    def with_options(self, **changes: object) -> CkksParams:
        """A copy with some fields replaced (validated again)."""
        return replace(self, **changes)  # type: ignore[arg-type]


#: Named parameter sets. ``secure`` is the default. The flooding std is
#: ``2**flood_bits`` times the *coefficient-domain* RLWE decryption-noise std
#: (:meth:`CkksParams.coeff_noise_std`), added before decoding.
PRESETS: dict[str, CkksParams] = {
    # N=4096, data primes (60, 29) + 20-bit special prime (109 <= 109 bits: the HE
    # Standard maximum), scale 2**75. 22.25 bytes/value. Coefficient noise ~15.1 per
    # contribution (the special prime leaves only the mod-switch rounding); flooding
    # 2**40 times that gives a released-value std of ~2.0e-8 per sqrt(contribution),
    # 10-client declared error 6.6e-7. Sums up to 2**10.5 fit (value_bound 16:
    # max_clients * max_weight <= 90). The fastest provably flooded set measured
    # end to end (docs/backends/ckks.md).
    "secure": CkksParams(4096, (60, 29), 20, 75, 16.0, 40),
    # N=8192, two 60-bit data primes + 20-bit special prime (140 <= 218 bits), scale
    # 2**80. 30 bytes/value, same flooding argument (coefficient noise ~21.3,
    # 10-client declared error 4.1e-8), sums up to 2**36.5 (value_bound 1024): for
    # large federations or large values.
    "secure-large": CkksParams(8192, (60, 60), 20, 80, 2.0**10, 40),
    # N=4096, one 60-bit prime (60 <= 109 bits). 15 bytes/value, fastest; no special
    # prime, flooding only doubles the noise: a heuristic IND-CPA-D mitigation, NOT
    # for releasing decryptions beyond the key holder.
    "compact": CkksParams(4096, (60,), None, 40, 16.0, 0),
    # Small and fast for tests: N=2048, one 54-bit prime (54 <= 54 bits). Heuristic.
    "test-fast": CkksParams(2048, (54,), None, 34, 16.0, 0),
}
