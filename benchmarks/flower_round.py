"""A round on Flower's deployment engine beside the same round in one process.

Starts a real loopback deployment (``fedtrain.flower.launch.LocalDeployment``: a
SuperLink and 3 client SuperNodes as separate processes, TLS and SuperNode
authentication on, plus a result-holder SuperNode for backends whose holder has a
secret key), runs the synthetic task (each client's update: N float32 values) for two
rounds, and takes the ServerApp's own round time (aggregation stages + recovery; the
model and key material are set up before). The anchor is the same round with every
role in this process (``privagg.run_round`` on a session set up once), measured in the
same run.

    python benchmarks/flower_round.py                       # 3 nodes x 1e6 values
    python benchmarks/flower_round.py --quick               # 3 nodes x 1e4 values
    python benchmarks/flower_round.py --backends ckks,secagg,paillier --values 100000

The last line is JSON: per backend ``deployment_round_s``, ``inprocess_round_s`` and
``ratio_vs_inprocess``; the top-level ``ratio_vs_inprocess`` is CKKS's (the headline).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, parser

import privagg
from fedtrain.flower.launch import LocalDeployment
from fedtrain.flower.material import SessionSpec, deal
from fedtrain.flower.tasks import parse_shapes, synthetic_update

APP = Path(__file__).resolve().parents[1] / "examples" / "flower_deployment"
PARTIES = ("client-0", "client-1", "client-2")
OPTIONS: dict[str, dict[str, Any]] = {
    "plain": {},
    "ckks": {},  # the default, provably flooded `secure` preset
    "secagg": {"active": False},  # the variant Flower can deploy today
    "paillier": {},
}


def inprocess_round(backend: str, shapes: str, repeat: int = 2) -> float:
    """Best wall time of one round with every role in this process (keys set up once)."""
    layout = parse_shapes(shapes)
    be = privagg.get_backend(backend, **OPTIONS[backend])
    session = be.setup(layout, max_clients=len(PARTIES), max_weight=1.0)
    best = float("inf")
    for r in range(1, repeat + 1):
        updates = {p: synthetic_update(p, r, layout) for p in PARTIES}
        t = time.perf_counter()
        privagg.run_round(session, updates, weights=dict.fromkeys(PARTIES, 1.0))
        best = min(best, time.perf_counter() - t)
    return best


def deployment_round(backend: str, shapes: str, rounds: int = 2) -> dict[str, Any]:
    """The ServerApp's round time on a loopback deployment (best of ``rounds``)."""
    with tempfile.TemporaryDirectory(prefix="flower-bench-") as tmp:
        work = Path(tmp)
        spec = SessionSpec(
            backend, OPTIONS[backend], max_clients=len(PARTIES), max_weight=1.0
        )
        paths = deal(spec, parse_shapes(shapes), list(PARTIES), work / "material")
        nodes: list[dict[str, Any]] = []
        for pid in PARTIES:
            cfg: dict[str, Any] = {
                "party-id": pid,
                "privagg-weight": 1.0,
                "privagg-backends": backend,
            }
            if paths:
                cfg["privagg-material"] = str(paths[pid])
            nodes.append(cfg)
        run: dict[str, Any] = {
            "backend": backend,
            "backend-options": json.dumps(OPTIONS[backend]),
            "shapes": shapes,
            "rounds": rounds,
            "min-nodes": len(PARTIES),
            "stage-timeout": 600.0,
            "holder": "server",
            "result-path": str(work / "result.json"),
        }
        if paths:
            nodes.append(
                {
                    "privagg-holder": True,
                    "privagg-holder-material": str(paths["holder"]),
                }
            )
            run["holder"] = "node"
            run["min-nodes"] = len(nodes)
            run["aggregator-material"] = str(paths["aggregator"])
        t = time.perf_counter()
        with LocalDeployment(work / "deployment", nodes) as d:
            started = time.perf_counter() - t
            d.run_app(APP, run, timeout=1800.0)
        res = json.loads((work / "result.json").read_text())
        secs = [float(r["seconds"]) for r in res["rounds"]]
        return {
            "deployment_round_s": min(secs),
            "deployment_rounds_s": secs,
            "deployment_start_s": started,
            "contributors": res["rounds"][-1]["contributors"],
        }


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--values", type=int, default=1_000_000)
    p.add_argument("--backends", default="ckks,secagg")
    a = p.parse_args()
    n = 10_000 if a.quick else a.values
    shapes = f"update:float32:{n}"
    figures: dict[str, Any] = {"nodes": len(PARTIES), "values": n, "backends": {}}
    for backend in a.backends.split(","):
        if backend not in privagg.available_backends():
            print(f"{backend}: not available, skipped", flush=True)
            continue
        dep = deployment_round(backend, shapes)
        inp = inprocess_round(backend, shapes)
        row = {
            **dep,
            "inprocess_round_s": inp,
            "ratio_vs_inprocess": dep["deployment_round_s"] / inp,
        }
        figures["backends"][backend] = row
        print(
            f"{backend}: deployment {dep['deployment_round_s']:.2f} s/round, "
            f"in-process {inp:.2f} s/round: x{row['ratio_vs_inprocess']:.2f}",
            flush=True,
        )
    head = figures["backends"].get("ckks") or next(
        iter(figures["backends"].values()), {}
    )
    figures["ratio_vs_inprocess"] = head.get("ratio_vs_inprocess")
    emit("flower_round", figures)


if __name__ == "__main__":
    main()
