"""The plain reference backend: contract suite plus the foundation's acceptance checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import privagg
from privagg.backends.plain import PlainBackend
from tests.privagg.contract.backend_contract import BackendContract


class TestPlainContract(BackendContract):
    keyed = False
    max_clients = 6

    def make_backend(self) -> PlainBackend:
        return PlainBackend()

    def bound(self) -> float:
        return 1e6


@given(
    arrays=st.lists(
        hnp.arrays(np.float64, (4, 3), elements=st.floats(-1e9, 1e9, allow_nan=False)),
        min_size=1,
        max_size=8,
    )
)
def test_plain_equals_numpy_sum_to_1e_12(arrays: list[np.ndarray]) -> None:
    ups = [{"x": a, "y": a[0, 0].copy()} for a in arrays]
    out = privagg.secure_sum(ups, backend="plain")
    ref = np.sum(arrays, axis=0)
    scale = max(1.0, float(np.max(np.abs(arrays))))
    assert np.max(np.abs(out["x"] - ref)) <= 1e-12 * scale * len(arrays)
    assert out["y"].shape == ()


def test_plain_exact_on_unit_values() -> None:
    rng = np.random.default_rng(0)
    ups = [{"a": rng.normal(size=(10, 10)), "b": rng.normal(size=())} for _ in range(7)]
    w = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    out = privagg.secure_sum(ups, backend="plain", weights=w)
    ref = sum(wi * u["a"] for wi, u in zip(w, ups, strict=True))
    assert np.max(np.abs(out["a"] - ref)) <= 1e-12


def test_unknown_backend_is_configuration_error() -> None:
    with pytest.raises(privagg.ConfigurationError):
        privagg.secure_sum([{"a": np.zeros(2)}], backend="nope")


def test_non_float_and_empty_updates_rejected() -> None:
    with pytest.raises(privagg.ConfigurationError):
        privagg.secure_sum([{"a": np.zeros(2, dtype=np.int64)}], backend="plain")
    with pytest.raises(privagg.ConfigurationError):
        privagg.secure_sum([{}], backend="plain")
    with pytest.raises(privagg.ConfigurationError):
        privagg.secure_sum({"a": np.zeros(2)}, backend="plain")  # type: ignore[arg-type]


def test_isolate_failures_keeps_round_alive() -> None:
    be = privagg.get_backend("plain")
    layout = privagg.Layout.from_arrays({"a": np.zeros(3)})
    session = be.setup(layout, max_clients=3)
    ups = {
        "ok": {"a": np.ones(3)},
        "bad": {"a": np.array([1.0, np.nan, 0.0])},
        "ok2": {"a": np.ones(3)},
    }
    res = privagg.run_round(session, ups, isolate_failures=True)
    assert res.contributors == ("ok", "ok2")
    assert "bad" in res.failed and "ConfigurationError" in res.failed["bad"]
    np.testing.assert_array_equal(res.aggregate["a"], 2 * np.ones(3))
    with pytest.raises(privagg.ConfigurationError):
        privagg.run_round(session, ups)
