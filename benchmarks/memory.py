"""Peak memory per role: what one client, the aggregator and the holder need.

Before each role's call the process's peak-RSS mark is reset
(``/proc/self/clear_refs``, Linux); after it, ``VmHWM - VmRSS(before)`` is the memory
that call needed on top of what the process already held. Backends that can be dealt
to separate processes (``plain``, ``ckks``, ``paillier``: :mod:`privagg.distribution`)
run each role in a fresh process of its own, loading only that role's material and
exchanging messages through files, so no role inherits another's memory (SEAL keeps a
memory pool for the life of a process). The interactive backends (``secagg``,
``additive``) run every role in one process, driven stage by stage; their large
buffers are numpy arrays, which are returned to the system when freed. Per role the
largest figure is set against that role's data:

* client: its plaintext update (float64, 8 bytes a value) + its largest message;
* aggregator: the messages of its largest stage + its output;
* holder: the protected aggregate it receives + the recovered plaintext.

``ratio = peak_extra / data``; the hardening target (issue #13) is ratio <= 2. For the
dealt backends the memory of loading a role's material (per-key state kept for every
round, independent of the vector: for a Paillier client the fixed-base table of its
public key, about 38 MB at 3072 bits) is measured apart, as ``setup_extra`` per role.

    python benchmarks/memory.py --values 100000000 --backends plain,secagg,ckks
    python benchmarks/memory.py --quick          # 1e6 values
    python benchmarks/memory.py --backends paillier --roles client,aggregator

``--roles`` measures only the roles named (a dealt backend's roles run in order, so
``client,aggregator`` stops before the holder: a Paillier holder at 1e8 values needs
about 2 CPU-hours of CRT decryption); a role not measured is absent from the JSON.
Every role's figure is also printed to stderr as soon as it is measured
(``<backend> <role>[ <party>]: <s> s, ['<json>']``): ``scripts/hardening_table.py
memory`` reads those lines too, so a run stopped early still gives the roles it
finished.

The last line is JSON with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from _common import emit, parser

import privagg

T = TypeVar("T")
OPTIONS: dict[str, dict[str, Any]] = {
    "plain": {},
    "ckks": {},  # the provably flooded `secure` preset
    "secagg": {},  # active SecAgg+ (the default)
    "additive": {},
    "paillier": {},
}
CLIENTS = {"secagg": 3}  # SecAgg+ needs a threshold below the client count


def _status() -> tuple[int, int]:
    text = Path("/proc/self/status").read_text()
    hwm = re.search(r"VmHWM:\s+(\d+)", text)
    rss = re.search(r"VmRSS:\s+(\d+)", text)
    assert hwm is not None and rss is not None
    return int(hwm.group(1)) * 1024, int(rss.group(1)) * 1024


def measured(fn: Callable[[], T]) -> tuple[T, int]:
    """``fn()`` and the peak memory it needed above the RSS before it (bytes)."""
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark
    _, before = _status()
    out = fn()
    peak, _ = _status()
    return out, max(0, peak - before)


DEALT = ("plain", "ckks", "paillier")
ROLES = ("client", "aggregator", "holder")


def _layout(n: int) -> privagg.Layout:
    return privagg.Layout.from_arrays({"update": np.zeros(n, dtype=np.float64)})


def _vec(i: int, n: int) -> np.ndarray:
    return np.random.default_rng(i).uniform(-1, 1, n)  # benchmark data, not a secret


def _session(backend: str, n: int, role: str, work: Path, party: str | None) -> Any:
    from privagg.distribution import session_for_role

    blob = work / f"material-{party or role}.bin"
    return session_for_role(
        privagg.get_backend(backend, **OPTIONS[backend]),
        _layout(n),
        role,
        party_id=party,
        material=blob.read_bytes() if blob.exists() else None,
        max_clients=2,
    )


def child(role: str, backend: str, n: int, work: Path, party: str | None) -> None:
    """One role in this (fresh) process; prints its figures as JSON."""
    ids, rid = ["c0", "c1"], 1
    # loading the role's material: per-key state, independent of the round (for a
    # Paillier client the fixed-base table of its public key), reported apart
    session, setup = measured(lambda: _session(backend, n, role, work, party))
    print(json.dumps({"setup_extra": setup}))
    if role == "client":
        assert party is not None
        vec = _vec(ids.index(party), n)
        req = (work / f"request-{party}.bin").read_bytes()
        msg, extra = measured(
            lambda: session.client(party, rid, vec, weight=1.0).handle(req)
        )
        (work / f"msg-{party}.bin").write_bytes(msg)
        data = vec.nbytes + len(msg)
    elif role == "aggregator":
        agg = session.aggregator(rid, ids)
        agg.start()
        msgs = {c: (work / f"msg-{c}.bin").read_bytes() for c in ids}

        def run() -> bytes:
            agg.receive(msgs)
            return bytes(agg.result())

        result, extra = measured(run)
        (work / "result.bin").write_bytes(result)
        data = sum(len(m) for m in msgs.values()) + len(result)
    else:
        result = (work / "result.bin").read_bytes()
        rec, extra = measured(lambda: session.holder().recover(result))
        want = _vec(0, n) + _vec(1, n)
        data = len(result) + rec.vector.nbytes
        print(json.dumps({"max_abs_error": float(np.max(np.abs(rec.vector - want)))}))
    print(json.dumps({"peak_extra": extra, "data": data}))


def dealt_round(backend: str, n: int, roles: tuple[str, ...] = ROLES) -> dict[str, Any]:
    """Each role of a dealt backend in a fresh process (see the module docstring);
    only ``roles`` are measured (the ones before the last of them still run: the
    aggregator needs the clients' messages)."""
    from privagg.distribution import deal

    ids = ["c0", "c1"]
    out: dict[str, Any] = {"clients": 2, "isolation": "one process per role"}
    with tempfile.TemporaryDirectory(prefix="privagg-mem-") as tmp:
        work = Path(tmp)
        be = privagg.get_backend(backend, **OPTIONS[backend])
        material = deal(be, _layout(n), ids, max_clients=2)
        if material is not None:
            blobs = {"aggregator": material.aggregator, "holder": material.holder}
            blobs.update(material.clients)
            for name, blob in blobs.items():
                privagg.write_secret_file(work / f"material-{name}.bin", blob)
        agg = _session(backend, n, "aggregator", work, None).aggregator(1, ids)
        for c, req in agg.start().items():
            (work / f"request-{c}.bin").write_bytes(req)
        t0 = time.perf_counter()
        plan = [("client", c) for c in ids] + [("aggregator", None), ("holder", None)]
        last = max(ROLES.index(r) for r in roles)
        for role, party in plan:
            if ROLES.index(role) > last:
                break
            cmd = [
                sys.executable,
                __file__,
                "--child",
                role,
                "--backends",
                backend,
                "--values",
                str(n),
                "--work",
                str(work),
            ]
            if party:
                cmd += ["--party", party]
            t_role = time.perf_counter()
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            print(  # progress: a 1e8-value Paillier round takes hours
                f"{backend} {role}{' ' + party if party else ''}: "
                f"{time.perf_counter() - t_role:.0f} s, {res.stdout.strip().splitlines()[-1:]}",
                file=sys.stderr,
                flush=True,
            )
            if res.returncode != 0:
                raise RuntimeError(f"{backend} {role}: {res.stderr[-2000:]}")
            lines = [json.loads(x) for x in res.stdout.strip().splitlines()]
            fig = lines[-1]
            setup = max(x.get("setup_extra", 0) for x in lines)
            out.setdefault("setup_extra", {})[role] = max(
                out.get("setup_extra", {}).get(role, 0), setup
            )
            if role == "holder":
                out["max_abs_error"] = next(
                    x["max_abs_error"] for x in lines if "max_abs_error" in x
                )
            prev = out.get(role, {"peak_extra": 0, "data": 0})
            out[role] = {k: max(prev[k], fig[k]) for k in ("peak_extra", "data")}
        out["seconds"] = time.perf_counter() - t0
    for r in ROLES:
        if r not in roles:
            out.pop(r, None)
            continue
        d = out[r]["data"]
        out[r]["ratio"] = out[r]["peak_extra"] / d if d else None
    return out


def one_round(backend: str, n: int) -> dict[str, Any]:
    """Every role of an interactive backend in this process, stage by stage."""
    layout = privagg.Layout.from_arrays({"update": np.zeros(n, dtype=np.float64)})
    k = CLIENTS.get(backend, 2)
    ids = [f"c{i}" for i in range(k)]
    session = privagg.get_backend(backend, **OPTIONS[backend]).setup(
        layout, max_clients=k, max_weight=1.0
    )
    rid = session.next_round_id()
    gen = np.random.default_rng(0)  # benchmark data, not a secret
    vecs = {c: gen.uniform(-1, 1, n) for c in ids}
    role: dict[str, dict[str, int]] = {
        r: {"peak_extra": 0, "data": 0} for r in ("client", "aggregator", "holder")
    }

    def note(r: str, extra: int, data: int) -> None:
        role[r]["peak_extra"] = max(role[r]["peak_extra"], extra)
        role[r]["data"] = max(role[r]["data"], data)

    clients = {}
    for c in ids:
        clients[c], extra = measured(
            lambda c=c: session.client(c, rid, vecs[c], weight=1.0)
        )
        note("client", extra, vecs[c].nbytes)
    parties: dict[str, Any] = {**clients, **session.servers(rid)}
    agg = session.aggregator(rid, ids)
    outbox, extra = measured(agg.start)
    note("aggregator", extra, 0)
    t0 = time.perf_counter()
    while not agg.done:
        replies = {}
        for pid, req in outbox.items():
            replies[pid], extra = measured(lambda p=pid, q=req: parties[p].handle(q))
            if pid in clients:
                note("client", extra, vecs[pid].nbytes + len(replies[pid]))
        stage_bytes = sum(len(v) for v in replies.values())
        outbox, extra = measured(lambda r=replies: agg.receive(r))
        out_bytes = sum(len(v) for v in outbox.values())
        note("aggregator", extra, stage_bytes + out_bytes)
    result, extra = measured(agg.result)
    note("aggregator", extra, len(result))
    rec, extra = measured(lambda: session.holder().recover(result))
    note("holder", extra, len(result) + rec.vector.nbytes)
    want = sum(vecs.values())
    err = float(np.max(np.abs(rec.vector - want)))
    return {
        "clients": k,
        "isolation": "one process, every role",
        "seconds": time.perf_counter() - t0,
        "max_abs_error": err,
        **{
            r: {**v, "ratio": v["peak_extra"] / v["data"] if v["data"] else None}
            for r, v in role.items()
        },
    }


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--values", type=int, default=100_000_000)
    p.add_argument("--backends", default="plain,secagg,additive,ckks")
    p.add_argument(
        "--roles",
        default=",".join(ROLES),
        help="roles to measure, comma-separated (dealt backends: stops after the last)",
    )
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    p.add_argument("--party", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    n = 1_000_000 if a.quick else a.values
    if a.child:
        child(a.child, a.backends, n, Path(a.work), a.party)
        return
    print(f"# values: {n}", file=sys.stderr, flush=True)  # for a run stopped early
    figures: dict[str, Any] = {
        "values": n,
        "backends": {},
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "cpus": os.cpu_count(),
    }
    roles = tuple(r for r in ROLES if r in a.roles.split(","))
    if not roles or set(a.roles.split(",")) - set(ROLES):
        p.error(f"--roles: a comma-separated subset of {','.join(ROLES)}")
    for b in a.backends.split(","):
        if b not in privagg.available_backends():
            continue
        if b in DEALT:
            row = dealt_round(b, n, roles)
        else:  # every role runs in one process: keep only the roles asked for
            row = {
                k: v for k, v in one_round(b, n).items() if k not in ROLES or k in roles
            }
        figures["backends"][b] = row
        print(
            f"{b}: "
            + ", ".join(
                f"{r} {row[r]['peak_extra'] / 2**20:.0f} MiB "
                f"(x{row[r]['ratio']:.2f} of {row[r]['data'] / 2**20:.0f} MiB)"
                for r in ROLES
                if r in row and row[r]["ratio"] is not None
            ),
            flush=True,
        )
    emit("memory", figures)


if __name__ == "__main__":
    main()
