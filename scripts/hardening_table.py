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
from pathlib import Path
from typing import Any

START = "<!-- hardening-table:start -->"
END = "<!-- hardening-table:end -->"


def _n(x: int) -> str:
    return f"{x:,}"


def render(counts: dict[str, Any], meta: dict[str, Any]) -> str:
    """The markdown tables for ``counts`` (category -> row -> field -> int)."""
    out: list[str] = []
    params = ", ".join(f"`{k}={v}`" for k, v in meta.get("env", {}).items())
    out.append(
        f"Measured on {meta.get('date', '?')} by `make hardening` ({params}) on "
        f"{meta.get('cpus', '?')} CPU cores, {meta.get('wall_s', 0):.0f} s wall time; "
        f"pytest: {meta.get('summary', '?')}."
    )
    out.append("")

    faults = counts.get("faults", {})
    out += [
        "### Faults injected",
        "",
        "| backend or writer / fault | injected | correct result | clean typed abort | ok |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    tot = {"injected": 0, "correct": 0, "aborted": 0, "ok": 0}
    for row, c in sorted(faults.items()):
        for k in tot:
            tot[k] += int(c.get(k, 0))
        inj, ok = int(c.get("injected", 0)), int(c.get("ok", 0))
        out.append(
            f"| {row} | {_n(inj)} | {_n(int(c.get('correct', 0)))} | "
            f"{_n(int(c.get('aborted', 0)))} | {100 * ok / max(inj, 1):.0f}% |"
        )
    out.append(
        f"| **all** | **{_n(tot['injected'])}** | **{_n(tot['correct'])}** | "
        f"**{_n(tot['aborted'])}** | **{100 * tot['ok'] / max(tot['injected'], 1):.0f}%** |"
    )
    out.append("")

    fuzz = counts.get("fuzz", {})
    out += [
        "### Inputs fuzzed per parser",
        "",
        "| parser | inputs | of which huge size/count claims | untyped escapes | of which known (strict xfail) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    ftot = {"inputs": 0, "huge_claims": 0, "escapes": 0, "known": 0}
    for row, c in sorted(fuzz.items()):
        for k in ftot:
            ftot[k] += int(c.get(k, 0))
        out.append(
            f"| {row} | {_n(int(c.get('inputs', 0)))} | "
            f"{_n(int(c.get('huge_claims', 0)))} | {_n(int(c.get('escapes', 0)))} | "
            f"{_n(int(c.get('known', 0)))} |"
        )
    out.append(
        f"| **all** | **{_n(ftot['inputs'])}** | **{_n(ftot['huge_claims'])}** | "
        f"**{_n(ftot['escapes'])}** | **{_n(ftot['known'])}** |"
    )
    if fuzz:
        least = min(int(c.get("inputs", 0)) for c in fuzz.values())
        out.append("")
        out.append(f"Fewest inputs for one parser: {_n(least)}.")
    out.append("")

    secrets = counts.get("secrets", {})
    out += [
        "### Planted secrets",
        "",
        "| backend: what was planted | planted | leaked |",
        "| --- | ---: | ---: |",
    ]
    stot = [0, 0]
    for row, c in sorted(secrets.items()):
        stot[0] += int(c.get("planted", 0))
        stot[1] += int(c.get("leaked", 0))
        out.append(
            f"| {row} | {_n(int(c.get('planted', 0)))} | {_n(int(c.get('leaked', 0)))} |"
        )
    out.append(f"| **all** | **{_n(stot[0])}** | **{_n(stot[1])}** |")
    return "\n".join(out)


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
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *args.pytest_args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    wall = time.time() - t0
    sys.stdout.write(proc.stdout)
    lines = [
        ln for ln in proc.stdout.splitlines() if re.search(r"\d+ (passed|failed)", ln)
    ]
    summary = lines[-1].strip("= ") if lines else f"exit status {proc.returncode}"
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "env": {k: os.environ[k] for k in _ENV_KEYS if k in os.environ},
        "cpus": os.cpu_count(),
        "wall_s": wall,
        "summary": summary,
        "returncode": proc.returncode,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    counts = (
        json.loads(counts_path.read_text(encoding="utf-8"))
        if counts_path.exists()
        else {}
    )
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
