"""Paillier backend (packed, DJN, CRT, threads) vs naive phe (one EncryptedNumber per value).

Both sides use the same key size. The packed backend runs the whole round through
``privagg.run_round`` (envelopes included): client encryption, aggregation, decryption.
The naive anchor is phe used directly: ``public_key.encrypt(float)`` per value,
``EncryptedNumber.__add__`` across clients, ``private_key.decrypt`` per value. Naive phe
takes hours at full size, so it is timed on a sample of values in the same run and
**extrapolated linearly** to the full size (per-value cost times the value count; phe's
per-value cost does not depend on the vector length). The JSON says so.

Bytes per value: packed = the client's whole upload (envelope) / values. Naive = the
most compact binary form of one EncryptedNumber: a fixed-width ciphertext
(``2 * key_bits / 8`` bytes) plus a 2-byte exponent, with no envelope at all (phe's own
JSON serialisation is larger), so the ratio is conservative.

Usage: python benchmarks/paillier.py [--quick] [--clients 5] [--values 100000]
       [--key-bits 3072] [--workers N] [--naive-sample 200]

The default key size is the backend's: 3072 bits (~128-bit security, NIST SP 800-57);
``--key-bits 2048`` (~112-bit) measures the smaller size.
"""

from __future__ import annotations

import os
import time

import numpy as np
from _common import emit, parser, timed
from phe import paillier as phe_paillier

import privagg
from privagg.backends.paillier import PaillierBackend


def _naive(key_bits: int, samples: list[np.ndarray]) -> dict[str, float]:
    """Per-value seconds of naive phe on ``samples`` (one float vector per client)."""
    pub, priv = phe_paillier.generate_paillier_keypair(n_length=key_bits)
    n_clients, n = len(samples), samples[0].size
    t = time.perf_counter()
    enc = [[pub.encrypt(float(x)) for x in s] for s in samples]
    t_enc = (time.perf_counter() - t) / (n_clients * n)
    t = time.perf_counter()
    sums = []
    for j in range(n):
        acc = enc[0][j]
        for c in range(1, n_clients):
            acc = acc + enc[c][j]
        sums.append(acc)
    t_add = (
        time.perf_counter() - t
    ) / n  # per value of the vector (n_clients - 1 adds)
    t = time.perf_counter()
    dec = np.array([priv.decrypt(e) for e in sums])
    t_dec = (time.perf_counter() - t) / n
    err = float(np.max(np.abs(dec - np.sum(samples, axis=0))))
    ct_bytes = (2 * key_bits + 7) // 8
    return {
        "encrypt_s_per_value": t_enc,
        "aggregate_s_per_value": t_add,
        "decrypt_s_per_value": t_dec,
        "bytes_per_value": float(ct_bytes + 2),
        "max_abs_error": err,
    }


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--clients", type=int, default=5)
    p.add_argument("--values", type=int, default=100_000)
    p.add_argument("--key-bits", type=int, default=3072, choices=(2048, 3072))
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--naive-sample", type=int, default=200)
    args = p.parse_args()
    if args.quick:
        args.values, args.naive_sample = (
            min(args.values, 10_000),
            min(args.naive_sample, 10),
        )
    k, size = args.clients, args.values

    rng = np.random.default_rng(0)  # test data only
    ups = {f"c{i}": {"w": rng.uniform(-1.0, 1.0, size=size)} for i in range(k)}
    layout = privagg.Layout.from_arrays(ups["c0"])
    be = PaillierBackend(key_bits=args.key_bits, workers=args.workers)
    session, t_setup = timed(lambda: be.setup(layout, max_clients=k))
    codec = session.client_codec
    slots = codec.params.slots  # type: ignore[attr-defined]
    # the DJN fixed-base table is built once per public key per process; build it here so
    # its cost is reported on its own (the simulated clients share one process)
    _, t_table = timed(codec._fixed_base)  # type: ignore[attr-defined]
    res = privagg.run_round(session, ups)
    ref = np.sum([u["w"] for u in ups.values()], axis=0)
    err = float(np.max(np.abs(res.vector - ref)))
    tol = be.tolerance(n_clients=k, max_abs=1.0)
    t_enc, t_agg, t_dec = (res.timings[x] for x in ("protect", "aggregate", "recover"))
    total = t_table + t_enc + t_agg + t_dec
    total_own_tables = total + (k - 1) * t_table  # every client builds its own table
    upload = float(np.mean(list(res.bytes_sent.values())))
    packed = {
        "setup_keygen_s": t_setup,
        "fixed_base_table_s": t_table,
        "client_encrypt_s": t_enc,
        "aggregate_s": t_agg,
        "decrypt_s": t_dec,
        "end_to_end_s": total,
        "end_to_end_s_note": "table + encrypt (all clients) + aggregate + decrypt; keygen excluded",
        "end_to_end_s_one_table_per_client": total_own_tables,
        "client_encrypt_values_per_s": k * size / t_enc,
        "aggregate_values_per_s": k * size / t_agg,
        "decrypt_values_per_s": size / t_dec,
        "end_to_end_values_per_s": k * size / total,
        "bytes_per_value": upload / size,
        "slot_bits": slots.slot_bits,
        "slots_per_ciphertext": slots.slots,
        "ciphertexts_per_client": slots.n_plaintexts,
        "max_abs_error": err,
        "tolerance": tol,
    }

    sample = min(args.naive_sample, size)
    nv = _naive(args.key_bits, [u["w"][:sample] for u in ups.values()])
    n_enc = nv["encrypt_s_per_value"] * k * size
    n_agg = nv["aggregate_s_per_value"] * size
    n_dec = nv["decrypt_s_per_value"] * size
    n_total = n_enc + n_agg + n_dec
    naive = {
        **nv,
        "extrapolated": True,
        "sample_values_per_client": sample,
        "client_encrypt_s": n_enc,
        "aggregate_s": n_agg,
        "decrypt_s": n_dec,
        "end_to_end_s": n_total,
        "end_to_end_values_per_s": k * size / n_total,
        "method": (
            f"phe {phe_paillier.__name__}: encrypt/add/decrypt timed on {sample} values per "
            f"client x {k} clients, per-value cost x {size} values (linear extrapolation)"
        ),
    }
    emit(
        "paillier",
        {
            "config": {
                "clients": k,
                "values_per_client": size,
                "key_bits": args.key_bits,
                "workers": args.workers,
                "quick": args.quick,
                "bound": be.bound,
                "scale_bits": be.scale_bits,
                "cpu_count": os.cpu_count(),
            },
            "packed": packed,
            "naive_phe": naive,
            "speedup_vs_baseline": n_total / total,
            "speedup_vs_baseline_one_table_per_client": n_total / total_own_tables,
            "speedup_encrypt": n_enc / (t_enc + t_table),
            "speedup_aggregate": n_agg / t_agg,
            "speedup_decrypt": n_dec / t_dec,
            "bytes_ratio_vs_baseline": packed["bytes_per_value"]
            / nv["bytes_per_value"],
            "targets": {
                "speedup_ge_100": n_total / total >= 100,
                "bytes_ratio_le_1_50": packed["bytes_per_value"] / nv["bytes_per_value"]
                <= 1 / 50,
                "error_within_tolerance": err <= tol,
            },
        },
    )


if __name__ == "__main__":
    main()
