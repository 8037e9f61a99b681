"""Multi-server additive sharing: contract suite, exactness, shares look uniform, tampering."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import privagg
from privagg import (
    DeserializationError,
    InsufficientParticipantsError,
    Layout,
    ParameterMismatchError,
    ProtocolError,
)
from privagg.backends import additive as ad
from privagg.backends.additive import AdditiveBackend
from privagg.backends.additive import _context as ad_ctx
from tests.privagg.contract.backend_contract import BackendContract


class TestAdditiveContract(BackendContract):
    max_clients = 5
    n_clients = 4

    def make_backend(self) -> AdditiveBackend:
        # The contract draws rounds of a single client; accepting them needs an explicit
        # min_contributions=1 (the default, 2, refuses them: tested below).
        return AdditiveBackend(bound=2.0, n_servers=3, min_contributions=1)

    def secrets(self, session: object) -> list[object]:
        return list(session.secret_keys())  # type: ignore[attr-defined]


def _ups(n: int, size: int = 30, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    g = np.random.default_rng(seed)
    return {f"c{i}": {"w": g.uniform(-1, 1, size)} for i in range(n)}


def _session(n: int, size: int = 30, **kw: object) -> ad.AdditiveSession:
    return AdditiveBackend(**kw).setup(
        Layout.from_arrays({"w": np.zeros(size)}), max_clients=n
    )  # type: ignore[arg-type]


@settings(max_examples=8, deadline=None)
@given(
    n=st.integers(2, 6),
    servers=st.integers(2, 4),
    size=st.integers(1, 20),
    data=st.data(),
)
def test_exact_sum_property(
    n: int, servers: int, size: int, data: st.DataObject
) -> None:
    vals = data.draw(
        st.lists(
            st.lists(st.floats(-1, 1), min_size=size, max_size=size),
            min_size=n,
            max_size=n,
        )
    )
    ups = {f"c{i}": {"w": np.asarray(v)} for i, v in enumerate(vals)}
    res = privagg.run_round(_session(n, size, n_servers=servers), ups)
    ref = np.sum([np.asarray(v) for v in vals], axis=0)
    assert np.max(np.abs(res.vector - ref)) <= AdditiveBackend().tolerance(
        n_clients=n, max_abs=1.0
    )


def test_client_dropout_is_exact_for_the_others() -> None:
    ups = _ups(6)
    res = privagg.run_round(_session(6), ups, dropouts={0: {"c1", "c4"}})
    assert res.contributors == ("c0", "c2", "c3", "c5")
    ref = sum(ups[c]["w"] for c in res.contributors)
    assert np.max(np.abs(res.vector - ref)) <= 6 * 2.0**-16


def test_server_dropout_aborts() -> None:
    with pytest.raises(InsufficientParticipantsError):
        privagg.run_round(_session(3, n_servers=3), _ups(3), dropouts={1: {"server-2"}})


def test_communication_is_one_ring_vector_per_client() -> None:
    res = privagg.run_round(_session(4, 10000, n_servers=4), _ups(4, 10000))
    assert max(res.bytes_sent.values()) <= 4 * 10000 * 1.02


def _client_shares(
    x: np.ndarray, n_servers: int = 2
) -> tuple[ad.AdditiveSession, bytes]:
    s = AdditiveBackend(n_servers=n_servers).setup(
        Layout.from_arrays({"w": x}), max_clients=2
    )
    agg = s.aggregator(0, ["a", "b"])
    req = agg.start()["a"]
    return s, s.client("a", 0, x).handle(req)


@pytest.mark.parametrize("value", [0.0, 0.75])
def test_server0_share_is_uniform(value: float) -> None:
    _, rep = _client_shares(np.full(20000, value))
    share = ad.ClientShares.from_bytes(rep).share0
    u = share.astype(np.float64) / 2.0**32
    counts = np.bincount(np.minimum((u * 64).astype(int), 63), minlength=64)
    assert stats.kstest(u, "uniform").pvalue > 1e-6
    assert stats.chisquare(counts).pvalue > 1e-6


def _open_seeds(s: ad.AdditiveSession, m: ad.ClientShares) -> dict[str, bytes]:
    """What each server k >= 1 decrypts from a client's entry (its whole view of the client)."""
    from privagg.backends._primitives import aead_decrypt, ecdh, hkdf, x25519_key

    cfg = s._cfg
    out = {}
    for sid, ct in m.seeds:
        sk = x25519_key(s._server_keys[sid].unsafe_material())
        ctx = ad_ctx._ctx(cfg, m.round_id, m.party, sid)
        info = ad_ctx._DOMAIN + b"seed-key" + ctx + m.ephemeral_pk
        key = hkdf(ecdh(sk, m.ephemeral_pk), salt=cfg.params_id, info=info)
        out[sid] = aead_decrypt(
            key, ct, ad_ctx._DOMAIN + b"seed" + ctx + m.ephemeral_pk
        )
    return out


@pytest.mark.parametrize("n_servers", [2, 4])
def test_seeded_shares_reconstruct_the_encoding_exactly(n_servers: int) -> None:
    """Server 0's share + the AES-CTR expansion of every other server's seed = the encoding."""
    from privagg.backends._ringcode import add_masks, centred

    x = np.random.default_rng(5).uniform(-1, 1, 70_000)  # > 2 blocks of the fused pass
    s, rep = _client_shares(x, n_servers)
    m = ad.ClientShares.from_bytes(rep)
    seeds = _open_seeds(s, m)
    assert sorted(seeds) == [f"server-{k}" for k in range(1, n_servers)]
    assert all(len(v) == 32 for v in seeds.values())
    total = m.share0.copy()
    add_masks(total, [(seed, 1) for seed in seeds.values()])
    assert np.all(np.abs(centred(total) - x * 2**16) < 1)
    assert len(rep) <= 4 * x.size + 400  # one ring word per value + the encrypted seeds


def test_seed_server_view_is_independent_of_the_data() -> None:
    """A server k >= 1 sees only a seed: with the same client randomness, two different
    updates give that server bit-identical views (server 0's view is tested uniform)."""
    from privagg.hazmat import DeterministicRng

    s = AdditiveBackend(n_servers=3).setup(
        Layout.from_arrays({"w": np.zeros(500)}), max_clients=2
    )
    req = s.aggregator(0, ["a", "b"]).start()["a"]
    views = []
    for value in (0.0, 0.9):
        rep = s.client("a", 0, np.full(500, value), rng=DeterministicRng(3)).handle(req)
        m = ad.ClientShares.from_bytes(rep)
        views.append((m.ephemeral_pk, dict(m.seeds), _open_seeds(s, m)))
    assert views[0] == views[1]


def test_tampered_seed_rejected_by_server() -> None:
    s = _session(2)
    ups = _ups(2)
    clients = {c: s.client(c, 0, s.layout.flatten(u)) for c, u in ups.items()}
    agg = s.aggregator(0, list(ups))
    reps = {c: clients[c].handle(r) for c, r in agg.start().items()}
    reqs = agg.receive(reps)
    m = ad.ServerRequest.from_bytes(reqs["server-1"])
    cid, epk, ct = m.entries[0]
    bad = ad.ServerRequest(
        m.params_id,
        m.round_id,
        m.party,
        ((cid, epk, ct[:-1] + bytes([ct[-1] ^ 1])), *m.entries[1:]),
    )
    with pytest.raises(DeserializationError):
        s.servers(0)["server-1"].handle(bad.to_bytes())
    # a seed relabelled as another client's fails the AAD check
    swapped = ad.ServerRequest(
        m.params_id,
        m.round_id,
        m.party,
        tuple(
            (c2, e, ct2)
            for (c2, _, _), (_, e, ct2) in zip(
                m.entries, reversed(m.entries), strict=True
            )
        ),
    )
    with pytest.raises(DeserializationError):
        s.servers(0)["server-1"].handle(swapped.to_bytes())


def test_server_answers_once_and_rejects_other_rounds() -> None:
    s = _session(2)
    ups = _ups(2)
    clients = {c: s.client(c, 0, s.layout.flatten(u)) for c, u in ups.items()}
    agg = s.aggregator(0, list(ups))
    reqs = agg.receive({c: clients[c].handle(r) for c, r in agg.start().items()})
    srv = s.servers(0)["server-1"]
    srv.handle(reqs["server-1"])
    with pytest.raises(ProtocolError):
        srv.handle(reqs["server-1"])
    with pytest.raises(ProtocolError):
        s.servers(1)["server-1"].handle(reqs["server-1"])


def test_holder_rejects_missing_partial_and_foreign_result() -> None:
    s = _session(2)
    ups = _ups(2)
    clients = {c: s.client(c, 0, s.layout.flatten(u)) for c, u in ups.items()}
    agg = s.aggregator(0, list(ups))
    reqs = agg.receive({c: clients[c].handle(r) for c, r in agg.start().items()})
    agg.receive({sid: srv.handle(reqs[sid]) for sid, srv in s.servers(0).items()})
    res = ad.ResultMessage.from_bytes(agg.result())
    stripped = ad.ResultMessage(
        res.params_id, res.round_id, res.party, res.contributors, res.partial0, ()
    )
    with pytest.raises(ProtocolError):
        s.holder().recover(stripped.to_bytes())
    # a partial sum bound to another contributor list fails the AAD check
    relabeled = ad.ResultMessage(
        res.params_id, res.round_id, res.party, ("c0", "c2"), res.partial0, res.partials
    )
    with pytest.raises(DeserializationError):
        s.holder().recover(relabeled.to_bytes())
    with pytest.raises(ParameterMismatchError):
        _session(2).holder().recover(agg.result())


def test_servers_must_sum_the_same_clients() -> None:
    s = _session(3, n_servers=3)
    ups = _ups(3)
    clients = {c: s.client(c, 0, s.layout.flatten(u)) for c, u in ups.items()}
    agg = s.aggregator(0, list(ups))
    reqs = agg.receive({c: clients[c].handle(r) for c, r in agg.start().items()})
    m = ad.ServerRequest.from_bytes(reqs["server-2"])
    reqs["server-2"] = ad.ServerRequest(
        m.params_id, m.round_id, m.party, m.entries[:-1]
    ).to_bytes()
    servers = s.servers(0)
    with pytest.raises(ProtocolError):
        agg.receive({sid: servers[sid].handle(reqs[sid]) for sid in servers})


@pytest.mark.parametrize(
    "opts",
    [
        {"n_servers": 1},
        {"n_servers": 2.0},
        {"bound": -1.0},
        {"clip": "yes"},
        {"min_contributions": 0},
        {"min_contributions": True},
        {"min_contributions": 2.0},
        {"min_contributions": 1 << 32},
    ],
)
def test_bad_options_rejected(opts: dict[str, object]) -> None:
    with pytest.raises(privagg.ConfigurationError):
        AdditiveBackend(**opts)  # type: ignore[arg-type]


class _ConstNoise:
    def sample_encoded(self, n: int, *, scale: float, rng: object) -> np.ndarray:
        return np.full(n, -2, dtype=np.int64)

    def sample_real(self, n: int, *, rng: object) -> np.ndarray:
        return np.full(n, -2.0)

    def headroom(self, n_clients: int) -> float:
        return 1.0


def test_noise_and_clipping() -> None:
    ups = {
        "a": {"w": np.array([0.5, 3.0, -7.0])},
        "b": {"w": np.array([0.25, 0.0, 0.0])},
    }
    s = AdditiveBackend(clip=True).setup(
        Layout.from_arrays(ups["a"]), max_clients=2, noise=_ConstNoise()
    )
    res = privagg.run_round(s, ups)
    assert np.allclose(
        res.vector, np.array([0.75, 1.0, -1.0]) - 4 / 65536, atol=2 / 65536
    )
    with pytest.raises(privagg.EncodingOverflowError):
        privagg.run_round(_session(2, 3), ups)


def test_min_contributions_defaults_to_two_and_is_bound_into_params() -> None:
    layout = Layout.from_arrays({"w": np.zeros(3)})
    s = AdditiveBackend().setup(layout, max_clients=4)
    assert s.min_contributions == 2
    s1 = AdditiveBackend(min_contributions=1).setup(layout, max_clients=4)
    assert s1.min_contributions == 1
    # same keys (same dealer randomness), different policy: different params_id, so a
    # server and a holder configured with different policies do not interoperate
    from privagg.hazmat import DeterministicRng

    ids = {
        AdditiveBackend(min_contributions=m)
        .setup(layout, max_clients=4, rng=DeterministicRng(1))
        .params_id
        for m in (1, 2, 2)
    }
    assert len(ids) == 2
    # setup of one client cannot release anything under the default: refused up front
    with pytest.raises(privagg.ConfigurationError, match="min_contributions"):
        AdditiveBackend().setup(layout, max_clients=1)
    assert "min_contributions=3" in repr(AdditiveBackend(min_contributions=3))


def test_round_with_too_few_answers_is_refused() -> None:
    """The honest coordinator already stops when fewer than min_contributions answer."""
    with pytest.raises(InsufficientParticipantsError, match="min_contributions=2"):
        privagg.run_round(_session(2), _ups(2), dropouts={0: {"c1"}})
    res = privagg.run_round(
        _session(2, min_contributions=1), _ups(2), dropouts={0: {"c1"}}
    )
    assert res.contributors == ("c0",)
