"""Atomic checkpoints, resume with the same privacy ledger, adapter export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fedtrain_helpers import small_config, two_clients

from fedtrain.checkpoint import export_adapter, load_checkpoint, save_checkpoint
from fedtrain.config import LoraSettings, PrivacyConfig, RoundConfig
from fedtrain.data import RawDataset
from fedtrain.server import Federation


class KilledError(Exception):
    """Simulates the process dying."""


def test_save_load_atomic(tmp_path: Path) -> None:
    arrays = {"global.x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    save_checkpoint(tmp_path, round_=1, arrays=arrays, meta={"history": []})
    save_checkpoint(
        tmp_path,
        round_=2,
        arrays={"global.x": arrays["global.x"] + 1},
        meta={"history": [1]},
    )
    meta, got = load_checkpoint(tmp_path)  # type: ignore[misc]
    assert meta["round"] == 2 and np.array_equal(
        got["global.x"], arrays["global.x"] + 1
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "meta.json",
        "state-r0002.safetensors",
    ]
    assert load_checkpoint(tmp_path / "none") is None


@pytest.mark.slow
def test_killed_run_resumes_with_same_ledger(
    rt_small: tuple[RawDataset, RawDataset], tmp_path: Path
) -> None:
    train, ev = rt_small
    cfg = small_config(
        privacy=PrivacyConfig(level="record", noise_multiplier=1.0, clip=1.0),
        rounds=RoundConfig(rounds=3, local_steps=1, batch_size=8),
    )
    full = Federation(cfg, two_clients(train), ev, out_dir=tmp_path / "full").run(
        export=False
    )

    def die(r: int, cid: str, msg: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if r == 2 and cid == "bob":
            raise KilledError
        return msg

    out = tmp_path / "killed"
    with pytest.raises(KilledError):
        Federation(cfg, two_clients(train), ev, out_dir=out, fail_hook=die).run()

    def rounds_in_ledger(d: Path) -> list[list[int]]:
        files = sorted((d / "privacy").glob("client-*.json"))
        assert len(files) == 2
        return [
            [r["metadata"]["fl_round"] for r in json.loads(f.read_text())["records"]]
            for f in files
        ]

    assert rounds_in_ledger(out) == [[1], [1]]  # round 2 released nothing
    meta = json.loads((out / "checkpoint" / "meta.json").read_text())
    assert meta["round"] == 1
    resumed = Federation(cfg, two_clients(train), ev, out_dir=out).run()
    assert resumed.resumed_from == 1
    assert [r.round for r in resumed.rounds] == [1, 2, 3]
    assert rounds_in_ledger(out) == [
        [1, 2, 3],
        [1, 2, 3],
    ]  # nothing forgotten, nothing twice
    assert resumed.rounds[-1].epsilon == pytest.approx(
        full.rounds[-1].epsilon, rel=1e-6
    )
    assert resumed.rounds[-1].epsilon_per_client == pytest.approx(
        full.rounds[-1].epsilon_per_client, rel=1e-6
    )
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("mode", ["ffa", "flora"])
def test_exported_adapter_loads_with_peft(
    mode: str, rt_small: tuple[RawDataset, RawDataset], tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    train, ev = rt_small
    # The native HF head (pooler), so that a plain peft load reproduces the model; the
    # mean-pooled head's reload is tested in test_models.py.
    lora = LoraSettings(
        r=4,
        alpha=8.0,
        mode=mode,
        client_ranks={"alice": 2} if mode == "flora" else None,
        pooling="pooler",
    )  # type: ignore[arg-type]
    fed = Federation(small_config(lora=lora), two_clients(train), ev)
    fed.run_one_round(1)
    want = fed.evaluate()
    dest = export_adapter(fed.handle, fed.global_state, tmp_path / "adapter", mode=mode)
    base = AutoModelForSequenceClassification.from_pretrained(
        fed.resolved.path, num_labels=2
    )
    model = PeftModel.from_pretrained(base, str(dest))
    model.eval()
    fed.handle.model.eval()
    batch = {
        k: v
        for k, v in __import__("fedtrain.models", fromlist=["collate"])
        .collate(fed.eval_enc, list(range(8)), torch.device("cpu"))
        .items()
        if k != "labels"
    }
    with torch.no_grad():
        a = model(**batch).logits
        b = fed.handle.model(**batch).logits
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert want["accuracy"] >= 0
