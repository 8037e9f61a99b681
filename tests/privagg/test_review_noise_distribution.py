"""Review of distributed-DP noise through ``privagg.distribution`` (#14, commit
5b4aadf): attacks on ``session_for_role(..., noise=)`` / ``public_setup(noise=)``.

* worked, fixed: ``DiscreteGaussianShare(1e200)`` made the headroom raise an untyped
  ``OverflowError`` (``stddev**2``; ``SkellamShare`` likewise) from ``setup`` and every role loader; now a
  :class:`~privagg.ConfigurationError` (values that worked before give the same
  float, bit for bit);
* worked, fixed: ``Backend.setup(noise=0.5)`` raised an untyped AttributeError on
  every keyed backend (plain accepted it); ``noise=DiscreteGaussianShare`` (the
  class, not a share) passed the
  runtime ``NoiseShare`` check and failed later with an untyped ``TypeError``; now a
  ``ConfigurationError`` like any other non-share;
* refused (regression tests): NaN, infinite, zero, negative, boolean and non-numeric
  ``stddev`` at construction; a ``noise`` that is not a ``NoiseShare`` for every
  role of every loader; ``public_setup(noise=)`` on the same terms; a session built
  without noise is unchanged (``params_id`` and the recovered sum);
* worked, fixed (was a strict xfail, review r2): on SecAgg+ (and additive) the share
  entered only the ring width, so clients loaded with a *smaller* share than the
  aggregator and holder (the ledger's) agreed on ``params_id`` and the round
  completed with a fraction of the planned noise (measured: std ~sqrt(3) * 0.001
  instead of ~sqrt(3) * 0.05). Both now bind the share in ``params_id``, as CKKS and
  Paillier do: the clients' first message exchange is refused
  (``tests/privagg/test_masking_noise_binding.py`` has the full matrix).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

import privagg
from privagg import Role
from privagg.distribution import public_setup, session_for_role
from privagg.dp import DiscreteGaussianShare, SkellamShare
from privagg.hazmat import DeterministicRng

LAYOUT = privagg.Layout.from_arrays({"w": np.zeros(64)})
IDS = ["client-0", "client-1", "client-2"]
N = len(IDS)
SEED = bytes(range(32))
SHARE = DiscreteGaussianShare(0.05)


@pytest.mark.parametrize("cls", [DiscreteGaussianShare, SkellamShare])
@pytest.mark.parametrize(
    "bad", [math.nan, math.inf, -math.inf, 0.0, -0.05, True, "0.05", None, 1j]
)
def test_bad_stddev_is_refused_at_construction(cls: Any, bad: Any) -> None:
    with pytest.raises(privagg.ConfigurationError, match="stddev"):
        cls(bad)


@pytest.mark.parametrize("stddev", [1e155, 1e200, 1.7e308])
def test_huge_discrete_gaussian_headroom_is_typed(stddev: float) -> None:
    share = DiscreteGaussianShare(stddev)
    with pytest.raises(privagg.ConfigurationError, match="not finite"):
        share.headroom(N, dim=LAYOUT.size)
    with pytest.raises(privagg.ConfigurationError):
        SkellamShare(stddev).headroom(N, dim=LAYOUT.size)


def test_headroom_of_usual_shares_is_unchanged() -> None:
    """The fix keeps the formula: the same float as before, bit for bit."""
    for s in (1e-6, 0.05, 1.0, 3e4, 1e150):
        share = DiscreteGaussianShare(s)
        big_l = math.log(2 * LAYOUT.size) + 40 * math.log(2)
        want = (1 + 2.0**-40) * math.sqrt(2.0 * N * s**2 * big_l)
        assert share.headroom(N, dim=LAYOUT.size) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("name", ["plain", "secagg", "additive", "paillier", "ckks"])
def test_huge_share_is_typed_in_setup_and_role_loaders(name: str) -> None:
    """The author's finding: 1e200 raised OverflowError from the headroom."""
    if name not in privagg.available_backends():
        pytest.skip(f"{name} not available")
    huge = DiscreteGaussianShare(1e200)
    opts: dict[str, Any] = {"ckks": {"preset": "test-fast", "threads": 1}}.get(name, {})
    be = privagg.get_backend(name, **opts)
    if name == "paillier":
        from privagg.backends.paillier import PaillierBackend

        be = PaillierBackend._insecure_for_tests(key_bits=512, workers=1)
    if name == "plain":  # no ring, slot or modulus to size: accepted, as by setup
        be.setup(LAYOUT, max_clients=N, noise=huge)
        return
    with pytest.raises(privagg.PrivaggError):
        be.setup(LAYOUT, max_clients=N, noise=huge)
    if name == "secagg":
        be = privagg.get_backend("secagg", active=False)
        for role in (Role.AGGREGATOR, Role.CLIENT, Role.HOLDER):
            with pytest.raises(privagg.PrivaggError):
                session_for_role(
                    be,
                    LAYOUT,
                    role,
                    party_id=IDS[0] if role is Role.CLIENT else None,
                    setup_seed=SEED,
                    max_clients=N,
                    noise=huge,
                )
        with pytest.raises(privagg.PrivaggError):
            public_setup(be, LAYOUT, SEED, max_clients=N, noise=huge)


class _LooksLikeAShare:
    """Has the attribute names but is no NoiseShare (no headroom)."""

    stddev = 0.05

    def sample_encoded(self, n: int, **kw: Any) -> Any:
        return np.zeros(n, dtype=np.int64)


@pytest.mark.parametrize(
    "bad",
    [
        0.05,
        True,
        "DiscreteGaussianShare(0.05)",
        {"stddev": 0.05},
        DiscreteGaussianShare,
        _LooksLikeAShare(),
    ],
    ids=["float", "bool", "str", "dict", "class", "duck"],
)
def test_non_share_noise_is_refused_by_every_entry_point(bad: Any) -> None:
    be = privagg.get_backend("secagg", active=False)
    for role in Role:
        with pytest.raises(privagg.ConfigurationError, match="NoiseShare"):
            session_for_role(
                be, LAYOUT, role, setup_seed=SEED, max_clients=N, noise=bad
            )
    with pytest.raises(privagg.ConfigurationError, match="NoiseShare"):
        public_setup(be, LAYOUT, SEED, max_clients=N, noise=bad)


def _passive_round(
    noise_of: dict[str, DiscreteGaussianShare | None], updates: dict[str, Any]
) -> tuple[set[bytes], privagg.Recovered]:
    """One passive SecAgg+ round, each party's session from ``public_setup`` with its
    own noise share (``noise_of``: aggregator, holder and each client)."""
    be = privagg.get_backend("secagg", active=False)
    s = {
        p: public_setup(be, LAYOUT, SEED, max_clients=N, noise=noise_of[p])
        for p in ["aggregator", "holder", *IDS]
    }
    agg = s["aggregator"].aggregator(5, IDS)
    roles = {
        c: s[c].client(c, 5, updates[c], rng=DeterministicRng(bytes([i]) * 32))
        for i, c in enumerate(IDS)
    }
    out = agg.start()
    while not agg.done:
        out = agg.receive({p: roles[p].handle(r) for p, r in out.items()})
    rec = s["holder"].holder().recover(agg.result())
    return {bytes(x.params_id) for x in s.values()}, rec


def _updates() -> dict[str, Any]:
    g = np.random.default_rng(1)  # public test data, not a secret
    return {c: g.uniform(-0.2, 0.2, LAYOUT.size) for c in IDS}


def test_sessions_without_noise_are_unchanged() -> None:
    """noise=None is the pre-#14 call: same params_id as omitting it, exact sum."""
    be = privagg.get_backend("secagg", active=False)
    a = public_setup(be, LAYOUT, SEED, max_clients=N)
    b = public_setup(be, LAYOUT, SEED, max_clients=N, noise=None)
    c = be.public_setup(LAYOUT, SEED, max_clients=N)
    assert a.params_id == b.params_id == c.params_id
    ups = _updates()
    ids, rec = _passive_round(dict.fromkeys(["aggregator", "holder", *IDS]), ups)
    assert len(ids) == 1
    tol = be.tolerance(n_clients=N, max_abs=0.2)
    np.testing.assert_allclose(rec.vector, sum(ups.values()), rtol=0, atol=tol + 1e-12)


def test_secagg_share_mismatch_gives_another_params_id() -> None:
    """Before the fix every role agreed on ``params_id`` here (the smaller share fits
    the same ring) and the sum carried 1/50 of the planned noise; now the clients'
    share is bound, so they hold another ``params_id`` than the aggregator and the
    holder."""
    be = privagg.get_backend("secagg", active=False)
    ledger = public_setup(be, LAYOUT, SEED, max_clients=N, noise=SHARE)
    small = public_setup(
        be, LAYOUT, SEED, max_clients=N, noise=DiscreteGaussianShare(0.001)
    )
    assert ledger.params_id != small.params_id


def test_secagg_client_with_a_smaller_share_is_refused() -> None:
    plan = {
        "aggregator": SHARE,
        "holder": SHARE,
        **dict.fromkeys(IDS, DiscreteGaussianShare(0.001)),
    }
    with pytest.raises(privagg.ParameterMismatchError):
        _passive_round(plan, _updates())


@pytest.mark.parametrize("name", ["plain", "secagg", "additive", "paillier", "ckks"])
@pytest.mark.parametrize(
    "bad", [0.5, "x", DiscreteGaussianShare], ids=["float", "str", "class"]
)
def test_setup_refuses_a_non_share_with_a_typed_error(name: str, bad: Any) -> None:
    """Worked before the review: ``Backend.setup(noise=0.5)`` raised AttributeError
    (plain accepted it), ``noise=DiscreteGaussianShare`` a TypeError."""
    if name not in privagg.available_backends():
        pytest.skip(f"{name} not available")
    if name == "paillier":
        from privagg.backends.paillier import PaillierBackend

        be: Any = PaillierBackend._insecure_for_tests(key_bits=512, workers=1)
    else:
        opts = {"preset": "test-fast", "threads": 1} if name == "ckks" else {}
        be = privagg.get_backend(name, **opts)
    with pytest.raises(privagg.ConfigurationError, match="NoiseShare"):
        be.setup(LAYOUT, max_clients=N, noise=bad)
