"""Security review #11, finding 10b: a missing backend is refused, never replaced by plain."""

from __future__ import annotations

import warnings

import pytest

import privagg
from fedtrain.experiment import choose_backend
from privagg import registry


def test_available_backend_is_returned() -> None:
    assert choose_backend("additive") == "additive"


def test_missing_backend_is_refused_with_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # "ckks" as if TenSEAL were not installed: its module does not import
    monkeypatch.setitem(
        registry._BUILTIN,
        "ckks",
        ("privagg.backends._not_installed_for_test", "CkksBackend", "ckks"),
    )
    assert "ckks" not in privagg.available_backends()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "falling back" warning either
        with pytest.raises(privagg.UnsupportedError) as info:
            choose_backend("ckks")
    assert info.value.reason is privagg.UnsupportedReason.BACKEND_UNAVAILABLE
    assert "privagg[ckks]" in str(info.value)
    assert "plain" not in str(info.value)


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(privagg.ConfigurationError, match="unknown backend"):
        choose_backend("no-such-backend")
