"""Security review (issue #11), finding 1: selective delivery + selective drop.

A malicious server delivers to a victim ``v`` only the share ciphertexts of a set ``A`` of
``t`` neighbours (so ``v`` masks with ``A`` only), then leaves ``A`` out of the survivor
set ``U3``. Honest holders used to reveal ``A``'s mask keys (dropped) and ``v``'s self-mask
seed (survivor): the server unmasked ``x_v`` alone, with no colluding client. Clients now
sign the graph neighbours they did not mask with (their *partner attestation*), and a
holder reveals a survivor's self-mask share only if none of that survivor's unmasked-with
neighbours survived.

The adversary below is a real malicious server: it drives the honest client state
machines with requests it crafts, then computes everything it can from the replies
(:func:`_server_knowledge`). ``test_*_defence_disabled`` runs the same attack with the
holders' check switched off and shows it then recovers ``x_v`` exactly, so the test
detects the leak it guards against.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privagg.backends import _shamir
from privagg.backends import secagg as sa
from privagg.backends._primitives import ecdh, x25519_key, x25519_public
from privagg.backends._ringcode import add_masks, centred
from privagg.backends.secagg import _context as sa_ctx
from privagg.backends.secagg import messages as sa_msg
from privagg.errors import InsufficientParticipantsError, PrivaggError, ProtocolError
from privagg.hazmat import DeterministicRng
from privagg.layout import Layout

SIZE, R = 4, 11


@dataclass
class Outcome:
    """What the malicious server ended with."""

    aborted: str | None = None  # why the honest clients stopped the round, if they did
    refusals: dict[str, str] = field(
        default_factory=dict
    )  # honest holders that refused
    victim_estimate: np.ndarray | None = None  # x_v, if the server isolated it
    closure: set[str] | None = None  # smallest unmaskable set containing v, if any
    honest: set[str] = field(default_factory=set)
    victim: str = ""
    x_victim: np.ndarray | None = None
    u3: tuple[str, ...] = ()


def _attack(
    n: int,
    *,
    seed: int = 0,
    full_graph: bool = False,
    corrupt: Sequence[str] = (),
    choose_delivered: Callable[[list[str], int], list[str]] | None = None,
    choose_dropped: Callable[[list[str], list[str], int], list[str]] | None = None,
) -> Outcome:
    """Run one round against a malicious server (see the module docstring).

    ``choose_delivered(senders, t)`` picks whose share ciphertexts the victim gets (default:
    the first ``t``); ``choose_dropped(ids, delivered, max_drop)`` picks the clients declared
    dropped (default: the delivered set). Corrupt clients follow the protocol but hand the
    server everything they hold.
    """
    layout = Layout.from_arrays({"w": np.zeros(SIZE)})
    sess = sa.SecAggBackend(bound=1.0, full_graph=full_graph).setup(
        layout, max_clients=n, secret_rng=DeterministicRng(10_000 + seed)
    )
    cfg = sess._cfg
    P = cfg.params_id
    ids = sorted(f"c{i:03d}" for i in range(n))
    rng = np.random.default_rng(seed)
    x = {c: rng.uniform(-1, 1, SIZE) for c in ids}
    cl = {
        c: sess.client(c, R, x[c], rng=DeterministicRng(seed * 1000 + i))
        for i, c in enumerate(ids)
    }
    bad = set(corrupt)
    victim = next(c for c in ids if c not in bad)
    out = Outcome(honest=set(ids) - bad, victim=victim, x_victim=x[victim].copy())
    g = cfg.graph(n)
    t = g.threshold
    q = cfg.quorum(n)

    # Stages 0 and 1 run honestly (the server's choices start at stage 2).
    agg = sess.aggregator(R, ids)
    reqs = agg.start()
    adv = {c: cl[c].handle(r) for c, r in reqs.items()}
    keys = {c: sa.AdvertiseMessage.from_bytes(a) for c, a in adv.items()}
    reqs = agg.receive(adv)
    shares = {c: sa.SharesMessage.from_bytes(cl[c].handle(r)) for c, r in reqs.items()}
    # Each client's own round secrets (a corrupt client hands them to the server).
    own = {c: cl[c]._state.adv for c in shares}  # type: ignore[union-attr]

    # Stage 2: selective delivery to the victim.
    routed: dict[str, list[tuple[str, bytes]]] = {c: [] for c in ids}
    for s, m in shares.items():
        for r, ct in m.ciphertexts:
            routed[r].append((s, ct))
    senders = sorted(s for s, _ in routed[victim])
    pick = choose_delivered or (lambda ss, tt: ss[:tt])
    delivered = set(pick(senders, t))
    routed[victim] = [(s, ct) for s, ct in routed[victim] if s in delivered]
    masked: dict[str, sa.MaskedInput] = {}
    for c in ids:
        try:
            masked[c] = sa.MaskedInput.from_bytes(
                cl[c].handle(
                    sa.MaskRequest(P, R, c, tuple(sorted(routed[c]))).to_bytes()
                )
            )
        except InsufficientParticipantsError as exc:
            if c == victim:
                out.aborted = f"victim refused to mask: {exc}"
                return out
            raise
    # Everything corrupt clients hold leaks to the server (before unmasking clears it).
    leaked: dict[tuple[str, int], dict[int, int]] = {}
    index = {c: i + 1 for i, c in enumerate(ids)}

    def add_share(owner: str, which: int, holder: str, value: int) -> None:
        leaked.setdefault((owner, which), {})[index[holder]] = value

    after_mask = {c: cl[c]._state for c in masked}
    for c in bad:
        for owner, held in after_mask[c].held.items():  # type: ignore[union-attr]
            add_share(owner, sa_msg._S, c, held.s)
            add_share(owner, sa_msg._B, c, held.b)

    # Selective drop: U3 leaves out the chosen clients.
    drop_pick = choose_dropped or (lambda ii, dd, mx: sorted(dd))
    dropped = set(drop_pick(ids, sorted(delivered), n - q))
    u3 = tuple(c for c in ids if c in masked and c not in dropped)
    out.u3 = u3
    if len(u3) < q:
        out.aborted = f"{len(u3)} survivors < quorum {q}"
        return out
    sigs: dict[str, bytes] = {}
    for c in u3:
        try:
            sigs[c] = sa.SignatureMessage.from_bytes(
                cl[c].handle(sa.ConsistencyRequest(P, R, c, u3).to_bytes())
            ).signature
        except ProtocolError as exc:
            out.refusals[c] = f"consistency: {exc}"
    if len(sigs) < q:
        out.aborted = f"{len(sigs)} survivor-set signatures < quorum {q}"
        return out
    attest = {c: (masked[c].missing, masked[c].signature) for c in u3}
    for c in sorted(sigs):
        att = tuple((o, *attest[o]) for o in u3)  # the server hands over every one
        try:
            rep = sa.UnmaskShares.from_bytes(
                cl[c].handle(
                    sa.UnmaskRequest(
                        P, R, c, u3, tuple(sorted(sigs.items())), att
                    ).to_bytes()
                )
            )
        except ProtocolError as exc:
            out.refusals[c] = f"unmask: {exc}"
            continue
        for owner, which, sh in rep.shares:
            add_share(owner, which, c, _shamir.decode_share(sh[: _shamir.SHARE_SIZE]))

    # What the server can reconstruct.
    b_known: dict[str, bytes] = {}
    s_known: dict[str, bytes] = {}
    for (owner, which), got in leaked.items():
        if len(got) < t:
            continue
        secret = _shamir.reconstruct(got, t)
        if which == sa_msg._B:
            b_known[owner] = secret
        elif x25519_public(secret) == keys[owner].s_pk:
            s_known[owner] = secret
    for c in bad:  # a corrupt client's own secrets
        b_known[c] = own[c].b.reveal()
        s_known[c] = own[c].s_sk.reveal()
    partners = {c: set(after_mask[c].masked_with) for c in masked}  # type: ignore[union-attr]
    out.closure = _closure(victim, partners, masked, b_known, s_known)
    # The direct attack: unmask the victim's upload alone.
    if victim in b_known and all(
        victim in s_known or a in s_known for a in partners[victim]
    ):
        seeds = [(b_known[victim], -1)]
        for a in sorted(partners[victim]):
            sk, pk = (
                (s_known[a], keys[victim].s_pk)
                if a in s_known
                else (s_known[victim], keys[a].s_pk)
            )
            seed = sa_ctx._pair_seed(cfg, R, ecdh(x25519_key(sk), pk), victim, a)
            seeds.append((seed, -sa_ctx._pair_sign(victim, a)))
        acc = masked[victim].masked.copy()
        add_masks(acc, seeds)
        out.victim_estimate = cfg.encoder.decode(centred(acc))
    return out


def _closure(
    v: str,
    partners: dict[str, set[str]],
    masked: dict[str, sa.MaskedInput],
    b_known: dict[str, bytes],
    s_known: dict[str, bytes],
) -> set[str] | None:
    """The smallest set T containing ``v`` whose masked uploads the server can sum and
    unmask, or None if no such set exists. A pairwise mask between u and w is removable
    alone iff the server knows s_u or s_w; otherwise it cancels only when u and w both
    masked with each other and are both in T."""
    todo, seen = [v], {v}
    while todo:
        u = todo.pop()
        if u not in masked or u not in b_known:
            return None
        for w in partners.get(u, ()):
            if u in s_known or w in s_known:
                continue
            if w not in masked or u not in partners.get(w, set()):
                return None  # this mask can never cancel
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def _assert_victim_hidden(o: Outcome) -> None:
    """Either the round stopped, or x_v is learnt only inside a sum with another honest
    client's input."""
    if o.aborted is not None:
        return
    if o.victim_estimate is not None:
        assert o.x_victim is not None
        assert not np.allclose(o.victim_estimate, o.x_victim, atol=1e-3), (
            "the server recovered the victim's update alone"
        )
    if o.closure is not None:
        others = (o.closure & o.honest) - {o.victim}
        assert others, f"the victim is unmasked with corrupt clients only: {o.closure}"


# -- the reviewer's reproductions --------------------------------------------------------------
@pytest.mark.parametrize("n", [20, 50, 100])
def test_selective_delivery_then_drop_is_refused_sparse(n: int) -> None:
    o = _attack(n, seed=n)
    assert o.victim_estimate is None and o.closure is None
    # The victim's honest holders that survived refuse to reveal its self-mask share.
    assert any("selective delivery" in r for r in o.refusals.values())
    _assert_victim_hidden(o)


def _colluder_strategy(
    corrupt: Sequence[str],
) -> tuple[
    Callable[[list[str], int], list[str]],
    Callable[[list[str], list[str], int], list[str]],
]:
    """Deliver the colluders' ciphertexts plus just enough honest ones to reach t; drop
    only the honest part (the colluders' keys are known anyway): t - C <= n - q."""
    bad = set(corrupt)

    def deliver(senders: list[str], t: int) -> list[str]:
        mine = [s for s in senders if s in bad]
        return mine + [s for s in senders if s not in bad][: max(0, t - len(mine))]

    def drop(ids: list[str], delivered: list[str], max_drop: int) -> list[str]:
        return [d for d in delivered if d not in bad]

    return deliver, drop


def test_selective_delivery_then_drop_is_refused_full_graph_with_colluders() -> None:
    n = 50
    corrupt = [f"c{i:03d}" for i in range(n - 5, n)]  # 5 colluders (gamma = 0.1)
    deliver, drop = _colluder_strategy(corrupt)
    o = _attack(
        n,
        seed=3,
        full_graph=True,
        corrupt=corrupt,
        choose_delivered=deliver,
        choose_dropped=drop,
    )
    assert o.victim_estimate is None and o.closure is None
    _assert_victim_hidden(o)


@pytest.mark.parametrize(
    ("n", "full", "corrupt"), [(20, False, 0), (50, True, 5)], ids=["sparse", "full"]
)
def test_selective_delivery_then_drop_succeeds_with_the_defence_disabled(
    n: int, full: bool, corrupt: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack is real: without the holders' attestation check (the code before the
    fix) the server recovers the victim's update exactly."""
    monkeypatch.setattr(sa.SecAggClient, "_check_attestations", lambda *a: None)
    bad = [f"c{i:03d}" for i in range(n - corrupt, n)]
    deliver, drop = _colluder_strategy(bad)
    o = _attack(
        n,
        seed=n,
        full_graph=full,
        corrupt=bad,
        choose_delivered=deliver,
        choose_dropped=drop,
    )
    assert o.aborted is None
    assert o.victim_estimate is not None and o.x_victim is not None
    np.testing.assert_allclose(o.victim_estimate, o.x_victim, atol=1e-4)


def test_honest_round_passes_the_attestation_checks() -> None:
    """No false alarms: an honest round with dropouts at every stage still sums exactly."""
    import privagg

    n = 30
    layout = Layout.from_arrays({"w": np.zeros(SIZE)})
    sess = sa.SecAggBackend(bound=1.0).setup(layout, max_clients=n)
    rng = np.random.default_rng(5)
    ups = {f"c{i:02d}": {"w": rng.uniform(-1, 1, SIZE)} for i in range(n)}
    drops = {1: {"c03"}, 2: {"c07", "c11"}, 3: {"c19"}}
    res = privagg.run_round(sess, ups, dropouts=drops)
    want = sum(ups[c]["w"] for c in res.contributors)
    np.testing.assert_allclose(res.aggregate["w"], want, atol=1e-3)
    assert {"c07", "c11"} & set(res.dropped)


def test_attestation_is_bound_to_the_round_view() -> None:
    """A partner attestation signed for one round or view does not verify for another."""
    layout = Layout.from_arrays({"w": np.zeros(SIZE)})
    cfg = sa.SecAggBackend(bound=1.0).setup(layout, max_clients=4)._cfg
    view = bytes(64)
    m = sa_ctx._partner_message(cfg, R, view, "c0", ("c1",))
    assert m != sa_ctx._partner_message(cfg, R + 1, view, "c0", ("c1",))
    assert m != sa_ctx._partner_message(cfg, R, bytes(63) + b"\x01", "c0", ("c1",))
    assert m != sa_ctx._partner_message(cfg, R, view, "c0", ())
    assert m != sa_ctx._partner_message(cfg, R, view, "c1", ("c1",))


def test_full_delivery_then_dropping_the_same_set_reveals_only_sums() -> None:
    """Dropping clients is the server's right; if the victim masked with all its
    neighbours, what the server can unmask still contains other honest inputs."""
    o = _attack(
        20,
        seed=7,
        choose_delivered=lambda ss, t: ss,
        choose_dropped=lambda ids, d, mx: d[: min(3, mx)],
    )
    assert o.aborted is None and not o.refusals
    _assert_victim_hidden(o)


@pytest.mark.parametrize("mutation", ["drop", "forge", "alter"])
def test_each_attestation_forgery_is_refused(mutation: str) -> None:
    n = 20
    layout = Layout.from_arrays({"w": np.zeros(SIZE)})
    sess = sa.SecAggBackend(bound=1.0).setup(layout, max_clients=n)
    P = sess._cfg.params_id
    ids = sorted(f"c{i:03d}" for i in range(n))
    cl = {c: sess.client(c, R, np.zeros(SIZE)) for c in ids}
    agg = sess.aggregator(R, ids)
    reqs = agg.start()
    for _ in range(4):  # advertise, shares, masked, signatures -> unmask requests
        reqs = agg.receive({c: cl[c].handle(r) for c, r in reqs.items()})
    some = sorted(reqs)[0]
    honest = sa.UnmaskRequest.from_bytes(reqs[some])
    (owner, missing, sig), rest = honest.attestations[0], honest.attestations[1:]
    if mutation == "drop":
        att = rest
    elif mutation == "forge":
        att = ((owner, missing, bytes(64)), *rest)
    else:
        other = next(c for c in ids if c not in missing and c != owner)
        att = ((owner, tuple(sorted((*missing, other))), sig), *rest)
    forged = sa.UnmaskRequest(P, R, some, honest.survivors, honest.signatures, att)
    with pytest.raises(ProtocolError):
        cl[some].handle(forged.to_bytes())
    # The honest request still works (the refusal revealed nothing and changed no state
    # that a retry of the genuine request would trip on).
    rep = sa.UnmaskShares.from_bytes(cl[some].handle(reqs[some]))
    assert rep.shares


# -- the property: every delivered subset S, every dropped set D ------------------------------
@settings(max_examples=12)
@given(
    n=st.integers(10, 200),
    seed=st.integers(0, 2**16),
    full=st.booleans(),
    frac_corrupt=st.floats(0.0, 1.0),
    data=st.data(),
)
def test_property_selective_delivery_and_drop_never_isolate_the_victim(
    n: int, seed: int, full: bool, frac_corrupt: float, data: st.DataObject
) -> None:
    """For random n (10-200), corruption within the session's bound (gamma = 0.1, placed
    at random), and any server strategy "deliver to the victim a subset S of its
    neighbours' ciphertexts, then declare a subset D dropped": either the round aborts,
    or the server learns the victim's input only inside a sum with another honest
    client's."""
    if full and n > 60:
        n = 10 + n % 51  # the complete graph is O(n^2): keep it under a second
    rs = np.random.default_rng(seed)
    max_c = min(math.ceil(0.1 * n - 1e-9), n - 1)
    n_c = round(frac_corrupt * max_c)
    corrupt = [f"c{i:03d}" for i in sorted(rs.choice(range(1, n), n_c, replace=False))]

    def deliver(senders: list[str], t: int) -> list[str]:
        k = data.draw(st.integers(0, len(senders)), label="|S|")
        return sorted(rs.choice(senders, k, replace=False)) if k else []

    def drop(ids: list[str], delivered: list[str], max_drop: int) -> list[str]:
        # Mostly the server's best move (drop S, plus random others), sometimes any D.
        base = list(delivered) if data.draw(st.booleans(), label="drop S") else []
        extra = data.draw(st.integers(0, max(0, max_drop)), label="extra drops")
        pool = [c for c in ids if c not in base]
        more = (
            list(rs.choice(pool, min(extra, len(pool)), replace=False)) if pool else []
        )
        return sorted(set(base) | set(more))

    o = _attack(
        n,
        seed=seed,
        full_graph=full,
        corrupt=corrupt,
        choose_delivered=deliver,
        choose_dropped=drop,
    )
    _assert_victim_hidden(o)
    if full and o.aborted is None and o.closure is not None:
        # Complete graph: nothing short of every honest survivor.
        assert (set(o.u3) & o.honest) <= o.closure


def test_attack_errors_are_typed() -> None:
    """Every refusal above is a PrivaggError (the Flower runtime reports them as such)."""
    o = _attack(20, seed=1)
    assert o.refusals
    assert issubclass(ProtocolError, PrivaggError)
