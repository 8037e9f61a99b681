"""CKKS aggregation benchmark: privagg's CKKS backend vs the naive FL-framework baseline.

Baseline (as common in FL frameworks): one TenSEAL ``ckks_vector`` per 4096-value chunk,
N=8192, coefficient moduli [60, 40, 40, 60], scale 2**40; clients encrypt and serialize
each chunk, the aggregator deserializes under the public context and adds, the holder
deserializes and decrypts.

privagg: ``CkksBackend`` (presets "secure", "secure-large" and "compact") driven through
the session API (client protect, aggregator combine, holder recover with
coefficient-domain flooding).

Figures per configuration (values are float32 in [-1, 1]): client encrypt, aggregate and
decrypt throughput (values/s; client and aggregate count clients x values), end-to-end
throughput (clients x values over the summed phase times), bytes per value uploaded by a
client, and max abs error of the released sum against a float64 reference.

Usage::

    python benchmarks/ckks.py --quick          # 3 clients x 100k values, < 1 min
    python benchmarks/ckks.py                  # 10 clients x 1M and 10M values
    python benchmarks/ckks.py --clock cpu      # CPU time per phase (shared machines)

The last line of output is one JSON object. Where the baseline is measured on a sample
of chunks and extrapolated (it is linear in the number of chunks), the JSON says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any

import numpy as np

import privagg
from privagg.backends.ckks import CkksBackend

CHUNK = 4096
# The phase clock: wall time (default) or this process's CPU time (``--clock cpu``,
# for a shared machine: it ignores time the process spent waiting for a core; the
# privagg side then runs inline, threads=1, so that no work hides in children).
_CLOCK = [time.perf_counter]


def _updates(n_clients: int, size: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, size).astype(np.float32) for _ in range(n_clients)]


class _Privagg:
    """privagg's CKKS roles for one preset, driven phase by phase."""

    def __init__(self, preset: str, ups: list[np.ndarray], threads: int | None) -> None:
        self.preset = preset
        self.n, self.size = len(ups), ups[0].size
        self.be = CkksBackend(preset=preset, threads=threads)
        layout = privagg.Layout.from_arrays({"w": ups[0]})
        t = _CLOCK[0]()
        self.session = self.be.setup(layout, max_clients=self.n)
        self.keygen_s = _CLOCK[0]() - t
        self.ids = [f"c{i}" for i in range(self.n)]
        self.agg = self.session.aggregator(0, self.ids)
        self.requests = self.agg.start()
        self.replies: dict[str, bytes] = {}
        self.t = {"encrypt": 0.0, "aggregate": 0.0, "decrypt": 0.0}
        self.out: np.ndarray | None = None

    def encrypt(self, i: int, u: np.ndarray) -> None:
        cid = self.ids[i]
        t = _CLOCK[0]()
        vec = self.session.layout.flatten({"w": u})
        self.replies[cid] = self.session.client(cid, 0, vec).handle(self.requests[cid])
        self.t["encrypt"] += _CLOCK[0]() - t

    def aggregate(self) -> None:
        t = _CLOCK[0]()
        self.agg.receive(self.replies)
        self.t["aggregate"] += _CLOCK[0]() - t

    def decrypt(self) -> None:
        t = _CLOCK[0]()
        self.out = self.session.holder().recover(self.agg.result()).vector
        self.t["decrypt"] += _CLOCK[0]() - t

    def figures(self, ref: np.ndarray) -> dict[str, Any]:
        n, size, tm = self.n, self.size, self.t
        p = self.be.params
        assert self.out is not None
        return {
            "preset": self.preset,
            "params": {
                "poly_modulus_degree": p.poly_modulus_degree,
                "data_bits": list(p.data_bits),
                "special_bits": p.special_bits,
                "scale_bits": p.scale_bits,
                "flood_bits": p.flood_bits,
            },
            "keygen_s": self.keygen_s,
            "encrypt_s": tm["encrypt"],
            "aggregate_s": tm["aggregate"],
            "decrypt_s": tm["decrypt"],
            "encrypt_values_per_s": n * size / tm["encrypt"],
            "aggregate_values_per_s": n * size / tm["aggregate"],
            "decrypt_values_per_s": size / tm["decrypt"],
            "end_to_end_values_per_s": n * size / sum(tm.values()),
            "bytes_per_value": sum(len(r) for r in self.replies.values()) / n / size,
            "max_abs_error": float(np.max(np.abs(self.out - ref))),
            "declared_tolerance": self.be.tolerance(n_clients=n, max_abs=1.0),
        }


class _Baseline:
    """The naive TenSEAL baseline on (at most) ``max_chunks`` chunks per client."""

    def __init__(self, ups: list[np.ndarray], max_chunks: int | None) -> None:
        import tenseal as ts

        self.ts = ts
        self.n, self.size = len(ups), ups[0].size
        total = -(-self.size // CHUNK)
        self.chunks = total if max_chunks is None else min(total, max_chunks)
        self.measured = min(self.size, self.chunks * CHUNK)
        ctx = ts.context(
            ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60]
        )
        ctx.global_scale = 2.0**40
        self.ctx = ctx
        self.public = ts.context_from(ctx.serialize(save_secret_key=False))
        self.blobs: list[list[bytes]] = []
        self.agg: list[bytes] = []
        self.t = {"encrypt": 0.0, "aggregate": 0.0, "decrypt": 0.0}
        self.out: np.ndarray | None = None

    def encrypt(self, u: np.ndarray) -> None:
        ts, m = self.ts, self.measured
        t = _CLOCK[0]()
        self.blobs.append(
            [
                ts.ckks_vector(
                    self.ctx, u[i * CHUNK : min((i + 1) * CHUNK, m)]
                ).serialize()
                for i in range(self.chunks)
            ]
        )
        self.t["encrypt"] += _CLOCK[0]() - t

    def aggregate(self) -> None:
        ts = self.ts
        t = _CLOCK[0]()
        for i in range(self.chunks):
            acc = ts.ckks_vector_from(self.public, self.blobs[0][i])
            for c in range(1, self.n):
                acc += ts.ckks_vector_from(self.public, self.blobs[c][i])
            self.agg.append(acc.serialize())
        self.t["aggregate"] += _CLOCK[0]() - t

    def decrypt(self) -> None:
        ts = self.ts
        t = _CLOCK[0]()
        self.out = np.concatenate(
            [np.asarray(ts.ckks_vector_from(self.ctx, b).decrypt()) for b in self.agg]
        )
        self.t["decrypt"] += _CLOCK[0]() - t

    def figures(self, ref: np.ndarray) -> dict[str, Any]:
        n, size, m = self.n, self.size, self.measured
        assert self.out is not None
        f = size / m  # linear extrapolation factor (1.0 when fully measured)
        enc, agg, dec = (self.t[k] * f for k in ("encrypt", "aggregate", "decrypt"))
        return {
            "encrypt_s": enc,
            "aggregate_s": agg,
            "decrypt_s": dec,
            "encrypt_values_per_s": n * size / enc,
            "aggregate_values_per_s": n * size / agg,
            "decrypt_values_per_s": size / dec,
            "end_to_end_values_per_s": n * size / (enc + agg + dec),
            "bytes_per_value": sum(len(b) for b in self.blobs[0]) / m,
            "max_abs_error": float(np.max(np.abs(self.out[:m] - ref[:m]))),
            "measured_values_per_client": m,
            "extrapolated": m < size,
        }


def run_size(
    ups: list[np.ndarray],
    presets: list[str],
    threads: int | None,
    max_chunks: int | None,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Baseline and every preset, interleaved client by client and phase by phase, so
    that all of them see the same background load on a shared machine."""
    base = _Baseline(ups, max_chunks)
    ours = {p: _Privagg(p, ups, threads) for p in presets}
    for i, u in enumerate(ups):
        base.encrypt(u)
        for o in ours.values():
            o.encrypt(i, u)
    base.aggregate()
    for o in ours.values():
        o.aggregate()
    base.decrypt()
    for o in ours.values():
        o.decrypt()
    ref = np.sum([u.astype(np.float64) for u in ups], axis=0)
    return base.figures(ref), {p: o.figures(ref) for p, o in ours.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--quick", action="store_true", help="3 clients x 100k values")
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--sizes", default="1000000,10000000", help="comma-separated")
    ap.add_argument(
        "--presets",
        default="secure,secure-large,compact",
        help="first one is the headline",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="worker processes (default: all cores)",
    )
    ap.add_argument(
        "--baseline-max-values",
        type=int,
        default=1_000_000,
        help="measure the baseline on at most this many values per client, extrapolate beyond",
    )
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="phase timer: wall time, or process CPU time (forces --threads 1)",
    )
    args = ap.parse_args()
    if args.clock == "cpu":
        _CLOCK[0] = time.process_time
        args.threads = 1
    if args.quick:
        args.clients, sizes = 3, [100_000]
    else:
        sizes = [int(s) for s in args.sizes.split(",") if s]
    presets = [p for p in args.presets.split(",") if p]
    max_chunks = -(-args.baseline_max_values // CHUNK)

    results = []
    load_before = os.getloadavg()
    for size in sizes:
        ups = _updates(args.clients, size, seed=size)
        base, ours_all = run_size(ups, presets, args.threads, max_chunks)
        print(
            f"[baseline] clients={args.clients} size={size}: {json.dumps(base)}",
            flush=True,
        )
        for preset in presets:
            ours = ours_all[preset]
            ours["speedup_vs_baseline"] = (
                ours["end_to_end_values_per_s"] / base["end_to_end_values_per_s"]
            )
            ours["encrypt_speedup"] = (
                ours["encrypt_values_per_s"] / base["encrypt_values_per_s"]
            )
            ours["aggregate_speedup"] = (
                ours["aggregate_values_per_s"] / base["aggregate_values_per_s"]
            )
            ours["decrypt_speedup"] = (
                ours["decrypt_values_per_s"] / base["decrypt_values_per_s"]
            )
            ours["bytes_ratio_vs_baseline"] = (
                ours["bytes_per_value"] / base["bytes_per_value"]
            )
            print(
                f"[privagg] clients={args.clients} size={size}: {json.dumps(ours)}",
                flush=True,
            )
            results.append(
                {
                    "clients": args.clients,
                    "size": size,
                    "privagg": ours,
                    "baseline": base,
                }
            )
        del ups

    head = [r for r in results if r["privagg"]["preset"] == presets[0]]
    summary = {
        "benchmark": "ckks",
        "quick": args.quick,
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "clock": args.clock,
        "interleaved": "client by client, phase by phase (same background load)",
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "machine": platform.machine(),
        "headline_preset": presets[0],
        "speedup_vs_baseline": min(r["privagg"]["speedup_vs_baseline"] for r in head),
        "bytes_per_value": max(r["privagg"]["bytes_per_value"] for r in head),
        "max_abs_error": max(r["privagg"]["max_abs_error"] for r in head),
        "baseline_bytes_per_value": head[0]["baseline"]["bytes_per_value"],
        "by_preset": {
            p: {
                "speedup_vs_baseline": min(
                    r["privagg"]["speedup_vs_baseline"]
                    for r in results
                    if r["privagg"]["preset"] == p
                ),
                "bytes_per_value": max(
                    r["privagg"]["bytes_per_value"]
                    for r in results
                    if r["privagg"]["preset"] == p
                ),
                "max_abs_error": max(
                    r["privagg"]["max_abs_error"]
                    for r in results
                    if r["privagg"]["preset"] == p
                ),
            }
            for p in presets
        },
        "runs": results,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
