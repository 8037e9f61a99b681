from __future__ import annotations

import json

import pytest
from dp_accounting import dp_event as de

from privagg.dp import (
    EVENT_TYPES,
    ComposedEvent,
    DiscreteGaussianEvent,
    GaussianEvent,
    LaplaceEvent,
    PoissonSampledEvent,
    SampledWithoutReplacementEvent,
    SelfComposedEvent,
    SkellamEvent,
    event_from_dict,
    to_dp_accounting,
)
from privagg.errors import (
    ConfigurationError,
    DeserializationError,
    UnsupportedEventError,
)

ALL = [
    GaussianEvent(1.5),
    LaplaceEvent(2.0),
    PoissonSampledEvent(0.01, GaussianEvent(1.1)),
    SampledWithoutReplacementEvent(1000, 10, GaussianEvent(2.0)),
    ComposedEvent((GaussianEvent(1.0), LaplaceEvent(3.0))),
    SelfComposedEvent(PoissonSampledEvent(0.5, GaussianEvent(4.0)), 7),
    DiscreteGaussianEvent(10.0, 20.0, num_shares=5, dimension=100),
    DiscreteGaussianEvent(10.0, 20.0, num_shares=5, dimension=100, l1_sensitivity=30.0),
    SkellamEvent(100.0, 20.0, dimension=100),
]


@pytest.mark.parametrize("event", ALL, ids=lambda e: type(e).__name__)
def test_roundtrip_through_json(event: object) -> None:
    d = event.to_dict()  # type: ignore[attr-defined]
    assert d["type"] in EVENT_TYPES
    again = event_from_dict(json.loads(json.dumps(d)))
    assert again == event
    assert hash(again) == hash(event)


def test_events_are_frozen_and_slotted() -> None:
    e = GaussianEvent(1.0)
    with pytest.raises(AttributeError):
        e.noise_multiplier = 2.0  # type: ignore[misc]
    assert not hasattr(e, "__dict__")


def test_composed_accepts_list_and_stores_tuple() -> None:
    e = ComposedEvent([GaussianEvent(1.0)])  # type: ignore[arg-type]
    assert isinstance(e.events, tuple)


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: GaussianEvent(-1.0), "noise_multiplier"),
        (lambda: GaussianEvent(float("nan")), "noise_multiplier"),
        (lambda: PoissonSampledEvent(0.0, GaussianEvent(1.0)), "sampling_probability"),
        (lambda: PoissonSampledEvent(1.5, GaussianEvent(1.0)), "sampling_probability"),
        (
            lambda: SampledWithoutReplacementEvent(10, 11, GaussianEvent(1.0)),
            "sample_size",
        ),
        (lambda: SelfComposedEvent(GaussianEvent(1.0), 0), "count"),
        (lambda: DiscreteGaussianEvent(0.3, 1.0), "noise_stddev"),
        (lambda: SkellamEvent(-1.0, 1.0), "variance"),
        (lambda: PoissonSampledEvent(0.1, "gaussian"), "event"),
    ],
)
def test_validation_names_the_parameter(make: object, name: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        make()  # type: ignore[operator]


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "os.system", "noise_multiplier": 1.0},
        {"type": "gaussian"},
        {"type": "gaussian", "noise_multiplier": 1.0, "extra": 1},
        {"type": "gaussian", "noise_multiplier": "1.0"},
        {"type": "gaussian", "noise_multiplier": -1.0},
        {
            "type": "self_composed",
            "event": {"type": "gaussian", "noise_multiplier": 1.0},
            "count": 1.5,
        },
        {"noise_multiplier": 1.0},
        [1, 2],
    ],
)
def test_event_from_dict_rejects(bad: object) -> None:
    with pytest.raises(DeserializationError):
        event_from_dict(bad)  # type: ignore[arg-type]


def test_event_from_dict_rejects_deep_nesting() -> None:
    d: dict[str, object] = {"type": "gaussian", "noise_multiplier": 1.0}
    for _ in range(40):
        d = {"type": "self_composed", "event": d, "count": 1}
    with pytest.raises(DeserializationError):
        event_from_dict(d)


def test_to_dp_accounting() -> None:
    e = SelfComposedEvent(PoissonSampledEvent(0.01, GaussianEvent(1.1)), 5)
    assert to_dp_accounting(e) == de.SelfComposedDpEvent(
        de.PoissonSampledDpEvent(0.01, de.GaussianDpEvent(1.1)), 5
    )
    assert to_dp_accounting(
        SampledWithoutReplacementEvent(100, 5, GaussianEvent(1.0))
    ) == (de.SampledWithoutReplacementDpEvent(100, 5, de.GaussianDpEvent(1.0)))
    assert to_dp_accounting(ComposedEvent((LaplaceEvent(1.0),))) == de.ComposedDpEvent(
        [de.LaplaceDpEvent(1.0)]
    )
    with pytest.raises(UnsupportedEventError) as info:
        to_dp_accounting(SkellamEvent(10.0, 1.0))
    assert isinstance(info.value.event, SkellamEvent)


def test_default_l1_sensitivity() -> None:
    e = DiscreteGaussianEvent(5.0, 3.0, dimension=4)
    assert e.effective_l1_sensitivity == pytest.approx(min(2 * 3.0, 9.0))
    e = SkellamEvent(5.0, 3.0, dimension=100, l1_sensitivity=5.0)
    assert e.effective_l1_sensitivity == 5.0
