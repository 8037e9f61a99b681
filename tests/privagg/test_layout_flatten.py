"""Layout.flatten: the copy=False view path and the one-pass finiteness check (#16)."""

from __future__ import annotations

import numpy as np
import pytest

from privagg.errors import ConfigurationError
from privagg.layout import Layout


def test_single_float64_tensor_is_a_read_only_view_without_copy() -> None:
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    layout = Layout.from_arrays({"w": x})
    v = layout.flatten({"w": x}, copy=False)
    assert np.shares_memory(v, x) and not v.flags.writeable
    assert v.tolist() == x.reshape(-1).tolist()
    assert x.flags.writeable  # the caller's array is untouched
    # the default still copies
    assert not np.shares_memory(layout.flatten({"w": x}), x)


def test_view_path_falls_back_to_a_copy() -> None:
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    strided = x.T  # not C-contiguous
    layout = Layout.from_arrays({"w": strided})
    v = layout.flatten({"w": strided}, copy=False)
    assert not np.shares_memory(v, x)
    assert v.tolist() == strided.reshape(-1).tolist()
    two = Layout.from_arrays({"a": x, "b": x})
    assert not np.shares_memory(two.flatten({"a": x, "b": x}, copy=False), x)


@pytest.mark.parametrize("copy", [True, False])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(copy: bool, bad: float) -> None:
    x = np.zeros(100)
    x[57] = bad
    layout = Layout.from_arrays({"w": x})
    with pytest.raises(ConfigurationError, match="NaN or infinite"):
        layout.flatten({"w": x}, copy=copy)


@pytest.mark.parametrize("copy", [True, False])
def test_finite_values_whose_sum_overflows_are_accepted(copy: bool) -> None:
    x = np.full(4, 1.5e308)  # finite, but their float64 sum is inf
    layout = Layout.from_arrays({"w": x})
    assert layout.flatten({"w": x}, copy=copy).tolist() == x.tolist()
