"""``privagg bench``: a quick timing of one or every backend."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table

from privagg.cli._common import (
    _BENCH_SCRIPTS,
    BenchmarkFailedError,
    _console,
    _emit_json,
    _json_option,
    _safe,
    _versions,
    cli,
)


# -- bench ---------------------------------------------------------------------------------
def _benchmarks_dir() -> Path | None:
    """``benchmarks/`` of a source checkout (not installed with the package)."""
    root = Path(__file__).resolve().parents[3]
    d = root / "benchmarks"
    return d if (d / "_common.py").is_file() else None


def _run_script(name: str, bench_dir: Path) -> dict[str, Any]:
    script = bench_dir / f"{_BENCH_SCRIPTS[name]}.py"
    if not script.is_file():
        raise BenchmarkFailedError(f"no benchmark script {script}")
    try:
        proc = subprocess.run(
            [sys.executable, str(script), "--quick"],
            cwd=bench_dir.parent,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BenchmarkFailedError(f"{script.name} --quick ran over 900 s") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchmarkFailedError(
            f"{script.name} --quick exited with {proc.returncode}: {tail}"
        )
    try:
        record = json.loads(lines[-1])
    except ValueError:
        raise BenchmarkFailedError(
            f"{script.name} --quick printed no closing JSON line"
        ) from None
    if not isinstance(record, dict):
        raise BenchmarkFailedError(
            f"{script.name} --quick: closing line is not an object"
        )
    return {
        "backend": name,
        "source": f"benchmarks/{script.name} --quick",
        "figures": record,
    }


def _run_builtin(name: str, clients: int, values: int) -> dict[str, Any]:
    import numpy as np

    import privagg

    gen = np.random.default_rng(0)  # public benchmark data, not a secret
    updates = {
        f"client-{i}": {"w": gen.uniform(-1.0, 1.0, size=values)}
        for i in range(clients)
    }
    layout = privagg.Layout.from_arrays(updates["client-0"])
    backend = privagg.get_backend(name)
    t0 = time.perf_counter()
    session = backend.setup(layout, max_clients=clients)
    setup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = privagg.run_round(session, updates)
    round_s = time.perf_counter() - t0
    ref = np.sum([u["w"] for u in updates.values()], axis=0)
    uploaded = sum(result.bytes_sent.values()) / max(len(result.bytes_sent), 1)
    return {
        "backend": name,
        "source": "builtin run_round",
        "figures": {
            "clients": clients,
            "values": values,
            "setup_s": setup_s,
            "round_s": round_s,
            **{f"{k}_s": v for k, v in result.timings.items()},
            "bytes_per_value": uploaded / values,
            "max_abs_error": float(np.max(np.abs(result.aggregate["w"] - ref))),
        },
    }


def _flatten(record: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested mappings as dotted keys.

    >>> _flatten({"a": 1, "b": {"c": 2.5}})
    [('a', 1), ('b.c', 2.5)]
    """
    out: list[tuple[str, Any]] = []
    for k, v in record.items():
        if isinstance(v, Mapping):
            out.extend(_flatten(v, f"{prefix}{k}."))
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _print_builtin_table(console: Console, rows: Sequence[Mapping[str, Any]]) -> None:
    table = Table(
        title="privagg.run_round, every role in this process",
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),
    )
    columns: list[tuple[str, str, Callable[[float], str]]] = [
        ("setup ms", "setup_s", _ms),
        ("protect ms", "protect_s", _ms),
        ("aggr. ms", "aggregate_s", _ms),
        ("recover ms", "recover_s", _ms),
        ("round ms", "round_s", _ms),
        ("B/value", "bytes_per_value", lambda v: f"{v:.2f}"),
        ("max error", "max_abs_error", lambda v: f"{v:.1e}"),
    ]
    table.add_column("backend")
    for title, _, _ in columns:
        table.add_column(title, justify="right", min_width=len(title))
    for row in rows:
        figures = row["figures"]
        cells = [_safe(row["backend"])]
        for _, key, fmt in columns:
            value = figures.get(key)
            cells.append("-" if value is None else fmt(float(value)))
        table.add_row(*cells)
    console.print(table)
    first = rows[0]["figures"]
    console.print(
        f"{first['clients']} clients x {first['values']} values, default backend "
        "options; one run on this machine: compare backends within a run."
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def _print_script_table(console: Console, row: Mapping[str, Any]) -> None:
    table = Table(title=f"{row['backend']}: {row['source']}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in _flatten(row["figures"]):
        text = f"{value:.4g}" if isinstance(value, float) else _safe(value)
        table.add_row(_safe(key), text)
    console.print(table)


@cli.command(short_help="Time backends quickly and print a table.")
@click.option(
    "--backend",
    "backends",
    multiple=True,
    help="Backend to time (repeatable; default: every installed backend).",
)
@click.option(
    "--source",
    type=click.Choice(["auto", "script", "builtin"]),
    default="auto",
    show_default=True,
    help="script: benchmarks/NAME.py --quick of a source checkout; builtin: a timing "
    "of privagg.run_round; auto: the script when the checkout has it.",
)
@click.option(
    "--clients",
    type=click.IntRange(2, 1000),
    default=3,
    show_default=True,
    help="builtin: clients per round.",
)
@click.option(
    "--values",
    type=click.IntRange(1, 10_000_000),
    default=10_000,
    show_default=True,
    help="builtin: values per update.",
)
@_json_option
def bench(
    backends: tuple[str, ...], source: str, clients: int, values: int, as_json: bool
) -> None:
    """Time backends quickly and print a table of the figures.

    With a source checkout (benchmarks/ next to src/), runs the backend's
    benchmarks/NAME.py --quick, whose figures the docs quote (additive is measured
    by benchmarks/secagg.py). Otherwise, or with --source builtin, times one
    privagg.run_round with default backend options on uniform values in [-1, 1].
    """
    import privagg

    names = list(backends) or privagg.available_backends()
    for name in names:
        privagg.get_backend(name)  # unknown or unavailable: a typed error, now
    bench_dir = _benchmarks_dir()
    if source == "script" and bench_dir is None:
        raise BenchmarkFailedError(
            "no benchmarks/ directory (it ships with the source checkout only); "
            "use --source builtin"
        )
    use_script = source == "script" or (source == "auto" and bench_dir is not None)
    rows = [
        _run_script(name, bench_dir)
        if use_script and bench_dir is not None
        else _run_builtin(name, clients, values)
        for name in names
    ]
    if as_json:
        _emit_json({"command": "bench", "results": rows, "versions": _versions()})
        return
    console = _console()
    if use_script:
        for row in rows:
            _print_script_table(console, row)
    else:
        _print_builtin_table(console, rows)
