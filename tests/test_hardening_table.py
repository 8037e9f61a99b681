"""``scripts/hardening_table.py``: the parallel run's merge of counts and summaries."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

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
