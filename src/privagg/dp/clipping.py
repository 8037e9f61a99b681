"""L2 clipping of client updates (flat and per-layer), pure numpy.

Clipping bounds each client's contribution, which is what turns added noise into a
DP guarantee: after :func:`clip_l2` with norm ``C`` the L2 sensitivity of a sum of
updates is ``C`` (add/remove one client). :func:`clip_per_layer` clips each named
array to its own budget ``C_l``; the whole update then has L2 norm at most
``sqrt(sum_l C_l^2)`` (:func:`per_layer_total_norm`), the sensitivity to account.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from privagg.errors import ConfigurationError

__all__ = [
    "clip_l2",
    "clip_per_layer",
    "global_l2_norm",
    "per_layer_total_norm",
    "split_budget",
]

FloatArray = npt.NDArray[np.float64]


def _check_clip(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"{name} must be finite and > 0, got {value!r}")
    return float(value)


def _as_float(name: str, x: npt.ArrayLike) -> FloatArray:
    arr = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ConfigurationError(f"{name} contains NaN or infinity")
    return arr


def global_l2_norm(update: Mapping[str, npt.ArrayLike] | npt.ArrayLike) -> float:
    """L2 norm of a flat vector or of all arrays of a dict taken together.

    Args:
        update: a vector, or a mapping of name to array.

    Returns:
        The L2 norm.
    """
    if isinstance(update, Mapping):
        return math.sqrt(
            sum(float(np.sum(np.square(_as_float(k, v)))) for k, v in update.items())
        )
    return float(np.linalg.norm(_as_float("vector", update).ravel()))


def clip_l2(vector: npt.ArrayLike, clip_norm: float) -> tuple[FloatArray, float]:
    """Scale ``vector`` so that its L2 norm is at most ``clip_norm``.

    ``clipped = vector * min(1, clip_norm / ||vector||)``.

    Args:
        vector: array of any shape (float-convertible, finite).
        clip_norm: the L2 bound ``C > 0``.

    Returns:
        ``(clipped, scale)`` where ``scale <= 1`` is the factor applied (``1.0`` when
        the vector was already within the bound; ``scale < 1`` means it was clipped).

    Raises:
        ConfigurationError: ``clip_norm`` not positive or the vector is not finite.
    """
    c = _check_clip("clip_norm", clip_norm)
    v = _as_float("vector", vector)
    norm = float(np.linalg.norm(v.ravel()))
    scale = 1.0 if norm <= c else c / norm
    out = v * scale if scale < 1.0 else v.copy()
    # guard against rounding pushing the norm a hair above C
    if scale < 1.0:
        after = float(np.linalg.norm(out.ravel()))
        if after > c:
            out = out * (c / after) * (1.0 - 2.0**-50)
    return out, scale


def clip_per_layer(
    update: Mapping[str, npt.ArrayLike],
    clip_norms: Mapping[str, float] | float,
) -> tuple[dict[str, FloatArray], dict[str, float]]:
    """Clip each named array to its own L2 budget.

    Args:
        update: mapping of layer name to array.
        clip_norms: per-layer budgets (same keys as ``update``), or one float applied
            to every layer.

    Returns:
        ``(clipped, scales)``: the clipped arrays and the factor applied per layer.

    Raises:
        ConfigurationError: missing/extra budget keys, non-positive budgets, or
            non-finite values.
    """
    if isinstance(clip_norms, Mapping):
        if set(clip_norms) != set(update):
            raise ConfigurationError(
                f"clip_norms keys {sorted(clip_norms)} must equal update keys {sorted(update)}"
            )
        budgets = {
            k: _check_clip(f"clip_norms[{k!r}]", v) for k, v in clip_norms.items()
        }
    else:
        c = _check_clip("clip_norms", clip_norms)
        budgets = dict.fromkeys(update, c)
    clipped: dict[str, FloatArray] = {}
    scales: dict[str, float] = {}
    for name, arr in update.items():
        clipped[name], scales[name] = clip_l2(arr, budgets[name])
    return clipped, scales


def per_layer_total_norm(clip_norms: Mapping[str, float]) -> float:
    """The overall L2 sensitivity ``sqrt(sum_l C_l^2)`` of per-layer clipping.

    Args:
        clip_norms: per-layer budgets.

    Returns:
        The bound on the L2 norm of a per-layer-clipped update.
    """
    return math.sqrt(
        sum(_check_clip(f"clip_norms[{k!r}]", v) ** 2 for k, v in clip_norms.items())
    )


def split_budget(
    total_clip_norm: float, sizes: Mapping[str, int], *, strategy: str = "equal"
) -> dict[str, float]:
    """Split an overall L2 budget ``C`` into per-layer budgets with ``sum C_l^2 = C^2``.

    Args:
        total_clip_norm: the overall budget ``C``.
        sizes: number of parameters per layer.
        strategy: ``"equal"`` (``C_l = C / sqrt(L)``) or ``"proportional"``
            (``C_l^2`` proportional to the layer size).

    Returns:
        Per-layer budgets.

    Raises:
        ConfigurationError: bad budget, sizes or strategy.
    """
    c = _check_clip("total_clip_norm", total_clip_norm)
    if not sizes:
        raise ConfigurationError("sizes must not be empty")
    for k, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigurationError(
                f"sizes[{k!r}] must be a positive integer, got {v!r}"
            )
    if strategy == "equal":
        return {k: c / math.sqrt(len(sizes)) for k in sizes}
    if strategy == "proportional":
        total = sum(sizes.values())
        return {k: c * math.sqrt(v / total) for k, v in sizes.items()}
    raise ConfigurationError(
        f"strategy must be 'equal' or 'proportional', got {strategy!r}"
    )
