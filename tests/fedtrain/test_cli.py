"""End-to-end: the demo command with a tiny configuration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedtrain.cli import main


@pytest.mark.e2e
def test_demo_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    rc = main(
        ["demo", "--out", str(out), "--quick", "--no-progress", "--backend", "plain"]
    )
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    for k in (
        "main_metric",
        "initial_metrics",
        "final_metrics",
        "rounds",
        "base_model",
        "num_labels",
    ):
        assert k in rep
    assert rep["main_metric"] == "accuracy" and rep["num_labels"] == 2
    assert rep["privacy"]["level"] == "record" and rep["rounds"][0]["epsilon"] > 0
    assert rep["privacy"]["accountant_source"]
    assert {"round", "metrics", "epsilon"} <= set(rep["rounds"][0])
    assert (out / "metric.png").stat().st_size > 1000 and (
        out / "epsilon.png"
    ).stat().st_size > 1000
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(
        rep["base_model"], num_labels=rep["num_labels"]
    )
    PeftModel.from_pretrained(base, str(out / "adapter"))
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-2])
    assert summary["main_metric"] == "accuracy"
    # the last line says how far above the trivial baseline the model ended
    assert lines[-1].startswith("final: accuracy ")
    assert "vs majority-class rate" in lines[-1] and "epsilon" in lines[-1]
    assert rep["pooling"] == "mean"  # all-MiniLM-L6-v2's own pooling
    from fedtrain.models import load_adapter_model

    load_adapter_model(out / "adapter")


def test_train_reports_errors_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        [
            "train",
            "--task",
            "seq_cls",
            "--data",
            str(tmp_path / "missing.csv"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 2
    assert "not found" in capsys.readouterr().err
