"""Parallel encryption and decryption in forked worker processes."""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt

from privagg.backends._ckks_params import CkksParams
from privagg.backends.ckks._release import _FloodSampler
from privagg.backends.ckks._sealio import (
    _seal_load,
)
from privagg.backends.ckks._sealio import (
    sealapi as _seal,
)
from privagg.backends.ckks._sealwrap import _Seal
from privagg.backends.ckks.keys import (
    CkksPublicContext,
    CkksSecretContext,
    _export_secret,
)
from privagg.layout import FloatVector

# Forking a worker costs roughly a page-table copy of the parent; only updates with at
# least this many ciphertexts per worker amortize it.
_POOL_MIN_PER_WORKER = 64
_MAX_SPAN = 256  # ciphertexts per decryption job (bounds what is in flight)


# -- parallel encryption / decryption ------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _worker_init(params_bytes: bytes, pk_bytes: bytes, sk_bytes: bytes | None) -> None:
    st = _Seal(CkksParams.from_bytes(params_bytes))
    st.set_public_key(pk_bytes)
    if sk_bytes is not None:
        sk = _seal.SecretKey()
        _seal_load(sk, st.context, sk_bytes)
        st.set_secret_key(sk)
    _WORKER["state"] = st


def _worker_encrypt(values: FloatVector) -> bytes:
    st: _Seal = _WORKER["state"]
    return st.encrypt_packed(values)


def _worker_decrypt(
    packed: bytes, n_ct: int, flood: npt.NDArray[np.int64] | None
) -> FloatVector:
    st: _Seal = _WORKER["state"]
    return st.decrypt_packed(packed, n_ct, n_ct * st.n, flood)


def _n_workers(threads: int | None, n_ct: int) -> int:
    """Worker processes for ``n_ct`` ciphertexts (1: inline).

    ``threads=None`` takes the cores available to the process that are not already
    busy (per the 1-minute load average), so a shared machine is not oversubscribed;
    an explicit ``threads`` is an upper bound used as given.
    """
    if "fork" not in multiprocessing.get_all_start_methods():
        return 1  # pragma: no cover - non-POSIX
    if threads is None:
        avail = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        threads = max(1, round(avail - busy))
    return max(1, min(threads, n_ct // _POOL_MIN_PER_WORKER))


def _spans(n_ct: int, parts: int) -> list[tuple[int, int]]:
    step = -(-n_ct // parts)
    return [(a, min(a + step, n_ct)) for a in range(0, n_ct, step)]


def _pool(workers: int, initargs: tuple[Any, ...]) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_worker_init,
        initargs=initargs,
    )


def _encrypt_packed(
    ctx: CkksPublicContext, vec: FloatVector, threads: int | None, out: memoryview
) -> None:
    """Encrypt ``vec`` and pack it into ``out`` (exactly its packed size), inline or in
    forked workers; each worker's span is copied into place as it arrives."""
    st = ctx.seal_state()
    n_ct = -(-vec.size // st.n)
    if len(out) != n_ct * st.ct_bytes:
        raise ValueError("output buffer of the wrong size")
    workers = _n_workers(threads, n_ct)
    if workers <= 1:
        st.encrypt_packed_into(vec, out)
        return
    cb = st.ct_bytes
    spans = _spans(n_ct, workers * 4)
    with _pool(workers, (ctx.params.to_bytes(), ctx.public_key_bytes(), None)) as ex:
        parts = ex.map(_worker_encrypt, [vec[a * st.n : b * st.n] for a, b in spans])
        for (a, b), part in zip(spans, parts, strict=True):
            out[a * cb : b * cb] = part


def _decrypt_packed(
    ctx: CkksSecretContext,
    packed: memoryview,
    n_ct: int,
    size: int,
    threads: int | None,
    flood: _FloodSampler | None = None,
) -> FloatVector:
    """Decrypt (and flood) in the holder's process or in forked workers.

    The workers get spans of at most :data:`_MAX_SPAN` ciphertexts, at most
    ``2 * workers`` in flight; each span's flooding noise is drawn (in ciphertext
    order, so the release does not depend on the number of workers) only when the span
    is handed out. Packed copies and noise in flight are thus bounded, whatever the
    update's size.
    """
    st = ctx.seal_state()
    workers = _n_workers(threads, n_ct)
    if workers <= 1:
        return st.decrypt_packed(packed, n_ct, size, flood)
    cb = st.ct_bytes
    step = min(_MAX_SPAN, -(-n_ct // (workers * 4)))
    out = np.empty(n_ct * st.n, dtype=np.float64)
    # The forked workers inherit the key in memory; it never crosses a pipe or a disk.
    sk_bytes = _export_secret(ctx.secret_key.unsafe_material())
    init = (ctx.params.to_bytes(), ctx.public.public_key_bytes(), sk_bytes)
    with _pool(workers, init) as ex:
        pending: deque[tuple[int, int, Future[FloatVector]]] = deque()
        for a in range(0, n_ct, step):
            b = min(a + step, n_ct)
            rows = None if flood is None else flood.draw(b - a)
            job = ex.submit(
                _worker_decrypt, bytes(packed[a * cb : b * cb]), b - a, rows
            )
            pending.append((a, b, job))
            while len(pending) >= 2 * workers or (b == n_ct and pending):
                a0, b0, done = pending.popleft()
                out[a0 * st.n : b0 * st.n] = done.result()
    return out[:size]
