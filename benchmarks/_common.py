"""Helpers shared by the benchmarks: timing and the one-JSON-last-line convention.

Every ``benchmarks/NAME.py`` accepts ``--quick`` (under a minute on 2 cores) and prints,
as its last line, one JSON object holding its figures, the anchor's figures measured in
the same run, and the ratios between them.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--quick", action="store_true", help="small sizes, < 1 minute on 2 cores"
    )
    return p


def timed(fn: Callable[[], T], repeat: int = 1) -> tuple[T, float]:
    """Run ``fn`` ``repeat`` times; return the last result and the best wall time (s)."""
    best = float("inf")
    out: Any = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def emit(name: str, figures: dict[str, Any]) -> None:
    """Print the closing JSON line."""
    record = {"benchmark": name, "machine": platform.machine(), **figures}
    print(json.dumps(record, sort_keys=True, default=float))
