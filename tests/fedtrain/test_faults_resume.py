"""Server crash and restart: a record-level DP run dies in round 2 of 2, at each point
where the server's state changes, and is resumed from its folder.

Crash points: during a client's local training; while a client's privacy ledger is
written (disk full on its rename); while the checkpoint's state file is written; while
``meta.json`` is written. Afterwards the folder must hold the round-1 checkpoint whole,
ledgers that parse and account for at least every release the checkpoint counts, and a
restarted run must resume from round 1 and finish round 2, with every client's ledger
holding the releases of both rounds (a release is never forgotten; a round re-run after
a crash may be counted twice, the safe direction).
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fedtrain_helpers import small_config, two_clients
from tests.hardening_counts import count

from fedtrain.checkpoint import load_checkpoint
from fedtrain.config import PrivacyConfig, RoundConfig, RunConfig
from fedtrain.data import RawDataset
from fedtrain.server import Federation
from privagg.dp import PrivacyLedger

pytestmark = pytest.mark.slow

POINTS = ("training", "ledger", "checkpoint-state", "checkpoint-meta")


class KilledError(Exception):
    """The server process dies."""


def _config() -> RunConfig:
    return small_config(
        privacy=PrivacyConfig(level="record", noise_multiplier=1.0, clip=1.0),
        rounds=RoundConfig(rounds=2, local_steps=1, batch_size=8),
    )


def _ledger_rounds(out: Path) -> dict[str, list[int]]:
    rounds = {}
    for f in sorted((out / "privacy").glob("client-*.json")):
        doc = json.loads(f.read_text(encoding="utf-8"))
        # a torn or inconsistent ledger raises on reload (events are replayed)
        PrivacyLedger(
            f,
            target_epsilon=doc["target_epsilon"],
            delta=doc["delta"],
            accountant=doc["accountant"],
        )
        rounds[f.name] = [int(r["metadata"]["fl_round"]) for r in doc["records"]]
    return rounds


@pytest.mark.parametrize("point", POINTS)
def test_fault_server_crash_and_resume(
    point: str,
    rt_small: tuple[RawDataset, RawDataset],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    train, ev = rt_small
    cfg = _config()
    out = tmp_path / "crashed"
    fired: list[str] = []

    def die(r: int, cid: str, msg: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if point == "training" and r == 2 and cid == "bob":
            fired.append(point)
            raise KilledError
        return msg

    real_replace = os.replace

    def replace(src: Any, dst: Any, *a: Any, **k: Any) -> None:
        d = Path(dst)
        checkpointed_1 = (out / "checkpoint" / "meta.json").is_file()
        hit = (
            (point == "ledger" and d.parent.name == "privacy" and checkpointed_1)
            or (point == "checkpoint-state" and d.name == "state-r0002.safetensors")
            or (
                point == "checkpoint-meta"
                and d.name == "meta.json"
                and (out / "checkpoint" / "state-r0002.safetensors").is_file()
            )
        )
        if hit and not fired:
            fired.append(point)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(src, dst, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", replace)
        with pytest.raises((KilledError, OSError)):
            Federation(cfg, two_clients(train), ev, out_dir=out, fail_hook=die).run(
                export=False
            )
    assert fired == [point], "the fault was not injected"
    count("faults", f"fedtrain server crash / {point}", injected=1)

    loaded = load_checkpoint(out / "checkpoint")
    assert loaded is not None, "the checkpoint was lost"
    meta, arrays = loaded
    assert meta["round"] == 1 and len(meta["history"]) == 1
    assert all(np.all(np.isfinite(a)) for a in arrays.values())
    ledgers = _ledger_rounds(out)
    for name, n in meta["ledger_counts"].items():
        assert len(ledgers[name]) >= n, (
            "the ledger lost a release the checkpoint counts"
        )

    resumed = Federation(cfg, two_clients(train), ev, out_dir=out).run(export=False)
    assert resumed.resumed_from == 1
    assert [r.round for r in resumed.rounds] == [1, 2]
    after = _ledger_rounds(out)
    assert len(after) == 2
    for rounds in after.values():
        assert {1, 2} <= set(rounds) and rounds == sorted(rounds)
    assert resumed.rounds[-1].epsilon > resumed.rounds[0].epsilon > 0
    count("faults", f"fedtrain server crash / {point}", ok=1, aborted=1)
