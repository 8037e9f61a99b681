"""Paillier encryption primitives: fixed-base exponent tables and a thread pool
(gmpy2 releases the GIL)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import gmpy2

if TYPE_CHECKING:
    from privagg.backends.paillier.keys import PaillierPublicKey

_WINDOW = 8  # fixed-base window (bits); rows are bytes of the exponent

_T = TypeVar("_T")
_R = TypeVar("_R")


def _parallel_map(
    fn: Callable[[list[_T]], list[_R]], items: list[_T], workers: int
) -> list[_R]:
    """``fn`` over chunks of ``items`` in ``workers`` threads (gmpy2 releases the GIL)."""
    if workers <= 1 or len(items) < 2 * workers:
        return fn(items)
    size = -(-len(items) // min(len(items), 4 * workers))
    parts: list[list[_R]] = [[] for _ in range(0, len(items), size)]

    def run(a: int, b: int) -> None:
        parts[a // size] = fn(items[a:b])

    _parallel_blocks(run, len(items), size, workers)
    return [x for part in parts for x in part]


def _parallel_blocks(
    fn: Callable[[int, int], None], n_items: int, block: int, workers: int
) -> None:
    """``fn(start, stop)`` over consecutive blocks of at most ``block`` of ``n_items``
    items, in ``workers`` threads, each taking a contiguous run of blocks.

    ``fn`` writes its results itself (into disjoint parts of a preallocated buffer), so
    no per-item result list exists; at most ``workers`` blocks are in flight. The first
    exception raised by ``fn`` propagates (after every thread has stopped).
    """
    block = max(1, block)
    starts = range(0, n_items, block)

    def run(part: range) -> None:
        for a in part:
            fn(a, min(a + block, n_items))

    if workers <= 1 or len(starts) < 2:
        run(starts)
        return
    n_chunks = min(len(starts), 4 * workers)
    size = -(-len(starts) // n_chunks)
    parts = [starts[i : i + size] for i in range(0, len(starts), size)]
    with ThreadPoolExecutor(
        max_workers=workers, thread_name_prefix="privagg-paillier"
    ) as ex:
        for _ in ex.map(run, parts):
            pass


def _gil_free() -> Any:
    """A gmpy2 context in which mpz arithmetic may release the GIL."""
    return gmpy2.context(allow_release_gil=True)


# -- encryption primitives (also the known-answer hooks) --------------------------------------
def _encrypt_with(n: int, m: int, r: int) -> int:
    """Textbook Paillier with g = n + 1: ``(1 + m*n) * r**n mod n**2``. Test hook."""
    nn = gmpy2.mpz(n) * n
    return int((1 + gmpy2.mpz(m) * n) * gmpy2.powmod(r, n, nn) % nn)


def _encrypt_djn(n: int, hs: int, m: int, a: int) -> int:
    """DJN encryption ``(1 + m*n) * hs**a mod n**2`` with plain powmod. Test hook."""
    nn = gmpy2.mpz(n) * n
    return int((1 + gmpy2.mpz(m) * n) * gmpy2.powmod(hs, a, nn) % nn)


class _FixedBase:
    """``base**e mod modulus`` for ``e < 2**exp_bits`` by 8-bit fixed-base windows.

    Row ``i`` holds ``base**(d * 256**i)`` for ``d = 0..255``; an exponentiation is one
    multiplication per non-zero byte of ``e``.
    """

    __slots__ = ("_mod", "_nbytes", "_rows")

    def __init__(self, base: int, modulus: int, exp_bits: int, workers: int) -> None:
        self._mod = mod = gmpy2.mpz(modulus)
        self._nbytes = nbytes = (exp_bits + 7) // 8
        bases = [gmpy2.mpz(base) % mod]
        with _gil_free():
            for _ in range(nbytes - 1):
                b = bases[-1]
                for _ in range(_WINDOW):
                    b = b * b % mod
                bases.append(b)

        def fill(bs: list[Any]) -> list[list[Any]]:
            rows = []
            with _gil_free():
                for b in bs:
                    row = [gmpy2.mpz(1), b]
                    for _ in range(2, 1 << _WINDOW):
                        row.append(row[-1] * b % mod)
                    rows.append(row)
            return rows

        self._rows: list[list[Any]] = _parallel_map(fill, bases, workers)

    def pow(self, e: int) -> Any:
        """``base**e mod modulus``.

        Always one multiplication per exponent byte (zero bytes included), so the
        operation count does not depend on ``e``. Not constant-time at the cache level
        (neither is GMP's ``mpz_powm`` nor phe): keep clients in their own processes.
        """
        rows, mod = self._rows, self._mod
        digits = e.to_bytes(self._nbytes, "little")
        acc = rows[0][digits[0]]
        for i in range(1, self._nbytes):
            acc = acc * rows[i][digits[i]] % mod
        return acc


_TABLES: dict[tuple[int, int], _FixedBase] = {}
_TABLES_LOCK = threading.Lock()
_TABLES_MAX = 2  # public-key tables kept per process (17 MB each at 2048 bits)


def _fixed_base_for(public: PaillierPublicKey, workers: int) -> _FixedBase:
    """The process-wide fixed-base table of ``public.hs`` (public data only)."""
    key = (public.n, public.hs)
    with _TABLES_LOCK:
        table = _TABLES.get(key)
        if table is None:
            table = _FixedBase(
                public.hs, public.n * public.n, public.exponent_bits, workers
            )
            while len(_TABLES) >= _TABLES_MAX:
                _TABLES.pop(next(iter(_TABLES)))
            _TABLES[key] = table
        return table
