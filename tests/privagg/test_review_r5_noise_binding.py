"""Review r5 (outside reviewer) of #14: SecAgg+ and additive bind the clients' DP
noise share in ``params_id`` (:func:`privagg.backends._masking.noise_binding`).

What the binding guarantees: roles that follow the protocol and were *given*
different share descriptions (type, ``stddev`` as a double, headroom) compute different
``params_id`` values and refuse each other's first message. What it does not: it binds a
description, not the draws; a client (or a third-party share) that claims one share and
draws another, or a share whose parameters are not a float ``stddev``, is not caught by
it (a client can always add less noise to its own update).

Each attack is a test: a passing test asserts a refusal (or a documented limit); an
open finding asserts the secure behaviour under ``xfail(strict=True)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

import privagg
from privagg.backends._masking import noise_binding
from privagg.dp import DiscreteGaussianShare, SkellamShare
from tests.privagg.test_distribution_noise import (
    IDS,
    LAYOUT,
    ROUND,
    _backend,
    _round,
    _updates,
)
from tests.privagg.test_masking_noise_binding import (
    CASES,
    LOADERS,
    SHARE,
    _client,
    _first_requests,
    _mixed,
)


class _Third:
    """A third-party share: ``stddev`` of any type, a fixed headroom, draws zeros (or
    ``draw`` times a unit noise)."""

    def __init__(self, stddev: Any, bound: float = 1.0, draw: float = 0.0) -> None:
        self.stddev = stddev
        self.bound = bound
        self.draw = draw

    def sample_encoded(self, n: int, *, scale: float, rng: Any) -> Any:
        return np.full(n, round(self.draw * scale), dtype=np.int64)

    def sample_real(self, n: int, *, rng: Any) -> Any:
        return np.full(n, self.draw)

    def headroom(self, n_clients: int, *, dim: int, rounds: int) -> float:
        return self.bound


_BACKENDS: dict[str, Any] = {}


def _pid(case: str, noise: Any) -> bytes:
    """The aggregator's params_id; one backend (so one set of additive keys) per case."""
    be = _BACKENDS.setdefault(case, _backend(case))
    return bytes(LOADERS[case](be, noise)["aggregator"].params_id)


# (1) canonical encoding collisions ------------------------------------------------


class _DGSub(DiscreteGaussianShare):
    """A subclass of the built-in share, the same ``stddev``."""


@pytest.mark.parametrize("case", CASES)
def test_r5_subclass_of_builtin_share_gets_another_params_id(case: str) -> None:
    """Refused: the type's qualified name is bound, a subclass is another share."""
    assert _pid(case, _DGSub(SHARE.stddev)) != _pid(case, SHARE)


@pytest.mark.parametrize("case", CASES)
def test_r5_skellam_and_dg_of_equal_variance_are_refused(case: str) -> None:
    """Refused: same variance, other distribution (the type is bound)."""
    s = _mixed(case, SHARE, SkellamShare(SHARE.stddev))
    request = _first_requests(s)[IDS[0]]
    with pytest.raises(privagg.ParameterMismatchError):
        _client(s, 0).handle(request)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (0.0, -0.0),
        (0.0, 5e-324),  # the smallest subnormal
        (1e308, math.inf),
        (1.0, 1),  # an int and the float it equals: the same share, the same id
        (1.0, math.nextafter(1.0, 2.0)),
        (1e-300, 1e-301),
    ],
)
def test_r5_float_encodings_of_stddev_do_not_collide(a: float, b: float) -> None:
    """Refused: ``stddev`` is bound as an IEEE-754 double; -0.0, subnormals, huge and
    infinite values all get their own encoding (equal values, 1 and 1.0, agree); an
    infinite ``stddev`` is refused with a typed error (since the r5 fixes)."""
    if not math.isfinite(b):
        with pytest.raises(privagg.ConfigurationError):
            noise_binding(_Third(b), 1.0)
        return
    one, two = noise_binding(_Third(a), 1.0), noise_binding(_Third(b), 1.0)
    assert (one == two) is (a == 1.0 and b == 1)


def test_r5_nan_stddev_is_refused_by_builtin_shares() -> None:
    """Refused: built-in shares refuse NaN, inf, 0 and negative ``stddev`` (typed)."""
    for v in (math.nan, math.inf, 0.0, -0.0, -1.0):
        for cls in (DiscreteGaussianShare, SkellamShare):
            with pytest.raises(privagg.ConfigurationError):
                cls(v)


@pytest.mark.parametrize("case", CASES)
def test_r5_non_float_stddev_is_bound(case: str) -> None:
    big, small = _Third(np.float32(1.0)), _Third(np.float32(0.02))
    assert _pid(case, big) != _pid(case, small)


def test_r5_huge_int_stddev_raises_a_typed_error() -> None:
    with pytest.raises(privagg.PrivaggError):
        _pid("secagg-passive", _Third(10**400))


def test_r5_builtin_share_huge_int_stddev_is_typed() -> None:
    with pytest.raises(privagg.ConfigurationError):
        DiscreteGaussianShare(10**400)


class _RaisingStddev(_Third):
    @property
    def stddev(self) -> float:
        raise RuntimeError("broken share")

    @stddev.setter
    def stddev(self, v: Any) -> None:
        pass


def test_r5_share_with_raising_stddev_is_a_typed_error() -> None:
    with pytest.raises(privagg.PrivaggError):
        _pid("secagg-passive", _RaisingStddev(1.0))


# (2) a share that lies about what it draws -----------------------------------------


class _Forged:
    """Claims to be the ledger's DiscreteGaussianShare (module, qualname, stddev and
    headroom) and draws no noise."""

    def __init__(self, like: DiscreteGaussianShare) -> None:
        self.stddev = like.stddev
        self._like = like

    def sample_encoded(self, n: int, *, scale: float, rng: Any) -> Any:
        return np.zeros(n, dtype=np.int64)

    def sample_real(self, n: int, *, rng: Any) -> Any:
        return np.zeros(n)

    def headroom(self, n_clients: int, *, dim: int, rounds: int) -> float:
        return float(self._like.headroom(n_clients, dim=dim, rounds=rounds))


_Forged.__module__ = DiscreteGaussianShare.__module__
_Forged.__qualname__ = DiscreteGaussianShare.__qualname__


@pytest.mark.parametrize("case", CASES)
def test_r5_limit_the_binding_binds_a_description_not_the_draws(case: str) -> None:
    """The documented limit (not a finding): clients whose share describes itself as
    the ledger's but draws nothing share the ledger's params_id, and the round recovers
    the noiseless sum. The binding catches misconfigured roles, never a client that
    adds less noise (its own code)."""
    s = _mixed(case, SHARE, _Forged(SHARE))
    assert len({s[p].params_id for p in s}) == 1
    ups = _updates()
    rec = _round(s, ups)
    err = float(np.max(np.abs(rec.vector - sum(ups.values()))))
    assert err < 1e-3  # no noise at all, though the ledger assumes SHARE per client


# (3) paths that build a role ---------------------------------------------------------


@pytest.mark.parametrize("active", [False, True])
def test_r5_dealt_secagg_client_without_share_is_refused(active: bool) -> None:
    """Refused: SecAgg+ dealt material is dealt without a share; a client loading it
    without the share while the aggregator and holder load it with one is refused."""
    be: Any = privagg.get_backend("secagg", active=active)
    dealt = be.deal(LAYOUT, IDS, max_clients=len(IDS))
    kw: dict[str, Any] = {"max_clients": len(IDS)}
    agg = be.load_role(LAYOUT, "aggregator", None, dealt.aggregator, noise=SHARE, **kw)
    small = DiscreteGaussianShare(SHARE.stddev / 50)
    client = be.load_role(
        LAYOUT, "client", IDS[0], dealt.clients[IDS[0]], noise=small, **kw
    )
    request = agg.aggregator(ROUND, IDS).start()[IDS[0]]
    with pytest.raises(privagg.ParameterMismatchError):
        client.client(IDS[0], ROUND, _updates()[IDS[0]]).handle(request)


@pytest.mark.parametrize("case", CASES)
def test_r5_setup_in_process_matches_loaded_roles(case: str) -> None:
    """Refused/consistent: ``setup(noise=...)`` (Federation in-process) binds the share
    too: its params_id differs from setup without noise."""
    be = _backend(case)
    with_noise = be.setup(LAYOUT, max_clients=len(IDS), noise=SHARE)
    without = be.setup(LAYOUT, max_clients=len(IDS))
    assert with_noise.params_id != without.params_id


# (4) params_id collisions ------------------------------------------------------------


def test_r5_params_ids_distinct_across_backends_and_noise() -> None:
    """Refused: noiseless vs noised, and across backends, never collide (fingerprint
    length-prefixes every part, so 4 parts never equal 5)."""
    ids = [_pid(c, n) for c in CASES for n in (None, SHARE, SkellamShare(0.05))]
    assert len(set(ids)) == len(ids)


# (5) replays from a noiseless session -----------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_r5_noiseless_messages_replayed_into_a_noised_session(case: str) -> None:
    """Refused: the noiseless aggregator's requests to a noised client, and noiseless
    clients' replies to a noised aggregator."""
    be = _backend(case)
    bare, noised = LOADERS[case](be, None), LOADERS[case](be, SHARE)
    old = _first_requests(bare)
    with pytest.raises(privagg.ParameterMismatchError):
        _client(noised, 0).handle(old[IDS[0]])
    replies = {c: _client(bare, i).handle(old[c]) for i, c in enumerate(IDS)}
    agg = noised["aggregator"].aggregator(ROUND, IDS)
    agg.start()
    with pytest.raises(privagg.PrivaggError):
        agg.receive(replies)
        agg.result()
    assert (
        all("ParameterMismatchError" in r for r in agg.rejection_reasons.values())
        and agg.rejection_reasons
    )
