"""Run the hardening suite and write its measured counts as tables in docs/hardening.md.

``make hardening`` calls ``run``: pytest runs the fault, fuzz and planted-secret tests
with ``PRIVAGG_HARDENING_JSON`` pointing at ``<out>/counts.json``; the tests add what
they actually injected, fed and planted (``tests/hardening_counts.py``); this script
then renders the tables between the ``hardening-table`` markers of the doc, with the
parameters, the wall time and pytest's own summary line. Nothing in the tables is
typed by hand. ``table`` re-renders from an existing counts file.

    python scripts/hardening_table.py run --out runs/hardening --doc docs/hardening.md -- <pytest args>
    python scripts/hardening_table.py run --jobs 2 ...   # one pytest per test path, 2 at a time
    python scripts/hardening_table.py table runs/hardening/counts.json --doc docs/hardening.md
    python scripts/hardening_table.py memory runs/hardening/memory-*.txt --doc docs/hardening.md

``memory`` renders the peak-memory table (between the ``memory-table`` markers) from the
outputs of ``benchmarks/memory.py`` (``make hardening-memory``), one or more backends per
file; a backend measured in several files keeps the last file's figures.
"""

from __future__ import annotations

import argparse
import concurrent.futures
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
MEMORY_START = "<!-- memory-table:start -->"
MEMORY_END = "<!-- memory-table:end -->"
#: issue #13: a role's peak memory is at most this many times its own data
MEMORY_TARGET = 2.0
_ROLES = ("client", "aggregator", "holder")
_MEMORY_NAMES = {
    "plain": "plain",
    "secagg": "SecAgg+ (active)",
    "additive": "additive",
    "ckks": "CKKS (`secure`)",
    "paillier": "Paillier",
}


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


def write_doc(doc: Path, table: str, start: str = START, end: str = END) -> None:
    """Replace the text between the markers of ``doc`` with ``table``."""
    text = doc.read_text(encoding="utf-8")
    if start not in text or end not in text:
        raise SystemExit(f"{doc}: no {start} ... {end} markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{start}\n{table}\n{end}{tail}", encoding="utf-8")


_PROGRESS = re.compile(
    r"(?P<backend>[a-z]+) (?P<role>client|aggregator|holder)(?: (?P<party>\S+))?: "
    r"(?P<seconds>\d+) s, \['(?P<json>\{.*\})'\]"
)


def read_memory(path: Path) -> dict[str, Any]:
    """The closing JSON line of one ``benchmarks/memory.py`` output, or, for a run
    stopped early (no closing line), the per-role progress lines it printed to
    stderr (``<backend> <role>[ <party>]: <s> s, ['<json>']``): then only the roles
    that finished are in the record, and ``values`` must follow ``--values`` in a
    ``# values: N`` line of the file (the progress lines do not carry it).

    Raises:
        SystemExit: the file has neither a ``"benchmark": "memory"`` JSON line nor
            progress lines with a ``# values:`` line.
    """
    text = path.read_text(encoding="utf-8")
    mtime = time.gmtime(path.stat().st_mtime)
    for line in reversed(text.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("benchmark") == "memory":
            # outputs of before the script recorded its date: the file's own date
            record.setdefault("date", time.strftime("%Y-%m-%d", mtime))
            return record
    values = re.search(r"^# values: (\d+)$", text, re.MULTILINE)
    backends: dict[str, dict[str, Any]] = {}
    for m in _PROGRESS.finditer(text):
        fig = json.loads(m["json"])
        row = backends.setdefault(
            m["backend"],
            {"partial": True, "seconds": 0.0, "isolation": "one process per role"},
        )
        row["seconds"] += float(m["seconds"])
        prev = row.get(m["role"], {"peak_extra": 0, "data": 0})
        row[m["role"]] = {k: max(prev[k], int(fig[k])) for k in ("peak_extra", "data")}
    if backends and values:
        return {
            "benchmark": "memory",
            "values": int(values[1]),
            "backends": backends,
            "date": time.strftime("%Y-%m-%d", mtime),
        }
    raise SystemExit(f"{path}: no memory benchmark JSON line")


def merge_memory(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """backend -> its figures (with the run's ``values``, ``date``, ``cpus``)."""
    rows: dict[str, dict[str, Any]] = {}
    for rec in records:
        for backend, fig in rec.get("backends", {}).items():
            rows[backend] = {
                **fig,
                "values": rec.get("values"),
                "date": rec.get("date", "?"),
                "cpus": rec.get("cpus"),
            }
    return rows


def _mib(x: float) -> str:
    return f"{x / 2**20:,.0f}"


def render_memory(rows: dict[str, dict[str, Any]]) -> str:
    """The peak-memory table: per backend and role, peak extra / data and the ratio."""
    out = [
        "### Peak memory per role",
        "",
        "| backend | values | client: peak extra / data | aggregator | holder "
        "| round | measured |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    worst = 0.0
    order = [b for b in _MEMORY_NAMES if b in rows] + sorted(
        b for b in rows if b not in _MEMORY_NAMES
    )
    for b in order:
        fig = rows[b]
        cells = []
        for role in _ROLES:
            if role not in fig:
                cells.append("not measured")
                continue
            r = fig[role]
            ratio = r["peak_extra"] / r["data"] if r["data"] else 0.0
            worst = max(worst, ratio)
            cells.append(
                f"{_mib(r['peak_extra'])} / {_mib(r['data'])} MiB (**{ratio:.2f}x**)"
            )
        values = fig.get("values")
        out.append(
            f"| {_MEMORY_NAMES.get(b, b)} | {values:.0e} | "
            + " | ".join(cells)
            + f" | {fig.get('seconds', 0):,.0f} s"
            + (" (stopped early)" if fig.get("partial") else "")
            + f" | {fig['date']}"
            + (f", {fig['cpus']} cores |" if fig.get("cpus") else " |")
        )
    verdict = "met" if worst <= MEMORY_TARGET else "**missed**"
    out += [
        "",
        f"Largest ratio: {worst:.2f}x; target (issue #13: at most "
        f"{MEMORY_TARGET:g}x a role's own data) {verdict}.",
    ]
    return "\n".join(out) + "\n"


_ENV_KEYS = (
    "PRIVAGG_FUZZ_EXAMPLES",
    "PRIVAGG_FUZZ_BATCH",
    "PRIVAGG_FUZZ_ROUND_EXAMPLES",
    "HYPOTHESIS_PROFILE",
)


def _is_test_path(token: str) -> bool:
    """Whether a pytest argument names a test file, folder or node id."""
    return not token.startswith("-") and Path(token.split("::", 1)[0]).exists()


def _run_pytest(
    pytest_args: list[str], counts_path: Path, log: Path | None
) -> tuple[int, list[str]]:
    """One pytest process writing its counts to ``counts_path``; its output is shown
    as it comes (``log is None``) or written to ``log``; returns (status, lines)."""
    env = dict(os.environ, PRIVAGG_HARDENING_JSON=str(counts_path.resolve()))
    lines: list[str] = []
    with subprocess.Popen(
        [sys.executable, "-m", "pytest", *pytest_args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        sink = log.open("w", encoding="utf-8") if log is not None else sys.stdout
        try:
            for line in proc.stdout:
                sink.write(line)
                sink.flush()
                lines.append(line)
        finally:
            if log is not None:
                sink.close()
    return proc.returncode, lines


def _summary(lines: list[str]) -> str:
    found = [ln for ln in lines if re.search(r"\d+ (passed|failed)", ln)]
    return found[-1].strip().strip("= ") if found else ""


def merge_counts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Field-wise sum of several counts files (category -> row -> field -> int)."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for part in parts:
        for cat, rows in part.items():
            for row, cell in rows.items():
                dst = out.setdefault(cat, {}).setdefault(row, {})
                for name, n in cell.items():
                    dst[name] = int(dst.get(name, 0)) + int(n)
    return out


def merge_summaries(summaries: list[str]) -> str:
    """pytest's outcome counts added over several summary lines."""
    total: dict[str, int] = {}
    for s in summaries:
        for n, what in re.findall(
            r"(\d+) (passed|failed|skipped|xfailed|xpassed|errors?|warnings?|deselected)",
            s,
        ):
            total[what] = total.get(what, 0) + int(n)
    return ", ".join(f"{n} {what}" for what, n in total.items())


def cmd_run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    counts_path = out / "counts.json"
    counts_path.unlink(missing_ok=True)
    t0 = time.time()
    tests = [a for a in args.pytest_args if _is_test_path(a)]
    if args.jobs <= 1 or len(tests) <= 1:
        status, lines = _run_pytest(args.pytest_args, counts_path, None)
        summary = _summary(lines) or f"exit status {status}"
    else:
        # One pytest process per test path, ``jobs`` at a time, in the given order
        # (put the longest first); each writes its own counts, merged below.
        opts = [a for a in args.pytest_args if a not in tests]
        for old in out.glob("counts-*.json"):
            old.unlink()
        results: dict[int, tuple[int, list[str]]] = {}
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            futs = {
                pool.submit(
                    _run_pytest,
                    [*opts, path],
                    out / f"counts-{i}.json",
                    out / f"log-{i}.txt",
                ): i
                for i, path in enumerate(tests)
            }
            for fut in concurrent.futures.as_completed(futs):
                i = futs[fut]
                results[i] = fut.result()
                st, lines = results[i]
                print(
                    f"hardening: {tests[i]}: {_summary(lines) or f'exit status {st}'}"
                )
                sys.stdout.flush()
        status = max((st for st, _ in results.values()), key=abs)
        parts = [
            json.loads(p.read_text(encoding="utf-8"))
            for p in sorted(out.glob("counts-*.json"))
        ]
        counts_path.write_text(
            json.dumps(merge_counts(parts), indent=1, sort_keys=True) + "\n",
            encoding="utf-8",
        )
        summary = merge_summaries([_summary(ln) for _, ln in results.values()])
        summary = summary or f"exit status {status}"
        summary += f" ({len(tests)} pytest processes, {args.jobs} at a time)"
    wall = time.time() - t0
    if status < 0 or not counts_path.exists():
        print(f"hardening: pytest ended with {status}; no table written")
        return status or 1
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "env": {k: os.environ[k] for k in _ENV_KEYS if k in os.environ},
        "cpus": os.cpu_count(),
        "wall_s": wall,
        "summary": summary,
        "returncode": status,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    counts = json.loads(counts_path.read_text(encoding="utf-8"))
    write_doc(Path(args.doc), render(counts, meta))
    print(f"hardening: tables written to {args.doc} ({summary}, {wall:.0f} s)")
    return status


def cmd_table(args: argparse.Namespace) -> int:
    counts_path = Path(args.counts)
    counts = json.loads(counts_path.read_text(encoding="utf-8"))
    meta_path = counts_path.with_name("meta.json")
    meta = (
        json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
    )
    write_doc(Path(args.doc), render(counts, meta))
    return 0


def cmd_memory(args: argparse.Namespace) -> int:
    rows = merge_memory([read_memory(Path(f)) for f in args.outputs])
    if not rows:
        raise SystemExit("no backend figures in the given outputs")
    write_doc(Path(args.doc), render_memory(rows), MEMORY_START, MEMORY_END)
    print(f"hardening: peak-memory table written to {args.doc} ({', '.join(rows)})")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run pytest, then write the tables")
    r.add_argument("--out", default="runs/hardening")
    r.add_argument("--doc", default="docs/hardening.md")
    r.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="run each test path as its own pytest process, this many at a time",
    )
    r.add_argument("pytest_args", nargs=argparse.REMAINDER)
    t = sub.add_parser("table", help="write the tables from a counts file")
    t.add_argument("counts")
    t.add_argument("--doc", default="docs/hardening.md")
    m = sub.add_parser(
        "memory", help="write the peak-memory table from benchmarks/memory.py outputs"
    )
    m.add_argument("outputs", nargs="+")
    m.add_argument("--doc", default="docs/hardening.md")
    args = p.parse_args(argv)
    if args.cmd == "run":
        if args.pytest_args and args.pytest_args[0] == "--":
            args.pytest_args = args.pytest_args[1:]
        return cmd_run(args)
    if args.cmd == "memory":
        return cmd_memory(args)
    return cmd_table(args)


if __name__ == "__main__":
    raise SystemExit(main())
