"""Counters the hardening tests keep, for the table in ``docs/hardening.md``.

The fault, fuzz and planted-secret tests call :func:`count` with what they injected
and how it ended. The counts live in this process; when ``PRIVAGG_HARDENING_JSON``
names a file, they are written there when the interpreter exits (``make hardening``
sets it, and ``scripts/hardening_table.py`` turns the file into the table). A count
is added only for inputs that were actually run, so the table never shows more than
the suite did.

Categories and fields:

* ``faults``: ``injected``, ``ok`` (correct result or clean typed abort), with
  ``correct`` and ``aborted`` splitting ``ok``.
* ``fuzz``: ``inputs``, ``huge_claims`` (of them), ``escapes`` (anything but a
  documented typed error), ``known`` (of them: open bugs pinned by strict xfails).
* ``rounds``: fuzzed protocol rounds: ``rounds``, ``result``, ``aborted``, ``escapes``.
* ``secrets``: ``planted``, ``leaked``.

It also holds the fuzz harnesses' shared example counts and hypothesis settings.
"""

from __future__ import annotations

import atexit
import json
import os
from collections import defaultdict
from pathlib import Path

from hypothesis import HealthCheck, settings

__all__ = ["BATCH", "COUNTS", "EXAMPLES", "count", "dump", "fuzz_settings"]

#: hypothesis examples per fuzz test case (``make hardening`` sets it high)
EXAMPLES = int(os.environ.get("PRIVAGG_FUZZ_EXAMPLES", "60"))
#: inputs fed per example (one from hypothesis, the rest mutated from its seed)
BATCH = max(1, int(os.environ.get("PRIVAGG_FUZZ_BATCH", "5")))


def fuzz_settings(max_examples: int = EXAMPLES) -> settings:
    """The hypothesis settings of every fuzz harness."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )


#: category -> row name -> field -> total
COUNTS: dict[str, dict[str, dict[str, int]]] = defaultdict(
    lambda: defaultdict(lambda: defaultdict(int))
)


def count(category: str, row: str, **fields: int) -> None:
    """Add ``fields`` to the counters of ``row`` in ``category``."""
    cell = COUNTS[category][row]
    for name, n in fields.items():
        cell[name] += int(n)


def dump(path: str | os.PathLike[str]) -> None:
    """Write the counters as JSON (merging with counts already in the file)."""
    p = Path(path)
    merged: dict[str, dict[str, dict[str, int]]] = {}
    if p.is_file():
        try:
            merged = json.loads(p.read_text(encoding="utf-8"))
        except ValueError:
            merged = {}
    for cat, rows in COUNTS.items():
        for row, cell in rows.items():
            dst = merged.setdefault(cat, {}).setdefault(row, {})
            for name, n in cell.items():
                dst[name] = int(dst.get(name, 0)) + n
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n", "utf-8")
    os.replace(tmp, p)


def _at_exit() -> None:
    target = os.environ.get("PRIVAGG_HARDENING_JSON")
    if target and COUNTS:
        dump(target)


atexit.register(_at_exit)
