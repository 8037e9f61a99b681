"""The SecAgg+ communication graph and the choice of its degree ``k`` and threshold ``t``.

The graph is a Harary graph ``H(k, n)`` (each node linked to the ``k/2`` nodes on either
side of it on a ring) over a pseudo-random ordering of the round's clients. The ordering
is derived from a public seed that hashes every advertised public key of the round, so
the server cannot place clients where it wants without grinding on the key set. Because
the ordering is a uniformly random permutation (up to that grinding, see
``docs/backends/secagg.md``), the neighbourhood of any fixed client is
a uniformly random ``k``-subset of the others: the number of corrupt (or dropped)
neighbours is hypergeometric, which gives the bounds below (Bell et al., CCS 2020,
Sec. 3-4, with exact hypergeometric tails instead of Chernoff bounds).

Each client's two secrets are Shamir-shared among its ``k`` neighbours only (``k``
holders, threshold ``t``); the owner keeps no share of its own, so every one of the ``t``
shares the server needs comes from *another* client.

* **Security** (an honest client's secrets stay hidden from the server plus ``C =
  ceil(gamma * n)`` corrupt clients): the corrupt holders must be fewer than ``t``:
  ``n * P[Hyp(n - 1, C, k) >= t] <= 2**-sigma``. Because any ``t`` of a client's
  neighbours then include an honest one (w.h.p.), a client that masks with at least
  ``t`` neighbours always masks with an honest one.
* **Correctness** (up to ``D = floor(delta * n)`` dropouts): a secret that must be
  recovered keeps ``t`` live holders: ``n * P[Hyp(n - 1, D, k) > k - t] <= 2**-eta``.
* **Connectivity (necessary part)**: an honest survivor keeps at least one honest,
  surviving neighbour: ``n * P[Hyp(n - 1, C + D, k) = k] <= 2**-sigma``.

The smallest even ``k`` for which some ``t`` meets all three is used, with the
smallest such ``t`` (most dropout tolerance). If no ``k < n - 1`` works, the graph is
complete (Bonawitz et al., CCS 2017), where the bounds are deterministic:
``t >= C + 1`` and ``t <= n - 1 - D`` (a survivor's ``n - 1`` holders lose at most ``D``;
when only ``t = n - D`` satisfies the first, as for tiny ``n``, one dropout fewer is
tolerated), and ``t`` is raised to ``floor(n/2) + 1`` when that
still fits (so that two disjoint halves of the clients cannot both unmask).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from privagg.errors import ConfigurationError

__all__ = [
    "GraphParams",
    "choose_parameters",
    "consistency_quorum",
    "harary_neighbours",
    "min_live_neighbours",
]


@dataclass(frozen=True, slots=True)
class GraphParams:
    """Degree and threshold of a round's graph.

    Attributes:
        degree: neighbours per client (``n - 1`` for the complete graph).
        threshold: shares needed to reconstruct a secret (out of ``degree`` holders, the
            owner's neighbours; the owner holds no share of its own secrets).
        full: True for the complete graph.
    """

    degree: int
    threshold: int
    full: bool


def _hyp_tail(population: int, marked: int, draws: int, at_least: int) -> float:
    """P[X >= at_least] for X ~ Hypergeometric(population, marked, draws)."""
    if at_least <= 0:
        return 1.0
    hi = min(marked, draws)
    if at_least > hi:
        return 0.0
    total = math.comb(population, draws)
    num = sum(
        math.comb(marked, x) * math.comb(population - marked, draws - x)
        for x in range(at_least, hi + 1)
    )
    return num / total


@lru_cache(maxsize=256)
def choose_parameters(
    n: int,
    *,
    dropout_rate: float,
    corruption_rate: float,
    sigma: int = 40,
    eta: int = 20,
    full_graph: bool = False,
    population: int | None = None,
) -> GraphParams:
    """Degree ``k`` and threshold ``t`` for ``n`` clients (see the module docstring).

    Args:
        n: clients in the round.
        dropout_rate: ``delta``, the fraction of clients that may drop out.
        corruption_rate: ``gamma``, the fraction of clients that may collude with the server.
        sigma: statistical security parameter (failure probability ``2**-sigma``).
        eta: correctness parameter (probability ``2**-eta`` that recovery fails when at
            most ``delta * n`` clients drop).
        full_graph: force the complete graph.
        population: the number of clients the corruption rate is a fraction of (the
            session's ``max_clients``): ``C = ceil(gamma * max(n, population))`` is an
            absolute colluder budget, so a server that assembles a small round around
            its colluders cannot lower it (second review, finding 1). ``None``: ``n``.

    Raises:
        ConfigurationError: no threshold satisfies both bounds (``gamma + delta`` too large
            for ``n``).
    """
    if n < 1:
        raise ConfigurationError(f"a round needs at least one client, got {n}")
    corrupt = corrupt_budget(n, corruption_rate, population)
    dropped = math.floor(dropout_rate * n)
    if not full_graph:
        sec_bound = 2.0**-sigma / n
        cor_bound = 2.0**-eta / n
        for k in range(2, n - 1, 2):
            if _hyp_tail(n - 1, corrupt + dropped, k, k) > sec_bound:
                continue
            t_lo = next(
                (
                    t
                    for t in range(1, k + 2)
                    if _hyp_tail(n - 1, corrupt, k, t) <= sec_bound
                ),
                None,
            )
            if t_lo is None:
                continue
            if _hyp_tail(n - 1, dropped, k, k - t_lo + 1) <= cor_bound:
                return GraphParams(k, t_lo, False)
    # t > C, except when C >= n - 1: then the sum alone reveals the one honest input, and
    # t = n - 1 (every other client) is the most that can be asked.
    lo, hi = min(corrupt + 1, max(n - 1, 1)), n - dropped
    if lo > hi:
        raise ConfigurationError(
            f"no threshold works for n={n}, dropout_rate={dropout_rate}, "
            f"corruption_rate={corruption_rate}: need t >= {lo} and t <= {hi}"
        )
    # A survivor's n - 1 holders keep n - 1 - D live ones; when t = C + 1 = n - D (tiny n)
    # the complete graph tolerates one dropout fewer than D (see min_live_neighbours).
    t = max(lo, min(n // 2 + 1, n - 1 - dropped))
    return GraphParams(n - 1, t, True)


@lru_cache(maxsize=256)
def min_live_neighbours(
    n: int, degree: int, threshold: int, *, dropout_rate: float, eta: int = 20
) -> int:
    """Fewest advertised neighbours a client accepts before it shares its secrets.

    With at most ``D = floor(delta * n)`` clients dropping (at any stage, so in particular
    at stage 0), the number of a client's ``k`` neighbours that dropped is
    ``Hyp(n - 1, D, k)``. ``d`` is the smallest count with ``n * P[Hyp > d] <= 2**-eta``
    (the correctness parameter): honest rounds see at least ``k - d`` live neighbours at
    stage 1 except with probability ``2**-eta``. The correctness bound of
    :func:`choose_parameters` gives ``d <= k - t``, so the result is at least ``t``: a
    client therefore masks with, and shares among, at least ``t`` other clients, which
    (security bound) always include an honest one. For the complete graph ``d = D``.
    A server that relays fewer keys (to isolate a client among corrupt neighbours) is
    refused.
    """
    if degree == 0:
        return 0  # a one-client round: nothing to share with
    dropped = math.floor(dropout_rate * n)
    bound = 2.0**-eta / n
    d = next(
        d
        for d in range(0, degree + 1)
        if _hyp_tail(n - 1, dropped, degree, d + 1) <= bound
    )
    return max(threshold, degree - d)


def corrupt_budget(
    n: int, corruption_rate: float, population: int | None = None
) -> int:
    """``C``: colluding clients a round of ``n`` must tolerate, ``ceil(gamma * N)`` with
    ``N = max(n, population)``, capped at ``n - 1`` (at least one honest client)."""
    base = max(n, population or n)
    return min(math.ceil(corruption_rate * base - 1e-9), n - 1)


def consistency_quorum(
    n: int, *, corruption_rate: float, threshold: int, population: int | None = None
) -> int:
    """Survivor-set signatures a client requires before it reveals any share (active variant).

    Honest clients sign exactly one survivor set. With ``C = ceil(gamma * n)`` corrupt
    clients able to sign anything, two different survivor sets can each collect ``q``
    signatures only if ``2q <= n + C``; ``q = floor((n + C) / 2) + 1`` therefore makes every
    honest client that reveals a share agree on one survivor set, so for every client the
    server obtains honest shares of its self-mask seed *or* of its mask key, never both
    (Bonawitz et al.'s consistency check, with a quorum that also holds for sparse graphs).
    """
    corrupt = corrupt_budget(n, corruption_rate, population)
    return max(threshold, (n + corrupt) // 2 + 1)


def _order(ids: Sequence[str], seed: bytes) -> list[str]:
    def key(cid: str) -> bytes:
        return hashlib.sha256(
            b"privagg/secagg/order\x00" + seed + cid.encode("utf-8")
        ).digest()

    return sorted(ids, key=key)


def harary_neighbours(
    ids: Sequence[str], degree: int, seed: bytes
) -> dict[str, frozenset[str]]:
    """Neighbour sets of the Harary graph ``H(degree, n)`` over a seeded ordering of ``ids``.

    ``degree`` must be even or ``n - 1`` (the complete graph).
    """
    n = len(ids)
    if degree >= n - 1:
        everyone = frozenset(ids)
        return {c: everyone - {c} for c in ids}
    if degree % 2:
        raise ConfigurationError(
            f"a sparse Harary graph needs an even degree, got {degree}"
        )
    order = _order(ids, seed)
    half = degree // 2
    # positions pos - half .. pos + half (mod n) but pos itself, as two slices of the
    # order written three times
    ring = order * 3
    return {
        cid: frozenset(
            ring[n + pos - half : n + pos] + ring[n + pos + 1 : n + pos + half + 1]
        )
        for pos, cid in enumerate(order)
    }
