"""Regression tests for the security review's SecAgg+ findings (each reproduces an attack
from ``/tmp/review`` and checks that it now fails), plus the additive backend's
availability fixes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

import privagg
from privagg.backends import additive as ad
from privagg.backends import secagg as sa
from privagg.backends._masking import ids_digest
from privagg.backends._primitives import ed25519_sign
from privagg.backends._ringcode import encode_to_ring
from privagg.backends.additive import _context as ad_ctx
from privagg.backends.secagg import _context as sa_ctx
from privagg.encoding import FixedPointEncoder, from_ring
from privagg.errors import (
    DeserializationError,
    InsufficientParticipantsError,
    ProtocolError,
)
from privagg.hazmat import DeterministicRng
from privagg.layout import Layout

N, R, SIZE = 20, 7, 6
_LOW_ORDER = bytes.fromhex(
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"
)


def _setup(
    n: int = N, seed: int = 1
) -> tuple[
    sa.SecAggSession, list[str], dict[str, np.ndarray], dict[str, sa.SecAggClient]
]:
    layout = Layout.from_arrays({"w": np.zeros(SIZE)})
    sess = sa.SecAggBackend(bound=1.0).setup(
        layout, max_clients=n
    )  # active, sparse graph
    ids = sorted(f"c{i:02d}" for i in range(n))
    rng = np.random.default_rng(seed)
    updates = {c: rng.uniform(-1, 1, SIZE) for c in ids}
    clients = {
        c: sess.client(c, R, updates[c], rng=DeterministicRng(i))
        for i, c in enumerate(ids)
    }
    return sess, ids, updates, clients


def _advertise(
    sess: sa.SecAggSession,
    ids: list[str],
    clients: dict[str, sa.SecAggClient],
    view: tuple[str, ...] | None = None,
    who: Sequence[str] | None = None,
) -> dict[str, sa.AdvertiseMessage]:
    """Stage 0 for the clients ``who`` (default: all of ``view``), each shown ``view`` as U0."""
    cfg = sess._cfg
    view = view or tuple(ids)
    g = cfg.graph(len(view))
    return {
        c: sa.AdvertiseMessage.from_bytes(
            clients[c].handle(
                sa.SetupRequest(
                    cfg.params_id, R, c, view, g.degree, g.threshold
                ).to_bytes()
            )
        )
        for c in (who if who is not None else view)
    }


def _finish(
    agg: sa.SecAggAggregator, out: dict[str, bytes], clients: dict[str, sa.SecAggClient]
) -> None:
    while not agg.done:
        out = agg.receive({c: clients[c].handle(r) for c, r in out.items()})


# -- finding 1: unauthenticated U0 (reviewer's secagg_views.py) ---------------------------------
def test_forged_participant_view_is_refused() -> None:
    """The server shows t honest clients H a forged 4-party list U0' = H + {victim} (so a
    tiny n, t and quorum) and everyone else the real U0, hoping H reveal the victim's
    mask-key shares while the others reveal its self-mask shares. The keys are now signed
    over H(U0) and (n, k, t, q): the two views cannot be joined."""
    sess, ids, _, cl = _setup(seed=2)
    cfg = sess._cfg
    g = cfg.graph(N)
    v = ids[0]
    hs = ids[1 : 1 + g.threshold]
    view_s = tuple(sorted([*hs, v]))
    main = [c for c in ids if c not in hs]
    adv = _advertise(sess, ids, cl, tuple(main))
    adv.update(_advertise(sess, ids, cl, view_s, who=hs))  # H sign their keys over U0'
    assert all(sa.AdvertiseMessage.from_bytes(adv[h].to_bytes()) == adv[h] for h in hs)
    P = cfg.params_id
    # H are shown the victim's key set: signed over the real U0, so refused.
    for h in hs:
        with pytest.raises(ProtocolError):
            cl[h].handle(
                sa.ShareKeysRequest(P, R, h, tuple(adv[j] for j in view_s)).to_bytes()
            )
    # The victim is shown H's key sets too: those of its neighbours are verified against
    # its own H(U0), so it either refuses or shares with none of H.
    try:
        sh = cl[v].handle(
            sa.ShareKeysRequest(P, R, v, tuple(adv[j] for j in sorted(ids))).to_bytes()
        )
    except ProtocolError:
        pass
    else:
        assert not {r for r, _ in sa.SharesMessage.from_bytes(sh).ciphertexts} & set(hs)


def test_forged_view_leaves_no_share_of_the_victim_with_the_other_group() -> None:
    """If the server hides each view from the other, the victim shares only within its own
    view, and a victim ciphertext forwarded to the other view is refused."""
    sess, ids, _, cl = _setup(seed=2)
    cfg = sess._cfg
    g = cfg.graph(N)
    v, hs = ids[0], ids[1 : 1 + g.threshold]
    main = tuple(c for c in ids if c not in hs)
    fresh = dict(cl)
    adv = _advertise(sess, ids, fresh, main)
    P = cfg.params_id
    sh = sa.SharesMessage.from_bytes(
        fresh[v].handle(
            sa.ShareKeysRequest(P, R, v, tuple(adv[j] for j in main)).to_bytes()
        )
    )
    assert not {r for r, _ in sh.ciphertexts} & set(hs)
    # H in their forged view (without the victim's keys) never accept a share from it.
    adv_s = _advertise(sess, ids, fresh, tuple(hs))
    h = hs[0]
    fresh[h].handle(
        sa.ShareKeysRequest(P, R, h, tuple(adv_s[j] for j in hs)).to_bytes()
    )
    with pytest.raises(ProtocolError):
        fresh[h].handle(
            sa.MaskRequest(P, R, h, ((v, sh.ciphertexts[0][1]),)).to_bytes()
        )


def test_survivor_signature_and_share_key_bind_u0() -> None:
    cfg = _setup(n=5)[0]._cfg
    a, b = sa.u0_digest(["c0", "c1"]), sa.u0_digest(["c0", "c1", "c2"])
    assert sa_ctx._survivor_message(
        cfg, 0, ["c0"], a + bytes(32)
    ) != sa_ctx._survivor_message(cfg, 0, ["c0"], a + b)
    assert sa_ctx._survivor_message(cfg, 0, ["c0"], a) != sa_ctx._survivor_message(
        cfg, 0, ["c0"], b
    )
    assert sa_ctx._share_key(cfg, 0, bytes(32), "c0", "c1", a) != sa_ctx._share_key(
        cfg, 0, bytes(32), "c0", "c1", b
    )


# -- finding 2: own share + server-chosen neighbours (reviewer's secagg_isolate.py) ------------
def test_victim_isolated_among_t_minus_1_corrupt_neighbours_is_refused() -> None:
    """Stage 1: the server relays to the victim only the keys of t - 1 corrupt neighbours
    (the victim's own share made t). Now the victim needs min_live >= t *other* holders."""
    sess, ids, _, cl = _setup()
    cfg = sess._cfg
    g = cfg.graph(N)
    adv = _advertise(sess, ids, cl)
    nbrs = cfg.neighbours(R, ids, adv)
    victim = ids[0]
    corrupt = sorted(nbrs[victim])[: g.threshold - 1]
    req = sa.ShareKeysRequest(
        cfg.params_id, R, victim, tuple(adv[j] for j in sorted([*corrupt, victim]))
    )
    with pytest.raises(InsufficientParticipantsError):
        cl[victim].handle(req.to_bytes())


def test_victim_masking_with_t_minus_1_corrupt_neighbours_is_refused() -> None:
    """Stage 2: the server forwards to the victim only the shares of t - 1 corrupt
    neighbours, so it would mask with colluders only."""
    sess, ids, _, cl = _setup()
    cfg = sess._cfg
    g = cfg.graph(N)
    agg = sess.aggregator(R, ids)
    out = agg.start()
    out = agg.receive(
        {c: cl[c].handle(r) for c, r in out.items()}
    )  # SHARE_KEYS requests
    shares = {c: sa.SharesMessage.from_bytes(cl[c].handle(r)) for c, r in out.items()}
    victim = ids[0]
    from_nbrs = sorted(
        (s, ct) for s, m in shares.items() for r, ct in m.ciphertexts if r == victim
    )
    assert len(from_nbrs) >= g.threshold
    req = sa.MaskRequest(cfg.params_id, R, victim, tuple(from_nbrs[: g.threshold - 1]))
    with pytest.raises(InsufficientParticipantsError):
        cl[victim].handle(req.to_bytes())


def test_owner_never_holds_or_reveals_a_share_of_its_own_secrets() -> None:
    sess, ids, _, cl = _setup()
    agg = sess.aggregator(R, ids)
    out = agg.start()
    seen: list[sa.UnmaskShares] = []
    while not agg.done:
        replies = {c: cl[c].handle(r) for c, r in out.items()}
        for c, rep in replies.items():
            if (
                privagg.envelope.open_envelope(rep)[0].kind
                == sa.SecAggKind.UNMASK_SHARES
            ):
                seen.append(sa.UnmaskShares.from_bytes(rep))
            if privagg.envelope.open_envelope(rep)[0].kind == sa.SecAggKind.SHARES:
                assert c not in {
                    r for r, _ in sa.SharesMessage.from_bytes(rep).ciphertexts
                }
        out = agg.receive(replies)
    assert seen and all(m.party not in {o for o, _, _ in m.shares} for m in seen)


def test_graph_seed_hashes_the_advertised_keys() -> None:
    """The graph is no longer a function of (params, round, U0) that the server can
    precompute and grind offline: it hashes every advertised key set."""
    sess, ids, _, cl = _setup()
    cfg = sess._cfg
    adv = _advertise(sess, ids, cl)
    nb = cfg.neighbours(R, ids, adv)
    other = dict(adv)
    k = other[ids[3]]
    other[ids[3]] = sa.AdvertiseMessage(
        k.params_id, k.round_id, k.party, k.s_pk, k.c_pk, k.signature, k.b_commit
    )
    assert cfg.neighbours(R, ids, other) != nb


def test_threshold_holds_against_t_shares_from_others() -> None:
    """n * P[Hyp(n - 1, C, k) >= t] <= 2**-sigma with the owner's share excluded."""
    import math

    from privagg.backends._graph import (
        _hyp_tail,
        choose_parameters,
        min_live_neighbours,
    )

    for n in (10, 20, 50, 100, 200):
        g = choose_parameters(n, dropout_rate=1 / 3, corruption_rate=0.1)
        c = math.ceil(0.1 * n - 1e-9)
        if not g.full:
            assert n * _hyp_tail(n - 1, c, g.degree, g.threshold) <= 2.0**-40
        else:
            assert g.threshold > c
        assert (
            min_live_neighbours(n, g.degree, g.threshold, dropout_rate=1 / 3)
            >= g.threshold
        )


# -- finding 3: biased fast stochastic rounding (reviewer's ringbias.py) -----------------------
def test_ring_rounding_is_unbiased_for_large_values() -> None:
    enc = FixedPointEncoder(1024.0, 40)
    x = 512 + 2.0**-42  # y = 2**49 + 0.25 units
    n = 200_000
    v = encode_to_ring(
        enc,
        np.full(n, x),
        1.0,
        value_bound=1024.0,
        clip=False,
        rng=DeterministicRng(5),
        dtype=np.uint64,
    )
    frac = from_ring(v, 64) - 2**49
    assert set(np.unique(frac)) <= {0, 1}
    assert abs(frac.mean() - 0.25) < 0.005  # 7 sigma; floor(y + u) gave 0.0 or 0.5 here


# -- finding 4: availability ----------------------------------------------------------------------
def test_low_order_x25519_key_drops_only_that_client() -> None:
    sess, ids, updates, cl = _setup(n=10)
    cfg = sess._cfg
    agg = sess.aggregator(R, ids)
    out = agg.start()
    replies = {c: cl[c].handle(r) for c, r in out.items()}
    bad = "c03"
    m = sa.AdvertiseMessage.from_bytes(replies[bad])
    msg = sa_ctx._key_message(
        cfg,
        R,
        bad,
        _LOW_ORDER,
        m.s_pk,
        sa.u0_digest(ids),
        cfg.round_params(len(ids)),
        m.b_commit,
    )
    sig = ed25519_sign(
        sess._identity(bad).reveal(), msg
    )  # the malicious client signs it
    replies[bad] = sa.AdvertiseMessage(
        cfg.params_id, R, bad, _LOW_ORDER, m.s_pk, sig, m.b_commit
    ).to_bytes()
    out = agg.receive(replies)
    assert bad in agg.rejected and bad not in out
    _finish(agg, out, cl)
    res = sess.holder().recover(agg.result())
    assert bad not in res.contributors and len(res.contributors) == 9
    ref = sum(updates[c] for c in res.contributors)
    assert np.max(np.abs(res.vector - ref)) <= sa.SecAggBackend().tolerance(
        n_clients=10, max_abs=1.0
    )


def test_corrupted_share_ciphertext_excludes_its_sender_only() -> None:
    sess, ids, updates, cl = _setup(n=10)
    agg = sess.aggregator(R, ids)
    out = agg.start()
    out = agg.receive({c: cl[c].handle(r) for c, r in out.items()})
    replies = {c: cl[c].handle(r) for c, r in out.items()}
    bad = "c05"
    m = sa.SharesMessage.from_bytes(replies[bad])
    cts = tuple(
        (r, ct[:-1] + bytes([ct[-1] ^ 1]) if i == 0 else ct)
        for i, (r, ct) in enumerate(m.ciphertexts)
    )
    replies[bad] = sa.SharesMessage(m.params_id, m.round_id, bad, cts).to_bytes()
    out = agg.receive(replies)
    _finish(agg, out, cl)
    res = sess.holder().recover(agg.result())
    assert bad in agg.rejected and set(res.contributors) == set(ids) - {bad}
    ref = sum(updates[c] for c in res.contributors)
    assert np.max(np.abs(res.vector - ref)) <= sa.SecAggBackend().tolerance(
        n_clients=10, max_abs=1.0
    )


def _additive(
    n: int = 3, servers: int = 2
) -> tuple[ad.AdditiveSession, dict[str, np.ndarray]]:
    layout = Layout.from_arrays({"w": np.zeros(SIZE)})
    s = ad.AdditiveBackend(n_servers=servers).setup(layout, max_clients=n)
    rng = np.random.default_rng(0)
    return s, {f"c{i}": rng.uniform(-1, 1, SIZE) for i in range(n)}


def test_additive_bad_ephemeral_key_skips_that_client_on_every_server() -> None:
    s, ups = _additive(4, 3)
    clients = {c: s.client(c, 0, u) for c, u in ups.items()}
    agg = s.aggregator(0, list(ups))
    reps = {c: clients[c].handle(r) for c, r in agg.start().items()}
    m = ad.ClientShares.from_bytes(reps["c1"])
    reps["c1"] = ad.ClientShares(
        m.params_id, m.round_id, "c1", _LOW_ORDER, m.share0, m.seeds
    ).to_bytes()
    reqs = agg.receive(reps)
    assert agg.rejected == {"c1"}
    for req in reqs.values():  # every server gets the same accepted list
        assert [e[0] for e in ad.ServerRequest.from_bytes(req).entries] == [
            "c0",
            "c2",
            "c3",
        ]
    servers = s.servers(0)
    agg.receive({sid: servers[sid].handle(reqs[sid]) for sid in servers})
    res = s.holder().recover(agg.result())
    assert res.contributors == ("c0", "c2", "c3")
    ref = sum(ups[c] for c in res.contributors)
    assert np.max(np.abs(res.vector - ref)) <= 4 * 2.0**-14


def test_additive_odd_length_partial_is_a_deserialization_error() -> None:
    """Finding 5: a partial sum whose plaintext length is not a multiple of the word size
    raised numpy's ValueError."""
    s, ups = _additive(2, 2)
    cfg = s._cfg
    res = _run_additive(s, ups)
    msg = ad.ResultMessage.from_bytes(res)
    sid, _, _ = msg.partials[0]
    from privagg.backends._primitives import (
        aead_encrypt,
        ecdh,
        hkdf,
        new_x25519,
        x25519_key,
        x25519_public,
    )

    eph = x25519_key(new_x25519(DeterministicRng(9)))
    epk = x25519_public(eph.private_bytes_raw())
    ctx = ad_ctx._ctx(cfg, msg.round_id, sid) + ids_digest(msg.contributors) + epk
    key = hkdf(
        ecdh(eph, cfg.holder_pk),
        salt=cfg.params_id,
        info=ad_ctx._DOMAIN + b"partial-key" + ctx,
    )
    ct = aead_encrypt(
        key,
        b"\x01" * (cfg.size * np.dtype(cfg.dtype).itemsize - 1),
        ad_ctx._DOMAIN + b"partial" + ctx,
    )
    bad = ad.ResultMessage(
        msg.params_id,
        msg.round_id,
        msg.party,
        msg.contributors,
        msg.partial0,
        ((sid, epk, ct), *msg.partials[1:]),
    )
    with pytest.raises(DeserializationError):
        s.holder().recover(bad.to_bytes())


def _run_additive(s: ad.AdditiveSession, ups: dict[str, np.ndarray]) -> bytes:
    clients = {c: s.client(c, 0, u) for c, u in ups.items()}
    agg = s.aggregator(0, list(ups))
    reqs = agg.receive({c: clients[c].handle(r) for c, r in agg.start().items()})
    servers = s.servers(0)
    agg.receive({sid: servers[sid].handle(reqs[sid]) for sid in servers})
    return agg.result()


def test_bad_key_signature_drops_only_that_client() -> None:
    sess, ids, updates, cl = _setup(n=10)
    agg = sess.aggregator(R, ids)
    out = agg.start()
    replies = {c: cl[c].handle(r) for c, r in out.items()}
    m = sa.AdvertiseMessage.from_bytes(replies["c07"])
    replies["c07"] = sa.AdvertiseMessage(
        m.params_id, R, "c07", m.c_pk, m.s_pk, bytes(64), m.b_commit
    ).to_bytes()
    out = agg.receive(replies)
    assert "c07" in agg.rejected and "c07" not in out
    _finish(agg, out, cl)
    res = sess.holder().recover(agg.result())
    assert set(res.contributors) == set(ids) - {"c07"}
    ref = sum(updates[c] for c in res.contributors)
    assert np.max(np.abs(res.vector - ref)) <= sa.SecAggBackend().tolerance(
        n_clients=10, max_abs=1.0
    )
