"""Benchmark: privagg SecAgg+ and additive sharing vs numpy summation and Flower's SecAgg+.

For every (n clients, P values, dropout) configuration, in the same process and run:

* ``secagg``: privagg SecAgg+ with the defaults (sparse Harary graph, ``k`` and ``t`` from
  dropout_rate=1/3, corruption_rate=0.1; active variant with Ed25519 signatures and the
  consistency round ON), all roles driven by :func:`privagg.run_round`;
* ``secagg_semi_honest``: the same graph, ``k``, ``t`` without signatures/consistency round
  (what Flower implements);
* ``flower``: Flower 1.x ``SecAggPlusWorkflow`` + ``secaggplus_mod``, driven in-process
  by a minimal Grid that serialises every message through Flower's protobuf serde (as the
  wire would), with ``num_shares = k + 1`` and ``reconstruction_threshold = t`` (Flower
  counts the client itself among the share holders, as privagg does);
* ``additive``: privagg multi-server additive sharing (2 servers), end to end, and
  (``additive_roles``) role by role plus each server's aggregation arithmetic alone and
  the AES-128-CTR / BLAKE3 floors (see :func:`run_additive_roles`); the summary keeps
  the end-to-end ratio (``additive_vs_numpy``) and the per-server ratios
  (``additive_server*_compute_vs_numpy``) under separate, explicit keys;
* ``numpy``: a float64 ``acc += v`` loop over the clients' vectors, and the ``plain``
  backend round (same envelopes, no protection);
* ``floor`` (in ``secagg``, ``secagg_semi_honest``, ``additive``): the round's
  cryptography alone (keystream + one integrity pass + signatures, counted in one
  untimed round and priced at this machine's best throughput, :func:`round_floor`),
  and ``vs_floor``, the round's CPU time over it (target: <= 1.5).

Dropouts: ``drop`` of the clients stop answering after the key-sharing stage (before the
masked upload), the expensive case in which the server reconstructs their mask keys.

Times are wall-clock seconds and process CPU seconds (the machine may be shared: CPU
time is the more stable basis; both are reported, ratios use CPU time).

Usage::

    python benchmarks/secagg.py --quick          # < 1 minute
    python benchmarks/secagg.py                  # full grid, ~10 minutes

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import numpy as np

import privagg
from privagg import Layout
from privagg.backends.additive import AdditiveBackend
from privagg.backends.plain import PlainBackend
from privagg.backends.secagg import SecAggBackend

# -- timing helpers ---------------------------------------------------------------------------


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    gc.collect()
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def _best(fn: Callable[[], dict[str, Any]], repeats: int) -> dict[str, Any]:
    """Run ``fn`` ``repeats`` times; keep the run with the least CPU time (the first run
    of a configuration also pays for first-touch page faults of fresh buffers)."""
    runs = [fn() for _ in range(max(1, repeats))]
    best = min(runs, key=lambda r: r["round_cpu_s"])
    best["repeats"] = len(runs)
    best["round_wall_s_all"] = [r["round_wall_s"] for r in runs]
    best["round_cpu_s_all"] = [r["round_cpu_s"] for r in runs]
    return best


def _vectors(n: int, p: int) -> dict[str, np.ndarray]:
    g = np.random.default_rng(12345)
    return {f"c{i:03d}": g.uniform(-1.0, 1.0, p) for i in range(n)}


def _dropped(ids: list[str], drop: float) -> set[str]:
    return set(ids[: math.floor(drop * len(ids))])


# -- privagg -------------------------------------------------------------------------------------
def run_privagg(
    backend: Any, vecs: dict[str, np.ndarray], drop: float, stage: int
) -> dict[str, Any]:
    ids = sorted(vecs)
    p = len(next(iter(vecs.values())))
    ups = {c: {"w": v} for c, v in vecs.items()}
    session = backend.setup(Layout.from_arrays(ups[ids[0]]), max_clients=len(ids))
    dropouts = {stage: _dropped(ids, drop)} if drop else None
    res, wall, cpu = _timed(lambda: privagg.run_round(session, ups, dropouts=dropouts))
    ref = np.sum([vecs[c] for c in res.contributors], axis=0)
    active = [c for c in ids if res.bytes_sent[c]]
    uploaded = [res.bytes_sent[c] for c in res.contributors]
    return {
        "round_wall_s": wall,
        "round_cpu_s": cpu,
        "client_compute_s_per_client": res.timings["protect"] / max(1, len(active)),
        "server_compute_s": res.timings["aggregate"] + res.timings["recover"],
        "bytes_per_client": max(uploaded),
        "expansion_vs_int32": max(uploaded) / (4 * p),
        "contributors": len(res.contributors),
        "max_abs_error": float(np.max(np.abs(res.vector - ref))),
    }


def run_numpy(vecs: dict[str, np.ndarray]) -> dict[str, Any]:
    arrs = list(vecs.values())

    def loop() -> np.ndarray:
        acc = np.zeros_like(arrs[0])
        for a in arrs:
            acc += a
        return acc

    _, wall, cpu = _timed(loop)
    return {"round_wall_s": wall, "round_cpu_s": cpu}


# -- the floor of a round ---------------------------------------------------------------------
@contextlib.contextmanager
def _counting() -> Iterator[dict[str, int]]:
    """Count what a round's cryptography must do, by wrapping the call sites (untimed):
    mask keystream bytes (AES-128-CTR), rounding-coin bytes (AES-256-CTR), Ed25519
    signatures and verifications, and the bytes of every message sealed."""
    from privagg.backends import _masking, _wire
    from privagg.backends.additive import roles as ad_roles
    from privagg.backends.secagg import aggregator as sa_agg
    from privagg.backends.secagg import client as sa_client

    c = dict.fromkeys(
        ("mask_bytes", "coin_bytes", "sign", "verify", "ecdh", "message_bytes"), 0
    )
    saved: list[tuple[Any, str, Any]] = []

    def patch(mod: Any, name: str, wrap: Callable[[Any], Any]) -> None:
        saved.append((mod, name, getattr(mod, name)))
        setattr(mod, name, wrap(getattr(mod, name)))

    def encode(fn: Any) -> Any:
        def w(encoder: Any, update: Any, *a: Any, **k: Any) -> Any:
            size = np.asarray(update).size
            c["coin_bytes"] += 4 * size
            c["mask_bytes"] += (
                len(k.get("masks", ())) * size * np.dtype(k["dtype"]).itemsize
            )
            return fn(encoder, update, *a, **k)

        return w

    def add(fn: Any) -> Any:
        def w(acc: Any, seeds: Any) -> Any:
            c["mask_bytes"] += len(seeds) * acc.nbytes
            return fn(acc, seeds)

        return w

    def counted(key: str) -> Callable[[Any], Any]:
        def wrap(fn: Any) -> Any:
            def w(*a: Any) -> Any:
                c[key] += 1
                return fn(*a)

            return w

        return wrap

    def seal(fn: Any) -> Any:
        def w(*a: Any) -> Any:
            out = fn(*a)
            c["message_bytes"] += len(out)
            return out

        return w

    patch(_masking, "encode_to_ring", encode)
    patch(sa_agg, "add_masks", add)
    patch(ad_roles, "add_masks", add)
    patch(sa_client, "ed25519_sign", counted("sign"))
    patch(sa_client, "ed25519_verify", counted("verify"))
    patch(sa_agg, "ed25519_verify", counted("verify"))
    patch(_wire, "seal", seal)
    for mod in (sa_client, sa_agg, ad_roles, _masking):
        patch(mod, "ecdh", counted("ecdh"))
    try:
        yield c
    finally:
        for mod, name, fn in reversed(saved):
            setattr(mod, name, fn)


_PRIMS: dict[str, float] = {}


def _primitive_costs() -> dict[str, float]:
    """Seconds per byte of AES-128-CTR, AES-256-CTR and BLAKE3 (16 MiB, best of 5), and
    seconds per Ed25519 signature and verification and per X25519 agreement (best of
    5 x 100)."""
    if _PRIMS:
        return _PRIMS
    import os

    from blake3 import blake3
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    from privagg.backends._primitives import (
        ecdh,
        ed25519_key,
        ed25519_public,
        ed25519_sign,
        ed25519_verify,
        x25519_key,
        x25519_public,
    )

    # keystream into a cache-resident 128 KiB buffer (the masking code's block for
    # uint32 words; its best case), digests over 1 MiB slices of 16 MiB in memory
    total, chunk, block = 16 << 20, 1 << 20, 1 << 17
    zeros, buf = bytes(block), bytearray(block + 15)
    data = os.urandom(total)

    def ctr(alg: Any) -> Callable[[], None]:
        def run() -> None:
            enc = Cipher(
                alg(os.urandom(alg.key_size // 8)), modes.CTR(bytes(16))
            ).encryptor()
            for _ in range(total // block):
                enc.update_into(zeros, buf)

        return run

    def digest() -> None:
        for pos in range(0, total, chunk):
            blake3(data[pos : pos + chunk]).digest(16)

    sk = os.urandom(32)
    pk, msg = ed25519_public(sk), b"x" * 200
    # a signature with a key object built once (as a SecAgg+ client signs), not
    # counting the key's construction (a scalar multiplication of its own)
    signer = ed25519_key(sk)
    sig = ed25519_sign(signer, msg)
    xk, xpk = x25519_key(os.urandom(32)), x25519_public(os.urandom(32))
    _PRIMS.update(
        aes128_s_per_byte=_min_cpu(ctr(algorithms.AES128)) / total,
        aes256_s_per_byte=_min_cpu(ctr(algorithms.AES256)) / total,
        blake3_s_per_byte=_min_cpu(digest) / total,
        sign_s=_min_cpu(lambda: [ed25519_sign(signer, msg) for _ in range(100)]) / 100,
        verify_s=_min_cpu(lambda: [ed25519_verify(pk, sig, msg) for _ in range(100)])
        / 100,
        ecdh_s=_min_cpu(lambda: [ecdh(xk, xpk) for _ in range(100)]) / 100,
    )
    return _PRIMS


def round_floor(
    backend: Any, vecs: dict[str, np.ndarray], drop: float, stage: int
) -> dict[str, Any]:
    """The floor of one round: what its cryptography costs alone, at this machine's best
    throughput. Counted in one untimed round (:func:`_counting`), priced with
    :func:`_primitive_costs`:

    * keystream: every mask byte the round expands (clients' pairwise and self masks,
      the server's removal of self masks and of dropped clients' pairwise masks:
      AES-128-CTR) and the clients' rounding coins (AES-256-CTR);
    * one integrity pass: BLAKE3 over every message of the round, once;
    * signatures: every Ed25519 signature and verification of the round.
    """
    with _counting() as c:
        run_privagg(backend, vecs, drop, stage)
    k = _primitive_costs()
    parts = {
        "keystream_s": c["mask_bytes"] * k["aes128_s_per_byte"]
        + c["coin_bytes"] * k["aes256_s_per_byte"],
        "integrity_s": c["message_bytes"] * k["blake3_s_per_byte"],
        "signatures_s": c["sign"] * k["sign_s"] + c["verify"] * k["verify_s"],
    }
    floor = sum(parts.values())
    # not part of the floor (its definition: keystream + integrity + signatures), shown
    # beside it: the X25519 agreements the protocol needs (2 per neighbour per client)
    kx = c["ecdh"] * k["ecdh_s"]
    # work the round cannot skip that the floor leaves out, at the same best prices:
    # the agreements and the receiver's digest check (every message is hashed by its
    # sender and again by its receiver; the floor counts one pass). floor + this is
    # the least round any implementation of this protocol and envelope could show
    # here before encoding, mask additions, sums, copies or orchestration:
    # ``least_vs_floor`` is that round over the floor (issue #16's target is 1.5).
    required = kx + parts["integrity_s"]
    return {
        "floor_s": floor,
        **parts,
        "key_agreement_s": kx,
        "floor_with_key_agreement_s": floor + kx,
        "required_outside_floor_s": required,
        "least_vs_floor": (floor + required) / floor if floor else None,
        **c,
    }


def _min_cpu(fn: Callable[[], Any], repeats: int = 5) -> float:
    """Least process CPU seconds of ``repeats`` calls of ``fn`` (short kernels)."""
    best = math.inf
    for _ in range(repeats):
        c = time.process_time()
        fn()
        best = min(best, time.process_time() - c)
    return best


def run_additive_roles(vecs: dict[str, np.ndarray], numpy_cpu: float) -> dict[str, Any]:
    """The additive round (2 servers) role by role, and its aggregation arithmetic alone.

    * ``*_with_wire_s``: each role's ``handle``/``receive``/``recover`` call on the real
      message bytes (envelope digest check, decoding, AES-GCM, arithmetic);
    * ``server0_sum_s``: server 0's arithmetic only: ``acc += share`` over the n decoded
      uint32 share vectors (the same loop as a numpy sum, on half the bytes);
    * ``server1_expand_sum_s``: server 1's arithmetic only: AES-128-CTR expansion of n
      seeds added into the accumulator (:func:`add_masks`, the code server 1 runs);
    * ``aes_ctr_floor_s``: the AES-128-CTR keystream alone for the ``n * 4P`` bytes a
      seed-holding server must expand, at this machine's best throughput (1 MiB chunks);
    * ``blake3_floor_s``: the envelope digest (BLAKE3) over the ``n * 4P`` upload
      bytes, which the sender and the receiver each compute once.
    """
    import os

    from blake3 import blake3
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    from privagg.backends._ringcode import add_masks
    from privagg.backends.additive import ClientShares

    ids = sorted(vecs)
    n, p = len(ids), len(next(iter(vecs.values())))
    sess = AdditiveBackend().setup(
        Layout.from_arrays({"w": np.zeros(p)}), max_clients=n
    )
    agg = sess.aggregator(0, ids)
    reqs = agg.start()
    clients = {c: sess.client(c, 0, vecs[c]) for c in ids}
    gc.collect()
    c0 = time.process_time()
    replies = {c: clients[c].handle(reqs[c]) for c in ids}
    c1 = time.process_time()
    server_reqs = agg.receive(replies)
    c2 = time.process_time()
    servers = sess.servers(0)
    partials = {sid: servers[sid].handle(r) for sid, r in server_reqs.items()}
    c3 = time.process_time()
    agg.receive(partials)
    res = sess.holder().recover(agg.result())
    c4 = time.process_time()
    ref = np.sum([vecs[c] for c in ids], axis=0)
    shares = [ClientShares.from_bytes(replies[c]).share0 for c in ids]
    dt = shares[0].dtype

    def server0_sum() -> None:
        acc = np.zeros(p, dt)
        for s in shares:
            np.add(acc, s, out=acc)

    seeds = [(os.urandom(32), 1) for _ in ids]

    def server1_sum() -> None:
        add_masks(np.zeros(p, dt), seeds)

    nbytes = n * p * dt.itemsize
    chunk = 1 << 20
    zeros, buf = bytes(chunk), bytearray(chunk + 15)

    def aes_floor() -> None:
        enc = Cipher(
            algorithms.AES128(os.urandom(16)), modes.CTR(bytes(16))
        ).encryptor()
        for pos in range(0, nbytes, chunk):
            enc.update_into(zeros[: min(chunk, nbytes - pos)], buf)

    upload = [replies[c] for c in ids]

    def blake3_floor() -> None:
        for u in upload:
            blake3(u).digest(16)

    s0, s1 = _min_cpu(server0_sum), _min_cpu(server1_sum)
    aes, b3 = _min_cpu(aes_floor), _min_cpu(blake3_floor)
    return {
        "clients_with_wire_s": c1 - c0,
        "server0_with_wire_s": c2 - c1,
        "server1_with_wire_s": c3 - c2,
        "holder_with_wire_s": c4 - c3,
        "server0_sum_s": s0,
        "server1_expand_sum_s": s1,
        "aes_ctr_floor_s": aes,
        "aes_ctr_gbps": nbytes / aes / 1e9,
        "blake3_floor_s": b3,
        "blake3_gbps": sum(len(u) for u in upload) / b3 / 1e9,
        "numpy_sum_s": numpy_cpu,
        "server0_compute_vs_numpy": s0 / numpy_cpu,
        "server1_compute_vs_numpy": s1 / numpy_cpu,
        "server0_with_wire_vs_numpy": (c2 - c1) / numpy_cpu,
        "server1_with_wire_vs_numpy": (c3 - c2) / numpy_cpu,
        "aes_ctr_floor_vs_numpy": aes / numpy_cpu,
        "max_abs_error": float(np.max(np.abs(res.vector - ref))),
    }


# -- Flower ------------------------------------------------------------------------------------------
def _flower_imports() -> dict[str, Any]:
    """Flower's pieces, by name (imported lazily: flwr is only needed for this anchor)."""
    import importlib

    def get(module: str, name: str) -> Any:
        return getattr(importlib.import_module(module), name)

    names = {
        "ConfigRecord": ("flwr.app", "ConfigRecord"),
        "Context": ("flwr.app", "Context"),
        "Message": ("flwr.app", "Message"),
        "RecordDict": ("flwr.app", "RecordDict"),
        "secaggplus_mod": ("flwr.client.mod", "secaggplus_mod"),
        "Code": ("flwr.common", "Code"),
        "FitRes": ("flwr.common", "FitRes"),
        "Status": ("flwr.common", "Status"),
        "ndarrays_to_parameters": ("flwr.common", "ndarrays_to_parameters"),
        "parameters_to_ndarrays": ("flwr.common", "parameters_to_ndarrays"),
        "message_from_proto": ("flwr.common.serde", "message_from_proto"),
        "message_to_proto": ("flwr.common.serde", "message_to_proto"),
        "SimpleClientManager": ("flwr.server.client_manager", "SimpleClientManager"),
        "GridClientProxy": ("flwr.server.compat.grid_client_proxy", "GridClientProxy"),
        "LegacyContext": ("flwr.server.compat.legacy_context", "LegacyContext"),
        "FedAvg": ("flwr.server.strategy", "FedAvg"),
        "SecAggPlusWorkflow": ("flwr.server.workflow", "SecAggPlusWorkflow"),
        "MAIN_CONFIGS_RECORD": ("flwr.server.workflow.constant", "MAIN_CONFIGS_RECORD"),
        "MAIN_PARAMS_RECORD": ("flwr.server.workflow.constant", "MAIN_PARAMS_RECORD"),
        "WorkflowKey": ("flwr.server.workflow.constant", "Key"),
        "Grid": ("flwr.serverapp.grid", "Grid"),
        "TaskIdentity": ("flwr.supercore.task_identity", "TaskIdentity"),
    }
    f = {k: get(m, n) for k, (m, n) in names.items()}
    f["compat"] = importlib.import_module("flwr.compat.common.recorddict_compat")
    for name in ("flwr", "flwr.supercore"):
        logging.getLogger(name).setLevel(logging.ERROR)
    f["TaskIdentity"].run_id = 1
    f["TaskIdentity"].node_id = 0
    f["TaskIdentity"].task_id = 1
    return f


def run_flower(
    vecs: dict[str, np.ndarray], degree: int, threshold: int, drop: float
) -> dict[str, Any]:
    """One Flower SecAgg+ round, every role in this process, messages through protobuf."""
    f = _flower_imports()
    n = len(vecs)
    p = len(next(iter(vecs.values())))
    by_node = {i + 1: v.astype(np.float32) for i, v in enumerate(vecs.values())}
    dropped_nodes = set(list(by_node)[: math.floor(drop * n)])

    class LocalGrid(f["Grid"]):  # type: ignore[misc]
        def __init__(self) -> None:
            self.ctx = {
                nid: f["Context"](
                    run_id=1,
                    node_id=nid,
                    node_config={},
                    state=f["RecordDict"](),
                    run_config={},
                )
                for nid in by_node
            }
            self.calls = 0
            self.client_time = 0.0
            self.wire_time = 0.0
            self.bytes_up = dict.fromkeys(by_node, 0)

        def set_run(self, run: Any) -> None:
            pass

        @property
        def run(self) -> Any:
            return None

        def create_message(self, *a: Any, **k: Any) -> Any:
            raise NotImplementedError

        def get_node_ids(self) -> list[int]:
            return list(by_node)

        def push_messages(self, messages: Any) -> Any:
            raise NotImplementedError

        def pull_messages(self, message_ids: Any) -> Any:
            raise NotImplementedError

        def _fit(self, msg: Any, ctxt: Any) -> Any:
            vec = by_node[msg.metadata.dst_node_id]
            fr = f["FitRes"](
                f["Status"](f["Code"].OK, ""), f["ndarrays_to_parameters"]([vec]), 1, {}
            )
            return f["Message"](
                f["compat"].fitres_to_recorddict(fr, keep_input=True), reply_to=msg
            )

        def send_and_receive(
            self, messages: Any, *, timeout: float | None = None
        ) -> list[Any]:
            stage = self.calls
            self.calls += 1
            out = []
            for msg in messages:
                nid = msg.metadata.dst_node_id
                if stage >= 2 and nid in dropped_nodes:  # dropped after sharing keys
                    continue
                msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())
                msg.metadata.__dict__["_src_node_id"] = 0
                t = time.perf_counter()
                msg = f["message_from_proto"](f["message_to_proto"](msg))
                t1 = time.perf_counter()
                rep = f["secaggplus_mod"](msg, self.ctx[nid], self._fit)
                t2 = time.perf_counter()
                wire = f["message_to_proto"](rep)
                self.bytes_up[nid] += wire.ByteSize()
                out.append(f["message_from_proto"](wire))
                self.client_time += t2 - t1
                self.wire_time += (t1 - t) + (time.perf_counter() - t2)
            return out

    grid = LocalGrid()
    cm = f["SimpleClientManager"]()
    for nid in by_node:
        cm.register(f["GridClientProxy"](nid, grid, 1))
    strategy = f["FedAvg"](
        fraction_fit=1.0,
        min_fit_clients=n,
        min_available_clients=n,
        fraction_evaluate=0.0,
    )
    base = f["Context"](
        run_id=1, node_id=0, node_config={}, state=f["RecordDict"](), run_config={}
    )
    ctx = f["LegacyContext"](base, strategy=strategy, client_manager=cm)
    ctx.state.config_records[f["MAIN_CONFIGS_RECORD"]] = f["ConfigRecord"](
        {f["WorkflowKey"].CURRENT_ROUND: 1}
    )
    ctx.state.array_records[f["MAIN_PARAMS_RECORD"]] = f[
        "compat"
    ].parameters_to_arrayrecord(
        f["ndarrays_to_parameters"]([np.zeros(p, np.float32)]), keep_input=True
    )
    num_shares = degree + 1 if degree + 1 < n else n
    wf = f["SecAggPlusWorkflow"](
        num_shares=num_shares, reconstruction_threshold=threshold
    )
    _, wall, cpu = _timed(lambda: wf(grid, ctx))
    params = f["compat"].arrayrecord_to_parameters(
        ctx.state.array_records[f["MAIN_PARAMS_RECORD"]], keep_input=True
    )
    agg = f["parameters_to_ndarrays"](params)[0]
    survivors = [v for nid, v in by_node.items() if nid not in dropped_nodes]
    err = float(
        np.max(np.abs(agg - np.mean(survivors, axis=0)))
    )  # FedAvg: weighted mean
    live = [grid.bytes_up[nid] for nid in by_node if nid not in dropped_nodes]
    return {
        "round_wall_s": wall,
        "round_cpu_s": cpu,
        "client_compute_s_per_client": grid.client_time / n,
        "server_compute_s": wall - grid.client_time - grid.wire_time,
        "serde_s": grid.wire_time,
        "bytes_per_client": max(live),
        "expansion_vs_int32": max(live) / (4 * p),
        "num_shares": num_shares,
        "threshold": threshold,
        "max_abs_error_of_mean": err,
    }


# -- driver ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small grid, under a minute")
    ap.add_argument("--n", type=int, nargs="*", default=None)
    ap.add_argument("--p", type=float, nargs="*", default=None)
    ap.add_argument("--drops", type=float, nargs="*", default=None)
    ap.add_argument(
        "--budget-s",
        type=float,
        default=540.0,
        help="stop starting new configs after this",
    )
    ap.add_argument("--no-flower", action="store_true")
    ap.add_argument(
        "--repeats", type=int, default=None, help="runs per measurement (min CPU kept)"
    )
    args = ap.parse_args(argv)

    ns = args.n or ([5, 20] if args.quick else [5, 20, 50])
    ps = [
        int(p) for p in (args.p or ([10_000] if args.quick else [100_000, 1_000_000]))
    ]
    drops = args.drops if args.drops is not None else [0.0, 0.3]
    reps = args.repeats or (1 if args.quick else 2)
    t_start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    order = sorted(((n, p) for n in ns for p in ps), key=lambda np_: np_[0] * np_[1])
    for n, p in order:
        for drop in drops:
            if time.perf_counter() - t_start > args.budget_s:
                skipped.append(f"n={n},P={p},drop={drop}")
                continue
            vecs = _vectors(n, p)
            be = SecAggBackend()
            g = be.setup(Layout.from_arrays({"w": np.zeros(1)}), max_clients=n).graph(n)
            row: dict[str, Any] = {
                "n": n,
                "P": p,
                "drop": drop,
                "degree_k": g.degree,
                "threshold_t": g.threshold,
                "full_graph": g.full,
            }
            row["secagg"] = _best(partial(run_privagg, be, vecs, drop, 2), reps)
            row["secagg_semi_honest"] = _best(
                partial(run_privagg, SecAggBackend(active=False), vecs, drop, 2), reps
            )
            row["additive"] = _best(
                partial(run_privagg, AdditiveBackend(), vecs, drop, 0), reps
            )
            row["plain_backend"] = _best(
                partial(run_privagg, PlainBackend(), vecs, drop, 0), reps
            )
            row["numpy"] = _best(partial(run_numpy, vecs), reps)
            for key, fb, stage in (
                ("secagg", be, 2),
                ("secagg_semi_honest", SecAggBackend(active=False), 2),
                ("additive", AdditiveBackend(), 0),
            ):
                fl = round_floor(fb, vecs, drop, stage)
                row[key]["floor"] = fl
                row[key]["vs_floor"] = row[key]["round_cpu_s"] / fl["floor_s"]
                row[key]["vs_floor_with_key_agreement"] = (
                    row[key]["round_cpu_s"] / fl["floor_with_key_agreement_s"]
                )
                row[f"{key}_vs_floor"] = row[key]["vs_floor"]
            if not args.no_flower:
                try:
                    row["flower"] = _best(
                        partial(run_flower, vecs, g.degree, g.threshold, drop), reps
                    )
                except Exception as exc:  # report, don't hide
                    row["flower_error"] = f"{type(exc).__name__}: {exc}"
            if "flower" in row:
                for key in ("secagg", "secagg_semi_honest"):
                    row[f"speedup_{key}_vs_flower_cpu"] = (
                        row["flower"]["round_cpu_s"] / row[key]["round_cpu_s"]
                    )
                    row[f"speedup_{key}_vs_flower_wall"] = (
                        row["flower"]["round_wall_s"] / row[key]["round_wall_s"]
                    )
            row["additive_roles"] = run_additive_roles(
                vecs, max(row["numpy"]["round_cpu_s"], 1e-9)
            )
            row["additive_vs_numpy_cpu"] = row["additive"]["round_cpu_s"] / max(
                row["numpy"]["round_cpu_s"], 1e-9
            )
            for key in ("server0_compute", "server1_compute", "aes_ctr_floor"):
                row[f"additive_{key}_vs_numpy"] = row["additive_roles"][
                    f"{key}_vs_numpy"
                ]
            row["additive_vs_plain_backend_cpu"] = (
                row["additive"]["round_cpu_s"] / row["plain_backend"]["round_cpu_s"]
            )
            rows.append(row)
            brief = {
                k: (round(v, 4) if isinstance(v, float) else v)
                for k, v in row.items()
                if not isinstance(v, dict)
            }
            brief["secagg_wall"] = round(row["secagg"]["round_wall_s"], 3)
            brief["secagg_cpu"] = round(row["secagg"]["round_cpu_s"], 3)
            brief["secagg_floor"] = round(row["secagg"]["floor"]["floor_s"], 3)
            if "flower" in row:
                brief["flower_wall"] = round(row["flower"]["round_wall_s"], 3)
            print(json.dumps(brief), flush=True)
            del vecs
            gc.collect()

    def pick(n: int, p: int, drop: float) -> dict[str, Any] | None:
        return next(
            (r for r in rows if (r["n"], r["P"], r["drop"]) == (n, p, drop)), None
        )

    speed = [
        r["speedup_secagg_vs_flower_cpu"]
        for r in rows
        if "speedup_secagg_vs_flower_cpu" in r
    ]
    speed_sh = [
        r["speedup_secagg_semi_honest_vs_flower_cpu"]
        for r in rows
        if "speedup_secagg_semi_honest_vs_flower_cpu" in r
    ]
    target_cfgs = [(50, 100_000), (20, 1_000_000)]
    target_speed = {
        f"n={n},P={p}": r["speedup_secagg_vs_flower_cpu"]
        for n, p in target_cfgs
        if (r := pick(n, p, 0.0)) is not None and "speedup_secagg_vs_flower_cpu" in r
    }
    n_max = max(ns)
    exp_rows = [r for r in rows if r["n"] == n_max and r["drop"] == 0.0]
    expansion = max((r["secagg"]["expansion_vs_int32"] for r in exp_rows), default=None)
    dropout_ratios = {}
    for r in rows:
        if r["drop"] > 0 and (base := pick(r["n"], r["P"], 0.0)) is not None:
            dropout_ratios[f"n={r['n']},P={r['P']}"] = (
                r["secagg"]["round_cpu_s"] / base["secagg"]["round_cpu_s"]
            )
    add_np = [r["additive_vs_numpy_cpu"] for r in rows if r["drop"] == 0.0]
    add_plain = [r["additive_vs_plain_backend_cpu"] for r in rows if r["drop"] == 0.0]
    add_roles = [r["additive_roles"] for r in rows if r["drop"] == 0.0]

    vs_floor = {
        key: max((r[f"{key}_vs_floor"] for r in rows), default=None)
        for key in ("secagg", "secagg_semi_honest", "additive")
    }
    floor_at_targets = {
        f"n={n},P={p}": {
            key: {
                "round_cpu_s": r[key]["round_cpu_s"],
                "floor_s": r[key]["floor"]["floor_s"],
                "vs_floor": r[key]["vs_floor"],
                "floor_parts_s": {
                    part: r[key]["floor"][part]
                    for part in (
                        "keystream_s",
                        "integrity_s",
                        "signatures_s",
                        "key_agreement_s",
                    )
                },
                "vs_floor_with_key_agreement": r[key]["vs_floor_with_key_agreement"],
                "least_vs_floor": r[key]["floor"]["least_vs_floor"],
            }
            for key in ("secagg", "secagg_semi_honest", "additive")
        }
        for n, p in target_cfgs
        if (r := pick(n, p, 0.0)) is not None
    }

    def worst(key: str) -> float | None:
        return max((a[key] for a in add_roles), default=None)

    summary = {
        "benchmark": "secagg",
        "quick": args.quick,
        "elapsed_s": time.perf_counter() - t_start,
        "speedup_vs_flower": min(speed) if speed else None,
        "speedup_vs_flower_semi_honest": min(speed_sh) if speed_sh else None,
        "speedup_vs_flower_at_targets": target_speed,
        "secagg_vs_floor": vs_floor["secagg"],
        "secagg_semi_honest_vs_floor": vs_floor["secagg_semi_honest"],
        "additive_vs_floor": vs_floor["additive"],
        "floor_at_targets": floor_at_targets,
        "primitive_costs": _PRIMS,
        "expansion_vs_int32": expansion,
        "expansion_at_n": n_max,
        "dropout_cost_ratio": max(dropout_ratios.values()) if dropout_ratios else None,
        "dropout_cost_ratios": dropout_ratios,
        "additive_vs_numpy": max(add_np) if add_np else None,
        "additive_vs_plain_backend": max(add_plain) if add_plain else None,
        "additive_server0_compute_vs_numpy": worst("server0_compute_vs_numpy"),
        "additive_server1_compute_vs_numpy": worst("server1_compute_vs_numpy"),
        "additive_server1_with_wire_vs_numpy": worst("server1_with_wire_vs_numpy"),
        "additive_server0_with_wire_vs_numpy": worst("server0_with_wire_vs_numpy"),
        "additive_aes_ctr_floor_vs_numpy": worst("aes_ctr_floor_vs_numpy"),
        "aes_ctr_gbps": min((a["aes_ctr_gbps"] for a in add_roles), default=None),
        "blake3_gbps": min((a["blake3_gbps"] for a in add_roles), default=None),
        "targets": {
            "speedup_ge_8x_at_50x1e5_and_20x1e6": (
                len(target_speed) == 2 and min(target_speed.values()) >= 8
            )
            if target_speed
            else None,
            "secagg_within_1_5x_floor": (vs_floor["secagg"] <= 1.5)
            if vs_floor["secagg"] is not None
            else None,
            "expansion_le_2x_at_n50": (expansion <= 2)
            if (expansion is not None and n_max == 50)
            else None,
            "dropout_cost_le_2x": (max(dropout_ratios.values()) <= 2)
            if dropout_ratios
            else None,
            "additive_within_2x_numpy_loop": (max(add_np) <= 2) if add_np else None,
            "additive_within_2x_plain_backend": (max(add_plain) <= 2)
            if add_plain
            else None,
            "additive_server_compute_within_2x_numpy_loop": (
                max(
                    worst("server0_compute_vs_numpy") or 0,
                    worst("server1_compute_vs_numpy") or 0,
                )
                <= 2
            )
            if add_roles
            else None,
        },
        "basis": "ratios use process CPU seconds of the whole round (all roles in one process), "
        f"best of {reps} run(s); wall-clock figures are in each config",
        "floor_basis": "floor_s: the round's cryptography alone at this machine's best "
        "throughput (counted in one untimed round): keystream (every mask byte, AES-128-CTR, "
        "and every rounding-coin byte, AES-256-CTR) + one integrity pass (BLAKE3 over every "
        "message once) + signatures (every Ed25519 sign/verify); vs_floor = round_cpu_s / floor_s; "
        "least_vs_floor = (floor_s + required_outside_floor_s) / floor_s, where "
        "required_outside_floor_s = the X25519 agreements + the receivers' digest pass, "
        "work every implementation of this protocol and envelope does beyond the floor",
        "flower_measured": "flwr SecAggPlusWorkflow + secaggplus_mod, full protocol, in-process Grid, "
        "messages through flwr protobuf serde; num_shares=k+1, reconstruction_threshold=t; "
        "dropouts after the share-keys stage",
        "additive_basis": "additive_vs_numpy is the END-TO-END round (clients' encoding and "
        "sharing, envelopes, both servers, holder) over a numpy float64 acc += v loop; "
        "additive_server*_compute_vs_numpy is ONE server's aggregation arithmetic "
        "alone (server 0: uint32 acc += share; server 1: AES-128-CTR expansion of n "
        "seeds + add), without message decoding; *_with_wire_* include decoding; "
        "additive_aes_ctr_floor_vs_numpy: AES-128-CTR keystream for the n*4P bytes "
        "server 1 must expand (the floor of its work) over the numpy loop",
        "defaults": "secagg: sparse Harary graph, dropout_rate=1/3, corruption_rate=0.1, sigma=40, eta=20, "
        "active=True (Ed25519 + consistency round); additive: 2 servers",
        "skipped": skipped,
        "configs": rows,
    }
    print(json.dumps(summary, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
