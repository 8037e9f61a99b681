"""Bounds on counts and values, flooding noise and the release rounding."""

from __future__ import annotations

import math
from typing import NoReturn

import numpy as np
import numpy.typing as npt

from privagg._rng import Rng, uniform01
from privagg.backends._ckks_params import CkksParams
from privagg.errors import (
    ConfigurationError,
    EncodingOverflowError,
)
from privagg.layout import FloatVector


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


def _gaussian_rows(rng: Rng, rows: int, n: int) -> npt.NDArray[np.float64]:
    """``rows x n`` standard normal samples (``n`` even), row by row: each row is
    Box-Muller on its own ``n`` 53-bit uniforms (the first half radii, the second
    angles; both outputs used). Drawing ``a`` rows then ``b`` rows gives the same values
    as drawing ``a + b`` rows from the same stream, so the noise does not depend on how
    a release is cut into blocks."""
    half = n // 2
    u = uniform01(rng, rows * n).reshape(rows, n)
    radius = np.sqrt(-2.0 * np.log1p(-u[:, :half]))  # 1 - u in (0, 1]
    angle = 2.0 * math.pi * u[:, half:]
    out = np.empty((rows, n), dtype=np.float64)
    np.multiply(radius, np.cos(angle), out=out[:, :half])
    np.multiply(radius, np.sin(angle), out=out[:, half:])
    return out


class _FloodSampler:
    """The integer flooding noise of one release of a ``count``-sum over ``n_ct``
    ciphertexts, drawn block by block as the holder decrypts (issue #13: bounded
    temporaries, never all ``n_ct x N`` values at once).

    A rounded Gaussian of std ``params.flood_coeff_std(count)`` per coefficient,
    drawn from the injected ``rng`` (never numpy's or Python's generators), one 64-bit
    uniform per coefficient, in ciphertext order.

    Raises:
        ConfigurationError: ``flood_bits=None`` (an unflooded release is refused), or a
            std beyond exact float64 sampling.
    """

    __slots__ = ("_left", "_n", "_rng", "_sigma")

    def __init__(self, params: CkksParams, count: int, n_ct: int, rng: Rng) -> None:
        if params.flood_bits is None:
            raise ConfigurationError(
                "flood_bits=None: releasing an unflooded CKKS decryption is refused "
                "(IND-CPA-D); use privagg.hazmat.ckks.raw_decrypt for key-holder-only "
                "use"
            )
        sigma = params.flood_coeff_std(count)
        if sigma > 0 and n_ct > 0 and not params.flood_exact(count):
            raise ConfigurationError(
                f"CKKS flooding std {sigma:.3g} for {count} contributions is beyond "
                "exact float64 sampling; refuse rather than release with biased noise"
            )
        self._sigma = sigma if n_ct > 0 else 0.0
        self._n = params.poly_modulus_degree
        self._rng = rng
        self._left = n_ct

    def draw(self, n_ct: int) -> npt.NDArray[np.int64] | None:
        """The noise of the next ``n_ct`` ciphertexts, shape ``(n_ct, N)`` (None: no
        flooding at these parameters).

        Raises:
            ConfigurationError: more ciphertexts than the release has.
        """
        if n_ct > self._left:
            raise ConfigurationError("flooding noise drawn past the release's end")
        self._left -= n_ct
        if self._sigma <= 0:
            return None
        z = _gaussian_rows(self._rng, n_ct, self._n)
        np.multiply(z, self._sigma, out=z)
        return np.rint(z, out=z).astype(np.int64)

    def __repr__(self) -> str:
        return f"_FloodSampler(sigma={self._sigma:.3g}, left={self._left})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("a flooding stream is drawn in the holder's process only")


#: Flooding for a block-wise decryption: a stream drawn block by block (the holder's
#: process), the rows already drawn for this span (a pool worker), or none.
FloodSource = _FloodSampler | npt.NDArray[np.int64] | None


def _flood_rows(flood: FloodSource, a: int, b: int) -> npt.NDArray[np.int64] | None:
    """The flooding noise of ciphertexts ``a .. b - 1`` (drawn in order)."""
    if flood is None:
        return None
    if isinstance(flood, _FloodSampler):
        return flood.draw(b - a)
    return flood[a:b]


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
