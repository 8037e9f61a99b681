"""Run the hardening suite and write its measured counts as tables in docs/hardening.md.

``make hardening`` calls ``run``: pytest runs the fault, fuzz and planted-secret tests
with ``PRIVAGG_HARDENING_JSON`` pointing at ``<out>/counts.json``; the tests add what
they actually injected, fed and planted (``tests/hardening_counts.py``); this script
then renders the tables between the ``hardening-table`` markers of the doc, with the
parameters, the wall time and pytest's own summary line. Nothing in the tables is
typed by hand. ``table`` re-renders from an existing counts file.

    python scripts/hardening_table.py run --out runs/hardening --doc docs/hardening.md -- <pytest args>
    python scripts/hardening_table.py table runs/hardening/counts.json --doc docs/hardening.md
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

START = "<!-- hardening-table:start -->"
END = "<!-- hardening-table:end -->"


def _n(x: int) -> str:
    return f"{x:,}"


def _section(
    title: str,
    rows: dict[str, dict[str, int]],
    first: str,
    columns: list[tuple[str, str]],
    note: tuple[str, Callable[[dict[str, int]], str]] | None = None,
) -> list[str]:
    """A markdown table: one line per row, ``columns`` = (header, field), totals; an
    optional last column ``note = (header, function of the row's fields)``."""
    heads = [first, *(h for h, _ in columns), *([note[0]] if note else [])]
    out = [
        f"### {title}",
        "",
        "| " + " | ".join(heads) + " |",
        "| --- |" + " ---: |" * (len(heads) - 1),
    ]
    total = dict.fromkeys((f for _, f in columns), 0)
    for name, cell in sorted(rows.items()):
        vals = {f: int(cell.get(f, 0)) for f in total}
        for f, v in vals.items():
            total[f] += v
        extra = f" {note[1](vals)} |" if note else ""
        out.append(
            f"| {name} | " + " | ".join(_n(vals[f]) for f in total) + " |" + extra
        )
    extra = f" **{note[1](total)}** |" if note else ""
    out.append(
        "| **all** | "
        + " | ".join(f"**{_n(v)}**" for v in total.values())
        + " |"
        + extra
    )
    out.append("")
    return out


def _ok(cell: dict[str, int]) -> str:
    return f"{100 * cell['ok'] / max(cell['injected'], 1):.0f}%"


def render(counts: dict[str, Any], meta: dict[str, Any]) -> str:
    """The markdown tables for ``counts`` (category -> row -> field -> int)."""
    params = ", ".join(f"`{k}={v}`" for k, v in meta.get("env", {}).items())
    out = [
        f"Measured on {meta.get('date', '?')} by `make hardening` ({params}) on "
        f"{meta.get('cpus', '?')} CPU cores, {meta.get('wall_s', 0):.0f} s wall time; "
        f"pytest: {meta.get('summary', '?')}.",
        "",
    ]
    out += _section(
        "Faults injected",
        counts.get("faults", {}),
        "backend or writer / fault",
        [
            ("injected", "injected"),
            ("correct result", "correct"),
            ("clean typed abort", "aborted"),
            ("correct or clean abort", "ok"),
        ],
        ("ok %", _ok),
    )
    fuzz = counts.get("fuzz", {})
    out += _section(
        "Inputs fuzzed per parser",
        fuzz,
        "parser",
        [
            ("inputs", "inputs"),
            ("of which huge size/count claims", "huge_claims"),
            ("untyped escapes", "escapes"),
            ("of which known (strict xfail)", "known"),
        ],
    )
    if fuzz:
        least = min(int(c.get("inputs", 0)) for c in fuzz.values())
        out += [f"Fewest inputs for one parser: {_n(least)}.", ""]
    out += _section(
        "Fuzzed protocol rounds (one message of a live round replaced)",
        counts.get("rounds", {}),
        "backend",
        [
            ("rounds", "rounds"),
            ("ended with a result", "result"),
            ("typed abort", "aborted"),
            ("untyped escapes", "escapes"),
        ],
    )
    out += _section(
        "Planted secrets",
        counts.get("secrets", {}),
        "backend: what was planted",
        [("planted", "planted"), ("leaked", "leaked")],
    )
    return "\n".join(out).rstrip() + "\n"


def write_doc(doc: Path, table: str) -> None:
    """Replace the text between the markers of ``doc`` with ``table``."""
    text = doc.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise SystemExit(f"{doc}: no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{START}\n{table}\n{END}{tail}", encoding="utf-8")


_ENV_KEYS = (
    "PRIVAGG_FUZZ_EXAMPLES",
    "PRIVAGG_FUZZ_BATCH",
    "PRIVAGG_FUZZ_ROUND_EXAMPLES",
    "HYPOTHESIS_PROFILE",
)


def cmd_run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    counts_path = out / "counts.json"
    counts_path.unlink(missing_ok=True)
    env = dict(os.environ, PRIVAGG_HARDENING_JSON=str(counts_path.resolve()))
    t0 = time.time()
    lines: list[str] = []
    with subprocess.Popen(
        [sys.executable, "-m", "pytest", *args.pytest_args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:  # shown as it comes, kept for the summary line
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line)
    wall = time.time() - t0
    if proc.returncode < 0 or not counts_path.exists():
        print(f"hardening: pytest ended with {proc.returncode}; no table written")
        return proc.returncode or 1
    found = [ln for ln in lines if re.search(r"\d+ (passed|failed)", ln)]
    summary = (
        found[-1].strip().strip("= ") if found else f"exit status {proc.returncode}"
    )
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "env": {k: os.environ[k] for k in _ENV_KEYS if k in os.environ},
        "cpus": os.cpu_count(),
        "wall_s": wall,
        "summary": summary,
        "returncode": proc.returncode,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    counts = json.loads(counts_path.read_text(encoding="utf-8"))
    write_doc(Path(args.doc), render(counts, meta))
    print(f"hardening: tables written to {args.doc} ({summary}, {wall:.0f} s)")
    return proc.returncode


def cmd_table(args: argparse.Namespace) -> int:
    counts_path = Path(args.counts)
    counts = json.loads(counts_path.read_text(encoding="utf-8"))
    meta_path = counts_path.with_name("meta.json")
    meta = (
        json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
    )
    write_doc(Path(args.doc), render(counts, meta))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run pytest, then write the tables")
    r.add_argument("--out", default="runs/hardening")
    r.add_argument("--doc", default="docs/hardening.md")
    r.add_argument("pytest_args", nargs=argparse.REMAINDER)
    t = sub.add_parser("table", help="write the tables from a counts file")
    t.add_argument("counts")
    t.add_argument("--doc", default="docs/hardening.md")
    args = p.parse_args(argv)
    if args.cmd == "run":
        if args.pytest_args and args.pytest_args[0] == "--":
            args.pytest_args = args.pytest_args[1:]
        return cmd_run(args)
    return cmd_table(args)


if __name__ == "__main__":
    raise SystemExit(main())
