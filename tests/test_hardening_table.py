"""``scripts/hardening_table.py``: the parallel run's merge of counts and summaries."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "hardening_table", ROOT / "scripts" / "hardening_table.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("hardening_table", mod)
    spec.loader.exec_module(mod)
    return mod


def test_merge_counts_adds_field_by_field() -> None:
    ht = _script()
    a = {"fuzz": {"p": {"inputs": 3, "escapes": 0}}, "faults": {"f": {"ok": 1}}}
    b = {"fuzz": {"p": {"inputs": 4, "escapes": 1}, "q": {"inputs": 2}}}
    assert ht.merge_counts([a, b]) == {
        "fuzz": {"p": {"inputs": 7, "escapes": 1}, "q": {"inputs": 2}},
        "faults": {"f": {"ok": 1}},
    }
    assert ht.merge_counts([]) == {}


def test_merge_summaries_adds_outcomes() -> None:
    ht = _script()
    got = ht.merge_summaries(
        ["3 passed, 2 warnings in 6.09s", "1 failed, 27 passed in 4.8s", ""]
    )
    assert got == "30 passed, 2 warnings, 1 failed"


def test_test_paths_are_told_from_options(tmp_path: Path) -> None:
    ht = _script()
    f = tmp_path / "test_x.py"
    f.write_text("")
    assert ht._is_test_path(str(f))
    assert ht._is_test_path(f"{f}::test_a")
    assert not ht._is_test_path("-q")
    assert not ht._is_test_path("no:cacheprovider")


def _memory_output(backends: dict[str, dict[str, float]], values: int = 10**8) -> str:
    figures = {
        b: {
            role: {"peak_extra": peak, "data": 100 * 2**20}
            for role, peak in zip(
                ("client", "aggregator", "holder"), peaks, strict=True
            )
        }
        | {"seconds": 12.0}
        for b, peaks in backends.items()
    }
    record = {
        "benchmark": "memory",
        "values": values,
        "backends": figures,
        "date": "2026-12-04",
        "cpus": 2,
    }
    return "plain: client ...\n" + json.dumps(record) + "\n"


def test_memory_table_is_written_from_the_benchmark_outputs(tmp_path: Path) -> None:
    ht = _script()
    a = tmp_path / "memory-a.txt"
    b = tmp_path / "memory-b.txt"
    a.write_text(_memory_output({"plain": (150 * 2**20, 2**20, 100 * 2**20)}))
    b.write_text(_memory_output({"paillier": (155 * 2**20, 101 * 2**20, 2**20)}))
    doc = tmp_path / "doc.md"
    doc.write_text(f"intro\n{ht.MEMORY_START}\nSTALE-TABLE\n{ht.MEMORY_END}\nafter\n")
    assert ht.main(["memory", str(a), str(b), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert (
        "STALE-TABLE" not in text
        and text.startswith("intro\n")
        and text.endswith("after\n")
    )
    plain = next(ln for ln in text.splitlines() if ln.startswith("| plain |"))
    assert "150 / 100 MiB (**1.50x**)" in plain and "| 1e+08 |" in plain
    paillier = next(ln for ln in text.splitlines() if ln.startswith("| Paillier |"))
    assert "155 / 100 MiB (**1.55x**)" in paillier
    assert "Largest ratio: 1.55x" in text and "met" in text


def test_memory_table_says_when_the_target_is_missed(tmp_path: Path) -> None:
    ht = _script()
    rows = ht.merge_memory(
        [
            json.loads(
                _memory_output({"ckks": (2**20, 250 * 2**20, 2**20)}).splitlines()[1]
            )
        ]
    )
    assert "Largest ratio: 2.50x" in ht.render_memory(rows)
    assert "**missed**" in ht.render_memory(rows)


def test_memory_outputs_without_the_json_line_are_refused(tmp_path: Path) -> None:
    ht = _script()
    f = tmp_path / "broken.txt"
    f.write_text('plain: client 1 MiB\n{"benchmark": "secagg"}\n{not json\n')
    with pytest.raises(SystemExit, match="no memory benchmark JSON line"):
        ht.read_memory(f)


def test_memory_table_from_a_run_stopped_early(tmp_path: Path) -> None:
    """A dealt-backend run stopped before its holder (no closing JSON line): the
    table takes the roles its stderr progress lines report, says the holder was not
    measured and that the round was stopped early."""
    ht = _script()
    log = tmp_path / "memory-paillier.txt"
    log.write_text(
        "# values: 100000000\n"
        'paillier client c0: 2238 s, [\'{"peak_extra": 157286400, "data": 104857600}\']\n'
        'paillier client c1: 2100 s, [\'{"peak_extra": 167772160, "data": 104857600}\']\n'
        'paillier aggregator: 90 s, [\'{"peak_extra": 104857600, "data": 209715200}\']\n'
    )
    rec = ht.read_memory(log)
    row = rec["backends"]["paillier"]
    assert rec["values"] == 10**8 and row["partial"] and "holder" not in row
    assert row["client"] == {"peak_extra": 167772160, "data": 104857600}
    assert row["seconds"] == 2238 + 2100 + 90
    doc = tmp_path / "doc.md"
    doc.write_text(f"{ht.MEMORY_START}\n{ht.MEMORY_END}\n")
    assert ht.main(["memory", str(log), "--doc", str(doc)]) == 0
    line = next(
        ln for ln in doc.read_text().splitlines() if ln.startswith("| Paillier")
    )
    assert "160 / 100 MiB (**1.60x**)" in line and "100 / 200 MiB (**0.50x**)" in line
    assert "not measured" in line and "(stopped early)" in line


def test_memory_progress_without_values_is_refused(tmp_path: Path) -> None:
    ht = _script()
    log = tmp_path / "memory.txt"
    log.write_text('paillier client c0: 1 s, [\'{"peak_extra": 1, "data": 1}\']\n')
    with pytest.raises(SystemExit, match="no memory benchmark"):
        ht.read_memory(log)


def test_memory_benchmark_measures_only_the_roles_asked_for(tmp_path: Path) -> None:
    """``benchmarks/memory.py --roles client,aggregator`` on a dealt backend stops
    before the holder: its JSON has no holder figure, and the stderr progress lines
    give the same figures (what a run stopped early leaves)."""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [
            sys.executable,
            str(root / "benchmarks" / "memory.py"),
            "--values",
            "2000",
            "--backends",
            "plain",
            "--roles",
            "client,aggregator",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    row = rec["backends"]["plain"]
    assert {"client", "aggregator"} <= set(row) and "holder" not in row
    assert "plain holder" not in out.stderr and "plain aggregator" in out.stderr
    log = tmp_path / "stderr.txt"
    log.write_text(out.stderr)
    partial = _script().read_memory(log)
    assert partial["values"] == 2000
    assert partial["backends"]["plain"]["aggregator"] == {
        k: row["aggregator"][k] for k in ("peak_extra", "data")
    }
