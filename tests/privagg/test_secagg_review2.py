"""Second independent review of SecAgg+ v2 (issue #11): each finding as a test."""

from __future__ import annotations

import numpy as np
import pytest

import privagg
from privagg.backends import secagg as sa
from privagg.backends._graph import choose_parameters, corrupt_budget
from privagg.envelope import Header, open_envelope, seal
from privagg.errors import InsufficientParticipantsError
from privagg.layout import Layout

SIZE = 4


def test_corruption_budget_is_absolute_not_a_fraction_of_the_round() -> None:
    """Finding 1: the server assembled U0 = 4 colluders + 16 honest clients out of a
    population of 40 (gamma = 0.1): every client sized t for C = ceil(0.1 * 20) = 2, but
    4 colluders were present, and a victim with >= t colluding neighbours masked with
    them only (x_v recovered from y_v alone). C is now ceil(gamma * max_clients)."""
    old = choose_parameters(20, dropout_rate=1 / 3, corruption_rate=0.1)
    new = choose_parameters(20, dropout_rate=1 / 3, corruption_rate=0.1, population=40)
    assert old.threshold <= 4 < new.threshold  # the old t was reachable by 4 colluders
    assert corrupt_budget(20, 0.1, 40) == 4
    layout = Layout.from_arrays({"w": np.zeros(SIZE)})
    sess = sa.SecAggBackend(bound=1.0).setup(layout, max_clients=40)
    assert sess.graph(20).threshold > 4  # no 4 colluders can reach t shares


def test_victim_among_all_colluders_is_refused_with_the_absolute_budget() -> None:
    """The reviewer's cherry-pick: deliver to a victim only the colluders' ciphertexts.
    With t > C the victim now has too few partners and refuses to mask."""
    layout = Layout.from_arrays({"w": np.zeros(SIZE)})
    sess = sa.SecAggBackend(bound=1.0).setup(layout, max_clients=40)
    cfg, P, R = sess._cfg, sess._cfg.params_id, 3
    ids = sorted(f"c{i:02d}" for i in range(20))
    colluders = set(ids[-4:])
    cl = {c: sess.client(c, R, np.zeros(SIZE)) for c in ids}
    agg = sess.aggregator(R, ids)
    reqs = agg.start()
    reqs = agg.receive({c: cl[c].handle(r) for c, r in reqs.items()})
    shares = {c: sa.SharesMessage.from_bytes(cl[c].handle(r)) for c, r in reqs.items()}
    for v in ids[:3]:
        cts = tuple(
            (s, ct)
            for s, m in shares.items()
            if s in colluders
            for r, ct in m.ciphertexts
            if r == v
        )
        with pytest.raises(InsufficientParticipantsError):
            cl[v].handle(sa.MaskRequest(P, R, v, cts).to_bytes())
    del cfg


def _tamper_round(kind: int) -> privagg.RoundResult:
    layout = Layout.from_arrays({"w": np.zeros(SIZE)})
    sess = sa.SecAggBackend(bound=1.0).setup(layout, max_clients=12)
    rng = np.random.default_rng(1)
    ups = {f"c{i:02d}": rng.uniform(-1, 1, SIZE) for i in range(12)}
    rid = sess.next_round_id()
    cl = {c: sess.client(c, rid, v) for c, v in ups.items()}
    agg = sess.aggregator(rid, sorted(ups))
    out = agg.start()
    while not agg.done:
        replies = {}
        for c, r in out.items():
            rep = cl[c].handle(r)
            h, payload = open_envelope(rep)
            if h.kind == kind == sa.SecAggKind.SIGNATURE and c == "c05":
                p = bytearray(payload)
                p[-1] ^= 1  # a bad signature, re-sealed
                rep = seal(Header(h.scheme, h.kind, h.params_id, h.round_id), bytes(p))
            elif h.kind == kind == sa.SecAggKind.UNMASK_SHARES and c == "c05":
                m = sa.UnmaskShares.from_bytes(rep)
                (owner, which, sh), rest = m.shares[0], m.shares[1:]
                bad = ((owner, 1 - which, sh), *rest)  # a share of the wrong secret
                rep = sa.UnmaskShares(m.params_id, m.round_id, m.party, bad).to_bytes()
            replies[c] = rep
        out = agg.receive(replies)
    rec = sess.holder().recover(agg.result())
    total = sum(ups[c] for c in rec.contributors)
    np.testing.assert_allclose(rec.vector, total, atol=1e-3)
    return rec  # type: ignore[return-value]


def test_one_bad_survivor_signature_does_not_abort_the_round() -> None:
    """Finding 4: a bad stage-3 signature used to raise ProtocolError for everyone."""
    rec = _tamper_round(sa.SecAggKind.SIGNATURE)
    assert "c05" in rec.contributors  # it uploaded: its input is in the sum


def test_one_bad_unmask_reply_does_not_abort_the_round() -> None:
    """A reply with a share of the wrong kind is ignored whole (it used to abort the
    round after the honest clients had revealed their shares)."""
    rec = _tamper_round(sa.SecAggKind.UNMASK_SHARES)
    assert len(rec.contributors) == 12
