"""SecAgg+ backend: contract suite, dropouts at every stage, aborts, tampering, replays."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import privagg
from privagg import (
    DeserializationError,
    InsufficientParticipantsError,
    Layout,
    ParameterMismatchError,
    ProtocolError,
)
from privagg.backends import secagg as sa
from privagg.backends._graph import choose_parameters, harary_neighbours
from privagg.backends.secagg import SecAggBackend, SecAggKind
from privagg.envelope import open_envelope
from privagg.hazmat import DeterministicRng
from tests.privagg.contract.backend_contract import BackendContract


class TestSecAggContract(BackendContract):
    max_clients = 5
    n_clients = 5

    def make_backend(self) -> SecAggBackend:
        return SecAggBackend(bound=2.0)

    def secrets(self, session: object) -> list[object]:
        return list(session.identity_keys())  # type: ignore[attr-defined]


# -- helpers ----------------------------------------------------------------------------------
def _updates(n: int, size: int = 50, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    g = np.random.default_rng(seed)
    return {f"c{i:02d}": {"w": g.uniform(-1, 1, size)} for i in range(n)}


def _session(be: SecAggBackend, n: int, size: int = 50) -> sa.SecAggSession:
    return be.setup(Layout.from_arrays({"w": np.zeros(size)}), max_clients=n)


def _check_exact(
    res: privagg.RoundResult, ups: Mapping[str, Mapping[str, np.ndarray]], n: int
) -> None:
    ref = sum(ups[c]["w"] for c in res.contributors)
    assert np.max(np.abs(res.vector - ref)) <= SecAggBackend().tolerance(
        n_clients=n, max_abs=1.0
    )


class _Driver:
    """Routes bytes like run_round, recording every request, with hooks to tamper."""

    def __init__(
        self,
        session: sa.SecAggSession,
        ups: Mapping[str, Mapping[str, np.ndarray]],
        round_id: int = 0,
    ) -> None:
        self.session = session
        self.clients = {
            c: session.client(
                c, round_id, session.layout.flatten(u), rng=DeterministicRng(i)
            )
            for i, (c, u) in enumerate(ups.items())
        }
        self.agg = session.aggregator(round_id, list(ups))
        self.kinds: list[int] = []

    def run(
        self,
        drop: Mapping[int, set[str]] | None = None,
        edit_request: Callable[[int, str, bytes], bytes] | None = None,
    ) -> privagg.Recovered:
        out = self.agg.start()
        gone: set[str] = set()
        stage = 0
        while not self.agg.done:
            gone |= (drop or {}).get(stage, set())
            replies = {}
            for pid, req in out.items():
                self.kinds.append(open_envelope(req)[0].kind)
                if pid in gone:
                    continue
                if edit_request is not None:
                    req = edit_request(stage, pid, req)
                replies[pid] = self.clients[pid].handle(req)
            out = self.agg.receive(replies)
            stage += 1
        return self.session.holder().recover(self.agg.result())


# -- correctness ---------------------------------------------------------------------------------
@settings(max_examples=8, deadline=None)
@given(
    n=st.integers(1, 7),
    size=st.integers(1, 30),
    active=st.booleans(),
    full=st.booleans(),
    data=st.data(),
)
def test_exact_sum_property(
    n: int, size: int, active: bool, full: bool, data: st.DataObject
) -> None:
    vals = data.draw(
        st.lists(
            st.lists(st.floats(-1, 1), min_size=size, max_size=size),
            min_size=n,
            max_size=n,
        )
    )
    be = SecAggBackend(active=active, full_graph=full)
    ups = {f"c{i}": {"w": np.asarray(v)} for i, v in enumerate(vals)}
    res = privagg.run_round(_session(be, n, size), ups)
    assert res.contributors == tuple(sorted(ups))
    _check_exact(res, ups, n)


def test_ring_is_32_bit_for_small_sums_and_64_bit_for_large() -> None:
    assert _session(SecAggBackend(), 50).ring_bits == 32
    assert _session(SecAggBackend(bound=1e6, scale_bits=20), 50).ring_bits == 64
    ups = {f"c{i}": {"w": np.full(4, 1e6 if i % 2 else -1e6)} for i in range(3)}
    res = privagg.run_round(
        SecAggBackend(bound=1e6, scale_bits=20).setup(
            Layout.from_arrays(ups["c0"]), max_clients=3
        ),
        ups,
    )
    assert np.allclose(res.vector, -1e6, atol=1e-4)


# -- dropouts: every stage x every count up to n - t --------------------------------------------
_N = 7
_T = choose_parameters(
    _N, dropout_rate=0.45, corruption_rate=0.1, full_graph=True
).threshold


@pytest.mark.parametrize("active", [True, False])
def test_dropout_every_stage_every_count(active: bool) -> None:
    """Every stage x every dropout count up to n - t - 1 (n - quorum for the active variant)."""
    be = SecAggBackend(full_graph=True, dropout_rate=0.45, active=active)
    stages = 5 if active else 4
    need = _session(be, _N).unmask_quorum(_N)
    # Owners hold no share of their own secrets (finding 2), so a survivor needs t other
    # live holders: the semi-honest round needs t + 1 survivors (it needed t before).
    assert need == (_T + 1 if not active else 5) and _N - _T >= 3
    ups = _updates(_N, 40)
    ids = sorted(ups)
    for stage, count in itertools.product(range(stages), range(_N - need + 1)):
        dropped = set(ids[_N - count :])
        res = privagg.run_round(_session(be, _N, 40), ups, dropouts={stage: dropped})
        in_sum = set(ids) if stage >= 3 else set(ids) - dropped
        assert set(res.contributors) == in_sum, (stage, count)
        _check_exact(res, ups, _N)


@pytest.mark.parametrize("active", [True, False])
@pytest.mark.parametrize("stage", [0, 1, 2, 3, 4])
def test_too_many_dropouts_abort_without_unmask_requests(
    stage: int, active: bool
) -> None:
    be = SecAggBackend(full_graph=True, dropout_rate=0.45, active=active)
    if stage == 4 and not active:
        return  # the semi-honest protocol has four stages
    ups = _updates(_N, 10)
    session = _session(be, _N, 10)
    last = 4 if active else 3  # at the unmask stage itself t share holders suffice
    need = _T if stage == last else session.unmask_quorum(_N)
    dropped = set(sorted(ups)[: _N - need + 1])
    drv = _Driver(session, ups)
    with pytest.raises(InsufficientParticipantsError):
        drv.run(drop={stage: dropped})
    if stage <= 2:  # aborted before anything could be unmasked
        assert (
            SecAggKind.UNMASK not in drv.kinds
            and SecAggKind.CONSISTENCY not in drv.kinds
        )


def test_sparse_graph_recovers_one_third_dropout() -> None:
    be = SecAggBackend()
    n = 24
    g = _session(be, n).graph(n)
    assert not g.full and g.degree < n - 1
    ups = _updates(n, 30, seed=3)
    ids = sorted(ups)
    for stage in range(5):
        res = privagg.run_round(
            _session(be, n, 30), ups, dropouts={stage: set(ids[::3])}
        )
        _check_exact(res, ups, n)
        assert len(res.contributors) == (n if stage >= 3 else n - len(ids[::3]))


def test_dropouts_spread_over_stages() -> None:
    ups = _updates(10, 20, seed=4)
    ids = sorted(ups)
    res = privagg.run_round(
        _session(SecAggBackend(), 10, 20),
        ups,
        dropouts={1: {ids[0]}, 2: {ids[1]}, 3: {ids[2]}},
    )
    assert set(res.contributors) == set(ids[2:])
    _check_exact(res, ups, 10)


# -- graph and parameters ---------------------------------------------------------------------------
def test_harary_graph_is_regular_and_symmetric() -> None:
    ids = [f"c{i}" for i in range(30)]
    nb = harary_neighbours(ids, 8, b"seed")
    assert all(len(v) == 8 and c not in v for c, v in nb.items())
    assert all(c in nb[j] for c, v in nb.items() for j in v)
    assert harary_neighbours(ids, 8, b"other") != nb
    full = harary_neighbours(ids, 29, b"seed")
    assert all(len(v) == 29 for v in full.values())


def test_parameters_meet_the_bounds() -> None:
    for n in (5, 20, 50, 100):
        g = choose_parameters(n, dropout_rate=1 / 3, corruption_rate=0.1)
        assert 1 <= g.threshold <= g.degree + 1 and g.degree <= n - 1
        assert g.threshold >= 2 or n == 1
    g = choose_parameters(50, dropout_rate=1 / 3, corruption_rate=0.1)
    assert not g.full and g.degree < 30
    assert (
        choose_parameters(
            50, dropout_rate=1 / 3, corruption_rate=0.1, full_graph=True
        ).degree
        == 49
    )
    with pytest.raises(privagg.ConfigurationError):
        choose_parameters(10, dropout_rate=0.6, corruption_rate=0.39, full_graph=True)


@pytest.mark.parametrize(
    "opts",
    [
        {"dropout_rate": 1.0},
        {"corruption_rate": -0.1},
        {"dropout_rate": 0.6, "corruption_rate": 0.5},
        {"sigma": 0},
        {"active": 1},
        {"bound": 0.0},
        {"scale_bits": 60},
    ],
)
def test_bad_options_rejected(opts: dict[str, object]) -> None:
    with pytest.raises(privagg.ConfigurationError):
        SecAggBackend(**opts)  # type: ignore[arg-type]


def test_out_of_bound_values_rejected_or_clipped() -> None:
    ups = {"a": {"w": np.array([0.5, 3.0])}, "b": {"w": np.array([0.0, 0.0])}}
    with pytest.raises(privagg.EncodingOverflowError):
        privagg.run_round(
            SecAggBackend().setup(Layout.from_arrays(ups["a"]), max_clients=2), ups
        )
    res = privagg.run_round(
        SecAggBackend(clip=True).setup(Layout.from_arrays(ups["a"]), max_clients=2), ups
    )
    assert np.allclose(res.vector, [0.5, 1.0], atol=1e-4)


# -- tampering, duplicates, replays, malicious server ------------------------------------------------------
def _reseal(msg: object) -> bytes:
    return msg.to_bytes()  # type: ignore[attr-defined]


def test_tampered_share_ciphertext_rejected_by_gcm() -> None:
    ups = _updates(5, 10)

    def edit(stage: int, pid: str, req: bytes) -> bytes:
        if stage == 2 and pid == "c00":
            m = sa.MaskRequest.from_bytes(req)
            sender, ct = m.ciphertexts[0]
            bad = bytes([ct[0] ^ 1]) + ct[1:]
            return _reseal(
                sa.MaskRequest(
                    m.params_id,
                    m.round_id,
                    m.party,
                    ((sender, bad), *m.ciphertexts[1:]),
                )
            )
        return req

    # The GCM tag still rejects the altered share; since finding 4 the recipient treats the
    # sender as dropped (reports it) instead of aborting the round, so the round completes
    # without that sender and the sum of the others is exact.
    drv = _Driver(_session(SecAggBackend(), 5, 10), ups)
    sender = "c01"
    res = drv.run(edit_request=edit)
    assert sender in drv.agg.rejected and sender not in res.contributors
    assert set(res.contributors) == set(ups) - {sender}
    ref = sum(ups[c]["w"] for c in res.contributors)
    assert np.max(np.abs(res.vector - ref)) <= SecAggBackend().tolerance(
        n_clients=5, max_abs=1.0
    )


def test_share_relayed_to_wrong_recipient_rejected() -> None:
    ups = _updates(5, 10)
    drv = _Driver(_session(SecAggBackend(full_graph=True), 5, 10), ups)
    stolen: dict[str, bytes] = {}

    def edit(stage: int, pid: str, req: bytes) -> bytes:
        m = sa.MaskRequest.from_bytes(req) if stage == 2 else None
        if m is None:
            return req
        if pid == "c01":
            stolen.update(m.ciphertexts)
            return req
        if pid == "c02":  # give c02 the ciphertext c03 encrypted for c01
            cts = dict(m.ciphertexts)
            cts["c03"] = stolen["c03"]
            return _reseal(
                sa.MaskRequest(m.params_id, m.round_id, m.party, tuple(cts.items()))
            )
        return req

    # Re-addressed ciphertexts fail the tag (AAD binds sender and recipient); the recipient
    # drops c03 rather than aborting (finding 4), and c03 is excluded from the sum.
    res = drv.run(edit_request=edit)
    assert "c03" in drv.agg.rejected and "c03" not in res.contributors
    ref = sum(ups[c]["w"] for c in res.contributors)
    assert np.max(np.abs(res.vector - ref)) <= SecAggBackend().tolerance(
        n_clients=5, max_abs=1.0
    )
    assert drv.agg._rejected_by["c02"] == {
        "c03"
    }  # c02's tag check failed and it said so


def test_duplicate_request_and_duplicate_entries_rejected() -> None:
    s = _session(SecAggBackend(), 3, 5)
    ups = _updates(3, 5)
    c = s.client("c00", 0, s.layout.flatten(ups["c00"]))
    agg = s.aggregator(0, list(ups))
    req = agg.start()["c00"]
    c.handle(req)
    with pytest.raises(ProtocolError):
        c.handle(req)  # the same stage twice
    m = sa.MaskRequest(s.params_id, 0, "c00", (("c01", b"x" * 80), ("c01", b"y" * 80)))
    with pytest.raises(DeserializationError):
        sa.MaskRequest.from_bytes(m.to_bytes())


def test_stale_stage_reply_rejected_by_aggregator() -> None:
    ups = _updates(3, 5)
    s = _session(SecAggBackend(), 3, 5)
    clients = {c: s.client(c, 0, s.layout.flatten(u)) for c, u in ups.items()}
    agg = s.aggregator(0, list(ups))
    first = {c: clients[c].handle(r) for c, r in agg.start().items()}
    agg.receive(first)
    with pytest.raises(ProtocolError):
        agg.receive(first)  # stage-0 replies replayed at stage 1


def test_replay_from_other_round_rejected_at_every_stage() -> None:
    ups = _updates(3, 5)
    s = _session(SecAggBackend(), 3, 5)
    old = _Driver(s, ups, round_id=1)
    old_msgs: list[bytes] = []
    old.run(edit_request=lambda st_, pid, req: (old_msgs.append(req), req)[1])
    fresh = {c: s.client(c, 2, s.layout.flatten(u)) for c, u in ups.items()}
    for req in old_msgs:
        with pytest.raises(ProtocolError):
            fresh["c00"].handle(req)


def test_reply_from_other_session_rejected() -> None:
    ups = _updates(3, 5)
    a, b = _session(SecAggBackend(), 3, 5), _session(SecAggBackend(), 3, 5)
    assert a.params_id != b.params_id
    agg = a.aggregator(0, list(ups))
    reqs = agg.start()
    replies = {
        c: a.client(c, 0, a.layout.flatten(u)).handle(reqs[c]) for c, u in ups.items()
    }
    replies["c00"] = b.client("c00", 0, b.layout.flatten(ups["c00"])).handle(
        b.aggregator(0, list(ups)).start()["c00"]
    )
    # ignored: c00 counts as dropped (3 clients cannot lose one at stage 0)
    with pytest.raises(privagg.InsufficientParticipantsError):
        agg.receive(replies)
    assert agg.rejected == {"c00"}
    # test_secagg_garbage_drop.py runs whole rounds with such replies at every stage


def test_client_refuses_lowered_threshold() -> None:
    s = _session(SecAggBackend(), 5, 5)
    ups = _updates(5, 5)
    req = sa.SetupRequest.from_bytes(s.aggregator(0, list(ups)).start()["c00"])
    bad = sa.SetupRequest(
        req.params_id, req.round_id, req.party, req.participants, req.degree, 1
    )
    with pytest.raises(ProtocolError):
        s.client("c00", 0, s.layout.flatten(ups["c00"])).handle(bad.to_bytes())


def test_active_client_refuses_unsigned_or_inconsistent_survivor_set() -> None:
    ups = _updates(5, 5)

    def drop_sigs(stage: int, pid: str, req: bytes) -> bytes:
        if stage == 4:
            m = sa.UnmaskRequest.from_bytes(req)
            return _reseal(
                sa.UnmaskRequest(
                    m.params_id, m.round_id, m.party, m.survivors, m.signatures[:1]
                )
            )
        return req

    with pytest.raises(ProtocolError):
        _Driver(_session(SecAggBackend(), 5, 5), ups).run(edit_request=drop_sigs)

    def other_set(stage: int, pid: str, req: bytes) -> bytes:
        if (
            stage == 4
        ):  # claim c04 dropped to obtain its s-share while holding its b-share
            m = sa.UnmaskRequest.from_bytes(req)
            surv = tuple(s for s in m.survivors if s != "c04")
            return _reseal(
                sa.UnmaskRequest(m.params_id, m.round_id, m.party, surv, m.signatures)
            )
        return req

    with pytest.raises(ProtocolError):
        _Driver(_session(SecAggBackend(), 5, 5), ups).run(edit_request=other_set)


def test_forged_key_signature_rejected() -> None:
    ups = _updates(4, 5)

    def forge(stage: int, pid: str, req: bytes) -> bytes:
        if stage == 1:
            m = sa.ShareKeysRequest.from_bytes(req)
            keys = [
                k
                if k.party == pid
                else sa.AdvertiseMessage(
                    k.params_id,
                    k.round_id,
                    k.party,
                    k.c_pk[::-1],
                    k.s_pk,
                    k.signature,
                    k.b_commit,
                )
                for k in m.keys
            ]
            return _reseal(
                sa.ShareKeysRequest(m.params_id, m.round_id, m.party, tuple(keys))
            )
        return req

    with pytest.raises(ProtocolError):
        _Driver(_session(SecAggBackend(), 4, 5), ups).run(edit_request=forge)


def test_messages_hide_secrets_in_repr() -> None:
    ups = _updates(3, 5)
    s = _session(SecAggBackend(), 3, 5)
    c = s.client("c00", 0, s.layout.flatten(ups["c00"]))
    assert "c00" in repr(c)
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(c)


def test_every_stage_message_decodes_via_from_bytes() -> None:
    ups = _updates(4, 5)
    seen: list[bytes] = []
    drv = _Driver(_session(SecAggBackend(), 4, 5), ups)
    drv.run(edit_request=lambda st_, pid, req: (seen.append(req), req)[1])
    kinds = {open_envelope(m)[0].kind for m in seen}
    assert kinds == {
        SecAggKind.SETUP,
        SecAggKind.SHARE_KEYS,
        SecAggKind.MASK,
        SecAggKind.CONSISTENCY,
        SecAggKind.UNMASK,
    }
    for m in seen:
        assert privagg.from_bytes(m).to_bytes() == m


class _ConstNoise:
    """A NoiseShare stub: every client adds +3 fixed-point units to every value."""

    def sample_encoded(self, n: int, *, scale: float, rng: object) -> np.ndarray:
        return np.full(n, 3, dtype=np.int64)

    def sample_real(self, n: int, *, rng: object) -> np.ndarray:
        return np.full(n, 3.0)

    def headroom(self, n_clients: int) -> float:
        return 1.0


@pytest.mark.parametrize(
    "backend", [SecAggBackend(), SecAggBackend(bound=1e6, scale_bits=20, active=False)]
)
def test_noise_share_is_added_in_fixed_point_units_with_dropouts(
    backend: SecAggBackend,
) -> None:
    n, size = 6, 12
    ups = {f"c{i}": {"w": np.linspace(-0.9, 0.9, size) * (i + 1) / n} for i in range(n)}
    s = backend.setup(Layout.from_arrays(ups["c0"]), max_clients=n, noise=_ConstNoise())
    res = privagg.run_round(s, ups, dropouts={2: {"c5"}})
    assert res.contributors == ("c0", "c1", "c2", "c3", "c4")
    scale = 2.0 ** (16 if s.ring_bits == 32 else 20)
    ref = sum(ups[c]["w"] for c in res.contributors) + 5 * 3 / scale
    assert np.max(np.abs(res.vector - ref)) <= 5 / scale


def test_equivocating_server_cannot_reach_the_signature_quorum() -> None:
    """The server shows survivor set U3 to group A and U3 minus c09 to group B, hoping
    group B reveals c09's mask-key shares while group A reveals its self-mask shares.
    Each group signs its own set; group B cannot reach the quorum, so it reveals nothing."""
    n = 10
    ups = _updates(n, 8)
    s = _session(SecAggBackend(), n, 8)
    q = s.unmask_quorum(n)
    assert q > s.graph(n).threshold
    clients = {c: s.client(c, 0, s.layout.flatten(u)) for c, u in ups.items()}
    agg = s.aggregator(0, list(ups))
    reqs = agg.start()
    for _ in range(3):
        reqs = agg.receive({c: clients[c].handle(r) for c, r in reqs.items()})
    ids = sorted(ups)
    group_a, group_b = ids[:q], ids[q:-1]
    u3_b = tuple(ids[:-1])
    sigs_b = {}
    for c in group_b:
        m = sa.ConsistencyRequest.from_bytes(reqs[c])
        lie = sa.ConsistencyRequest(m.params_id, m.round_id, c, u3_b).to_bytes()
        sigs_b[c] = sa.SignatureMessage.from_bytes(clients[c].handle(lie)).signature
    unmask_a = agg.receive({c: clients[c].handle(reqs[c]) for c in group_a})
    assert set(unmask_a) == set(group_a)
    for c in group_b:
        req = sa.UnmaskRequest(
            s.params_id, 0, c, u3_b, tuple(sigs_b.items())
        ).to_bytes()
        with pytest.raises(ProtocolError):
            clients[c].handle(req)


@pytest.mark.parametrize("active", [True, False])
def test_dealt_material_runs_each_role_from_its_own_session(active: bool) -> None:
    """deal/load_role: every role rebuilt from its own material (as in separate processes)."""
    be = SecAggBackend(active=active)
    ups = _updates(6, 20, seed=9)
    layout = Layout.from_arrays(ups["c00"])
    dealt = be.deal(layout, sorted(ups), max_clients=6)
    agg_s = be.load_role(layout, "aggregator", None, dealt.aggregator, max_clients=6)
    clients = {
        c: be.load_role(layout, "client", c, dealt.clients[c], max_clients=6).client(
            c, 3, layout.flatten(u)
        )
        for c, u in ups.items()
    }
    holder_s = be.load_role(layout, "holder", None, dealt.holder, max_clients=6)
    assert agg_s.params_id == holder_s.params_id
    agg = agg_s.aggregator(3, sorted(ups))
    reqs = agg.start()
    gone = {"c02"}
    stage = 0
    while not agg.done:
        if stage == 2:
            reqs = {c: r for c, r in reqs.items() if c not in gone}
        reqs = agg.receive({c: clients[c].handle(r) for c, r in reqs.items()})
        stage += 1
    res = holder_s.holder().recover(agg.result())
    assert "c02" not in res.contributors
    ref = sum(layout.flatten(ups[c]) for c in res.contributors)
    assert np.max(np.abs(res.vector - ref)) <= 6 * 2.0**-16
    # a client process holds only its own identity key
    one = be.load_role(layout, "client", "c00", dealt.clients["c00"], max_clients=6)
    if active:
        with pytest.raises(privagg.MissingKeyError):
            one.client("c01", 3, layout.flatten(ups["c01"]))
    assert len(one.identity_keys()) == 1
    assert agg_s.identity_keys() == [] and holder_s.identity_keys() == []


def test_dealt_material_is_checked() -> None:
    be = SecAggBackend()
    layout = Layout.from_arrays({"w": np.zeros(4)})
    dealt = be.deal(layout, ["a", "b", "c"], max_clients=3)
    with pytest.raises(ParameterMismatchError):
        be.load_role(
            Layout.from_arrays({"v": np.zeros(4)}),
            "aggregator",
            None,
            dealt.aggregator,
            max_clients=3,
        )
    with pytest.raises(ParameterMismatchError):
        SecAggBackend(bound=2.0).load_role(
            layout, "aggregator", None, dealt.aggregator, max_clients=3
        )
    bad = bytearray(dealt.clients["a"])
    bad[70] ^= 1
    with pytest.raises(DeserializationError):
        be.load_role(layout, "client", "a", bytes(bad), max_clients=3)
    with pytest.raises(privagg.ConfigurationError):
        be.load_role(layout, "client", "zz", dealt.clients["a"], max_clients=3)
    with pytest.raises(ParameterMismatchError):
        be.load_role(layout, "client", "b", dealt.clients["a"], max_clients=3)
    assert "SecretBytes" not in repr(dealt) and dealt.clients["a"].hex() not in repr(
        dealt
    )
