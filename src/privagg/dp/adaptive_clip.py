"""Adaptive clipping (Andrew, Thakkar, McMahan, Ramaswamy, NeurIPS 2021).

The clip norm ``C`` tracks the ``gamma``-quantile of client update norms. Each round
every participating client reports ``b_i = 1[||Delta_i|| <= C] - 1/2`` (L2
sensitivity ``1/2`` under add/remove) next to its clipped update; the server
releases ``b~ = (sum_i b_i + N(0, sigma_b^2)) / m + 1/2`` (``m`` the expected number
of clients) and updates geometrically::

    C <- C * exp(-eta_C * (b~ - gamma))

Privacy: the round releases two Gaussian sums, the updates with noise multiplier
``z_Delta`` (sensitivity ``C``) and the bits with std ``sigma_b`` (sensitivity 1/2).
Together they are one Gaussian mechanism with noise multiplier ``z`` where
``z^-2 = z_Delta^-2 + (2 sigma_b)^-2`` (Andrew et al. 2021, Sec. 3.1). So to spend
exactly the budget of noise multiplier ``z``, the updates must use::

    z_Delta = (z^-2 - (2 sigma_b)^-2) ** -1/2          (requires 2 sigma_b > z)

:class:`AdaptiveClipper` does this calibration, the quantile estimate and the
update, and gives the :meth:`AdaptiveClipper.event` to account for each round.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from privagg._rng import Rng, SystemRng
from privagg.dp.events import Event, GaussianEvent, PoissonSampledEvent
from privagg.dp.noise import sample_gaussian
from privagg.errors import ConfigurationError

__all__ = ["AdaptiveClipper", "update_noise_multiplier"]


def update_noise_multiplier(
    noise_multiplier: float, clipped_count_stddev: float
) -> float:
    """Noise multiplier for the updates so that updates + bits cost ``noise_multiplier``.

    ``z_Delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)`` (Andrew et al. 2021).

    Args:
        noise_multiplier: the overall ``z`` accounted per round, ``> 0``.
        clipped_count_stddev: ``sigma_b``, the std of the noise on the clipped count.

    Returns:
        ``z_Delta >= z``.

    Raises:
        ConfigurationError: non-positive inputs or ``2 sigma_b <= z``.
    """
    z, sb = noise_multiplier, clipped_count_stddev
    for name, v in (("noise_multiplier", z), ("clipped_count_stddev", sb)):
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float))
            or not math.isfinite(v)
            or v <= 0
        ):
            raise ConfigurationError(f"{name} must be finite and > 0, got {v!r}")
    rest = z**-2 - (2.0 * sb) ** -2
    if rest <= 0:
        raise ConfigurationError(
            f"clipped_count_stddev must be > noise_multiplier / 2 = {z / 2:g}, got {sb!r}"
        )
    return float(rest**-0.5)


class AdaptiveClipper:
    """Quantile-based adaptive clip norm with its privacy cost folded in.

    Args:
        initial_clip_norm: starting ``C``.
        target_quantile: ``gamma`` in ``(0, 1)``, e.g. 0.5.
        learning_rate: ``eta_C`` (the paper uses 0.2).
        noise_multiplier: the overall per-round ``z`` to account.
        clipped_count_stddev: ``sigma_b``; default ``expected_clients / 20`` as in the
            paper.
        expected_clients: ``m``, expected number of participants per round.
        rng: randomness for the clipped-count noise (default SystemRng).

    Raises:
        ConfigurationError: invalid parameters.
    """

    def __init__(
        self,
        *,
        initial_clip_norm: float,
        target_quantile: float = 0.5,
        learning_rate: float = 0.2,
        noise_multiplier: float,
        expected_clients: int,
        clipped_count_stddev: float | None = None,
        rng: Rng | None = None,
    ) -> None:
        if not (
            isinstance(initial_clip_norm, (int, float))
            and math.isfinite(initial_clip_norm)
            and initial_clip_norm > 0
        ):
            raise ConfigurationError(
                f"initial_clip_norm must be > 0, got {initial_clip_norm!r}"
            )
        if not (isinstance(target_quantile, (int, float)) and 0 < target_quantile < 1):
            raise ConfigurationError(
                f"target_quantile must be in (0, 1), got {target_quantile!r}"
            )
        if not (
            isinstance(learning_rate, (int, float))
            and math.isfinite(learning_rate)
            and learning_rate > 0
        ):
            raise ConfigurationError(
                f"learning_rate must be > 0, got {learning_rate!r}"
            )
        if (
            isinstance(expected_clients, bool)
            or not isinstance(expected_clients, int)
            or expected_clients < 1
        ):
            raise ConfigurationError(
                f"expected_clients must be an integer >= 1, got {expected_clients!r}"
            )
        sb = (
            expected_clients / 20.0
            if clipped_count_stddev is None
            else clipped_count_stddev
        )
        self.update_noise_multiplier = update_noise_multiplier(noise_multiplier, sb)
        self.clip_norm = float(initial_clip_norm)
        self.target_quantile = float(target_quantile)
        self.learning_rate = float(learning_rate)
        self.noise_multiplier = float(noise_multiplier)
        self.clipped_count_stddev = float(sb)
        self.expected_clients = expected_clients
        self._rng = SystemRng() if rng is None else rng

    @property
    def update_noise_stddev(self) -> float:
        """Std of the Gaussian noise to add to the *sum* of clipped updates this round."""
        return self.update_noise_multiplier * self.clip_norm

    def clipped_bit(self, update_norm: float) -> float:
        """A client's report ``1[norm <= C] - 1/2`` for the current ``C``."""
        return (1.0 if update_norm <= self.clip_norm else 0.0) - 0.5

    def noisy_quantile_estimate(self, bits: Sequence[float] | npt.ArrayLike) -> float:
        """Release ``b~ = (sum b_i + N(0, sigma_b^2)) / m + 1/2`` (the DP part)."""
        arr = np.asarray(bits, dtype=np.float64)
        if arr.size and not np.all(np.isin(arr, (-0.5, 0.5))):
            raise ConfigurationError("bits must each be -0.5 or +0.5 (use clipped_bit)")
        noise = float(sample_gaussian(self.clipped_count_stddev, 1, rng=self._rng)[0])
        return (float(arr.sum()) + noise) / self.expected_clients + 0.5

    def update(self, bits: Sequence[float] | npt.ArrayLike) -> float:
        """Geometric step ``C <- C * exp(-eta (b~ - gamma))``; returns the new ``C``.

        Args:
            bits: the clients' :meth:`clipped_bit` reports for this round (computed
                with the ``C`` used this round).

        Returns:
            The new clip norm.
        """
        est = self.noisy_quantile_estimate(bits)
        self.clip_norm *= math.exp(-self.learning_rate * (est - self.target_quantile))
        return self.clip_norm

    def event(self, sampling_probability: float | None = None) -> Event:
        """The per-round event: Gaussian(z), Poisson-sampled if clients are sampled.

        Args:
            sampling_probability: client sampling rate, or None for full
                participation (no amplification).

        Returns:
            The event to compose once per round.
        """
        inner = GaussianEvent(self.noise_multiplier)
        if sampling_probability is None:
            return inner
        return PoissonSampledEvent(sampling_probability, inner)
