"""Security review #11, findings 4 and 10a: no insecure defaults in the front door.

* ``secure_sum`` has no default backend (it used to default to the insecure ``plain``);
* ``run_round`` never falls back to round id 0: it takes the session's
  ``next_round_id()`` or an explicit ``round_id``, and refuses a session without one;
* the one-shot sessions (plain, CKKS, Paillier) hand out fresh round ids and their
  holders refuse a round they already recovered, so a contribution of an earlier run
  replayed under its old round id is not decrypted again.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import numpy as np
import pytest

import privagg
from privagg import ConfigurationError, Layout, ProtocolError
from privagg._oneshot import OneShotSession
from privagg.protocols import AggregatorRole, ClientRole, HolderRole, Responder, Session

UPS = {"a": {"w": np.array([0.5, -0.25])}, "b": {"w": np.array([0.125, 0.5])}}
LAYOUT = Layout.from_arrays(UPS["a"])


# -- finding 10a: secure_sum names its backend -------------------------------------------
def test_secure_sum_has_no_default_backend() -> None:
    param = inspect.signature(privagg.secure_sum).parameters["backend"]
    assert param.kind is inspect.Parameter.KEYWORD_ONLY
    assert param.default is inspect.Parameter.empty
    with pytest.raises(TypeError, match="backend"):
        privagg.secure_sum(list(UPS.values()))  # type: ignore[call-arg]


def test_secure_sum_with_an_explicit_backend_still_works() -> None:
    for be in ("plain", "additive"):
        out = privagg.secure_sum(list(UPS.values()), backend=be)
        assert np.allclose(out["w"], [0.625, 0.25], atol=1e-4)


def test_secure_sum_additive_refuses_a_single_update() -> None:
    """The additive default min_contributions=2 also holds through secure_sum."""
    with pytest.raises(ConfigurationError, match="min_contributions"):
        privagg.secure_sum([UPS["a"]], backend="additive")
    out = privagg.secure_sum([UPS["a"]], backend="additive", min_contributions=1)
    assert np.allclose(out["w"], UPS["a"]["w"], atol=1e-4)


# -- finding 4: run_round round ids ---------------------------------------------------------
class _NoRoundIds:
    """A session that does not hand out round ids (a third-party backend, say)."""

    def __init__(self, inner: OneShotSession) -> None:
        self._inner = inner
        self.backend_name = inner.backend_name
        self.layout = inner.layout

    def aggregator(self, round_id: int, client_ids: Sequence[str]) -> AggregatorRole:
        return self._inner.aggregator(round_id, client_ids)

    def client(
        self,
        client_id: str,
        round_id: int,
        update: np.ndarray,
        *,
        weight: float = 1.0,
        rng: privagg.Rng | None = None,
    ) -> ClientRole:
        return self._inner.client(client_id, round_id, update, weight=weight, rng=rng)

    def servers(self, round_id: int) -> dict[str, Responder]:
        return {}

    def holder(self) -> HolderRole:
        return self._inner.holder()


def test_run_round_without_next_round_id_needs_an_explicit_round_id() -> None:
    inner = privagg.get_backend("plain").setup(LAYOUT, max_clients=2)
    assert isinstance(inner, OneShotSession)
    session = _NoRoundIds(inner)
    assert isinstance(session, Session)
    with pytest.raises(ConfigurationError, match="next_round_id"):
        privagg.run_round(session, UPS)
    res = privagg.run_round(session, UPS, round_id=7)
    assert res.contributors == ("a", "b")
    with pytest.raises(ProtocolError):  # the holder already recovered round 7
        privagg.run_round(session, UPS, round_id=7)


@pytest.mark.parametrize("bad", [-1, 1 << 64, True, 1.0, "0"])
def test_run_round_rejects_a_bad_round_id(bad: object) -> None:
    session = privagg.get_backend("plain").setup(LAYOUT, max_clients=2)
    with pytest.raises(ConfigurationError):
        privagg.run_round(session, UPS, round_id=bad)  # type: ignore[arg-type]


def _paillier() -> privagg.Backend:
    from privagg.backends.paillier import PaillierBackend

    return PaillierBackend._insecure_for_tests(512, workers=1)


ONE_SHOT: dict[str, Callable[[], privagg.Backend]] = {
    "plain": lambda: privagg.get_backend("plain"),
    "ckks": lambda: privagg.get_backend("ckks", threads=1),
    "paillier": _paillier,
}


@pytest.mark.parametrize("name", sorted(ONE_SHOT))
def test_one_shot_sessions_use_fresh_round_ids_and_refuse_replays(name: str) -> None:
    if name not in privagg.available_backends():
        pytest.skip(f"backend {name!r} is not installed")
    session = ONE_SHOT[name]().setup(LAYOUT, max_clients=2)
    assert isinstance(session, OneShotSession)
    vecs = {c: LAYOUT.flatten(u) for c, u in UPS.items()}

    # an earlier run: round ids come from the session, never a constant
    first = session.next_round_id()
    agg = session.aggregator(first, list(vecs))
    reqs = agg.start()
    stale = {c: session.client(c, first, v).handle(reqs[c]) for c, v in vecs.items()}
    agg.receive(stale)
    session.holder().recover(agg.result())
    res = privagg.run_round(session, UPS)
    assert np.allclose(res.vector, vecs["a"] + vecs["b"], atol=1e-3)
    assert session.next_round_id() not in {first}

    # the stale contributions in a later round: refused (bound to their round id)
    later = session.next_round_id()
    agg2 = session.aggregator(later, list(vecs))
    agg2.start()
    with pytest.raises(ProtocolError, match="replay"):
        agg2.receive(stale)

    # replayed under their own, old round id: combined again, but never recovered again
    agg3 = session.aggregator(first, list(vecs))
    agg3.start()
    agg3.receive(stale)
    with pytest.raises(ProtocolError, match="already recovered"):
        session.holder().recover(agg3.result())
