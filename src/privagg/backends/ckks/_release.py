"""Bounds on counts and values, flooding noise and the release rounding."""

from __future__ import annotations

import math

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
            "(IND-CPA-D); use privagg.hazmat.ckks.raw_decrypt for key-holder-only use"
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
