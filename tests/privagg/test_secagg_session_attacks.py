"""Security review (issue #11), SecAgg+ session findings: round-id reuse (4), identity
secrets from a public seed (6), pickling dealt material (9)."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

import privagg
from privagg.backends import secagg as sa
from privagg.errors import ConfigurationError, ProtocolError
from privagg.hazmat import DeterministicRng
from privagg.layout import Layout

SIZE = 3


def _session(**kw: object) -> sa.SecAggSession:
    layout = Layout.from_arrays({"w": np.zeros(SIZE)})
    return sa.SecAggBackend(bound=1.0).setup(layout, max_clients=5, **kw)  # type: ignore[arg-type]


def _ups(n: int = 5, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {f"c{i}": {"w": rng.uniform(-1, 1, SIZE)} for i in range(n)}


# -- finding 4: round ids --------------------------------------------------------------------
def test_run_round_uses_a_fresh_round_id_each_time() -> None:
    sess = _session()
    a = privagg.run_round(sess, _ups(seed=1))
    b = privagg.run_round(sess, _ups(seed=2))
    assert a.contributors and b.contributors
    ids = {sess.next_round_id() for _ in range(3)}
    assert len(ids) == 3 and 0 not in ids and 1 not in ids


def test_stale_messages_of_an_earlier_run_are_refused() -> None:
    """The old code gave every run_round round id 0: a stale SHARES/MASKED message
    captured in run 1 fitted run 2. Now run 2 has another round id, and the roles
    refuse to serve a round id twice."""
    sess = _session()
    ids = sorted(_ups())
    rid = sess.next_round_id()
    clients = {c: sess.client(c, rid, np.zeros(SIZE)) for c in ids}
    agg = sess.aggregator(rid, ids)
    first = agg.start()
    stale = {c: clients[c].handle(r) for c, r in first.items()}  # ADVERTISE, round rid
    with pytest.raises(ProtocolError):
        sess.aggregator(rid, ids)  # the same round id again
    with pytest.raises(ProtocolError):
        sess.client("c0", rid, np.zeros(SIZE))
    rid2 = sess.next_round_id()
    assert rid2 != rid
    agg2 = sess.aggregator(rid2, ids)
    agg2.start()
    with pytest.raises(ProtocolError):
        agg2.receive(stale)


def test_holder_refuses_a_round_it_already_recovered() -> None:
    sess = _session()
    ids = sorted(_ups())
    rid = sess.next_round_id()
    clients = {c: sess.client(c, rid, np.zeros(SIZE)) for c in ids}
    agg = sess.aggregator(rid, ids)
    out = agg.start()
    while not agg.done:
        out = agg.receive({c: clients[c].handle(r) for c, r in out.items()})
    holder = sess.holder()
    assert sess.holder() is holder
    holder.recover(agg.result())
    with pytest.raises(ProtocolError, match="already recovered"):
        holder.recover(agg.result())


@pytest.mark.parametrize("bad", [-1, 1 << 64, 1.5, True, "3"])
def test_round_ids_out_of_range_are_refused(bad: object) -> None:
    sess = _session()
    with pytest.raises(ConfigurationError):
        sess.aggregator(bad, ["c0"])  # type: ignore[arg-type]


# -- finding 6: secrets never from the public stream -----------------------------------------
def test_identity_keys_do_not_come_from_the_public_seed() -> None:
    """Two processes that share a public seed (same params_id) must not get the same
    identity keys: those come from the system CSPRNG, not from ``rng``."""
    a = _session(rng=DeterministicRng(42))
    b = _session(rng=DeterministicRng(42))
    assert a.params_id == b.params_id
    a.client("c0", 0, np.zeros(SIZE))
    b.client("c0", 0, np.zeros(SIZE))
    assert a.identity_public("c0") != b.identity_public("c0")


def test_dealt_identity_keys_do_not_come_from_the_public_seed() -> None:
    layout = Layout.from_arrays({"w": np.zeros(SIZE)})
    be = sa.SecAggBackend(bound=1.0)
    m1 = be.deal(layout, ["a", "b"], max_clients=2, rng=DeterministicRng(7))
    m2 = be.deal(layout, ["a", "b"], max_clients=2, rng=DeterministicRng(7))
    assert m1.clients["a"] != m2.clients["a"]
    s1 = be.load_role(layout, "aggregator", None, m1.aggregator, max_clients=2)
    s2 = be.load_role(layout, "aggregator", None, m2.aggregator, max_clients=2)
    assert s1.params_id == s2.params_id  # the public part is reproducible
    assert s1.identity_public("a") != s2.identity_public("a")


# -- finding 9: dealt material ---------------------------------------------------------------
def test_dealt_material_refuses_pickling_and_copying() -> None:
    layout = Layout.from_arrays({"w": np.zeros(SIZE)})
    m = sa.SecAggBackend(bound=1.0).deal(layout, ["a", "b"], max_clients=2)
    with pytest.raises(TypeError):
        pickle.dumps(m)
    with pytest.raises(TypeError):
        copy.deepcopy(m)
    with pytest.raises(TypeError):
        copy.copy(m)
    assert m.clients["a"].hex() not in repr(m)
    assert repr(m).startswith("DealtMaterial(aggregator_fp=") and "clients=2" in repr(m)
    assert sa.SecAggMaterial is privagg.DealtMaterial  # the kept name


# -- finding 7: a wrapped sum is refused, never returned -------------------------------------
def test_holder_refuses_a_sum_beyond_the_sized_range() -> None:
    from privagg.errors import EncodingOverflowError

    sess = _session()
    cfg = sess._cfg
    words = np.zeros(SIZE, dtype=cfg.dtype)
    words[0] = (
        np.iinfo(cfg.dtype).max // 2
    )  # a centred value far beyond 5 clients' range
    res = sa.ResultMessage(cfg.params_id, 9, "holder", ("c0", "c1"), words)
    with pytest.raises(EncodingOverflowError):
        sess.holder().recover(res.to_bytes())
