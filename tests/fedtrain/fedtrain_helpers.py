"""Helpers shared by the fedtrain tests (a module with a unique name, not conftest)."""

from __future__ import annotations

from fedtrain.config import LoraSettings, PrivacyConfig, RoundConfig, RunConfig
from fedtrain.data import RawDataset


def small_config(**kw: object) -> RunConfig:
    """A tiny, fast configuration (max_len 32, 1 round, 2 local steps)."""
    lora = kw.pop("lora", LoraSettings(r=4, alpha=8.0))
    rounds = kw.pop(
        "rounds", RoundConfig(rounds=1, local_steps=2, batch_size=8, lr=5e-3)
    )
    privacy = kw.pop("privacy", PrivacyConfig())
    base = {"max_len": 32, "device": "cpu", "test_seed": 7, "eval_batch_size": 32}
    base.update(kw)
    return RunConfig(lora=lora, rounds=rounds, privacy=privacy, **base)  # type: ignore[arg-type]


def two_clients(ds: RawDataset) -> dict[str, RawDataset]:
    n = len(ds)
    return {"alice": ds.subset(range(0, n // 2)), "bob": ds.subset(range(n // 2, n))}
