from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from privagg.dp import GaussianEvent, PoissonSampledEvent, PrivacyLedger, SkellamEvent
from privagg.errors import BudgetExceededError, ConfigurationError, DeserializationError

EV = PoissonSampledEvent(0.1, GaussianEvent(1.5))


def test_spend_persist_reload(tmp_path: Path) -> None:
    p = tmp_path / "ledger.json"
    led = PrivacyLedger(p, target_epsilon=5.0, delta=1e-5)
    assert led.epsilon == 0.0 and led.last_round is None
    e1 = led.spend(0, EV, {"clients": 10})
    e2 = led.spend(1, EV, count=3)
    assert 0 < e1 < e2 == led.epsilon
    doc = json.loads(p.read_text())
    assert doc["format_version"] == 1 and doc["accountant"] == "rdp"
    assert [r["round"] for r in doc["records"]] == [0, 1]
    # restart
    again = PrivacyLedger(p, target_epsilon=5.0, delta=1e-5)
    assert again.epsilon == led.epsilon
    assert again.last_round == 1
    assert again.records[0]["metadata"] == {"clients": 10}
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_budget_refused_before_recording(tmp_path: Path) -> None:
    p = tmp_path / "ledger.json"
    led = PrivacyLedger(p, target_epsilon=1.0, delta=1e-5, accountant="pld")
    led.spend(0, EV)
    before = p.read_bytes()
    eps = led.epsilon
    with pytest.raises(BudgetExceededError, match="target_epsilon"):
        led.check(EV, count=1000)
    with pytest.raises(BudgetExceededError):
        led.spend(1, EV, count=1000)
    assert p.read_bytes() == before
    assert led.epsilon == eps and len(led.records) == 1
    assert led.remaining == pytest.approx(1.0 - eps)


def test_round_numbers_and_metadata(tmp_path: Path) -> None:
    led = PrivacyLedger(tmp_path / "l.json", target_epsilon=10.0, delta=1e-5)
    led.spend(5, EV)
    with pytest.raises(ConfigurationError, match="round"):
        led.spend(5, EV)
    with pytest.raises(ConfigurationError, match="metadata"):
        led.spend(6, EV, {"x": object()})
    assert len(led.records) == 1


def test_refuses_mismatched_file(tmp_path: Path) -> None:
    p = tmp_path / "l.json"
    PrivacyLedger(p, target_epsilon=3.0, delta=1e-5).spend(0, EV)
    with pytest.raises(DeserializationError, match="accountant"):
        PrivacyLedger(p, target_epsilon=3.0, delta=1e-5, accountant="pld")
    with pytest.raises(DeserializationError, match="budget"):
        PrivacyLedger(p, target_epsilon=4.0, delta=1e-5)
    doc = json.loads(p.read_text())
    doc["format_version"] = 2
    p.write_text(json.dumps(doc))
    with pytest.raises(DeserializationError, match="format_version"):
        PrivacyLedger(p, target_epsilon=3.0, delta=1e-5)
    p.write_text("{not json")
    with pytest.raises(DeserializationError):
        PrivacyLedger(p, target_epsilon=3.0, delta=1e-5)


def test_tampered_event_rejected(tmp_path: Path) -> None:
    p = tmp_path / "l.json"
    PrivacyLedger(p, target_epsilon=3.0, delta=1e-5).spend(0, EV)
    doc = json.loads(p.read_text())
    doc["records"][0]["event"] = {"type": "builtins.eval", "x": 1}
    p.write_text(json.dumps(doc))
    with pytest.raises(DeserializationError):
        PrivacyLedger(p, target_epsilon=3.0, delta=1e-5)


def test_distributed_events_and_pld_refusal(tmp_path: Path) -> None:
    led = PrivacyLedger(tmp_path / "l.json", target_epsilon=10.0, delta=1e-5)
    led.spend(0, SkellamEvent(1e8, 1e3, dimension=100))
    pld = PrivacyLedger(
        tmp_path / "p.json", target_epsilon=10.0, delta=1e-5, accountant="pld"
    )
    from privagg.errors import UnsupportedEventError

    with pytest.raises(UnsupportedEventError):
        pld.spend(0, SkellamEvent(1e8, 1e3))
    assert not (tmp_path / "p.json").exists()


def test_validation(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="target_epsilon"):
        PrivacyLedger(tmp_path / "x.json", target_epsilon=0.0, delta=1e-5)
    with pytest.raises(ConfigurationError, match="delta"):
        PrivacyLedger(tmp_path / "x.json", target_epsilon=1.0, delta=0.0)
    with pytest.raises(ConfigurationError, match="accountant"):
        PrivacyLedger(
            tmp_path / "x.json", target_epsilon=1.0, delta=1e-5, accountant="x"
        )
