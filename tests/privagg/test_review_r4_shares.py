"""Outside security review r4 of e58d1dc / 244f84d (issue #14/#13): SecAgg+ corrects
wrong unmask shares (``_shamir.decode``, Berlekamp-Welch) and names the liars.

Threat model: malicious survivors (alone, up to the decoding bound, one more, a
coalition of t - 1), a malicious server that crafts and replays bytes. Each test is
one attack. A refused attack is a passing test pinned to its outcome; an attack that
works is a strict xfail asserting the secure behaviour ("open (review r4, SEVERITY)").

Findings in short: within the documented bound the names are NOT always exact for a
dropped client's mask key (a polynomial whose secret equals the key up to X25519
clamping passes the check: one liar among 4 holders frames the honest one, with one
guessed bit); beyond the bound, colluders on one polynomial have honest holders named
as "wrong self-mask share" while the docs say nobody is reported; one liar costs a
Berlekamp-Welch decoding for every secret it holds a share of (n decodings per round,
each O(m^3)); ``decode`` itself does not validate its points (an untyped ValueError).
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import privagg
from privagg import PrivaggError, ProtocolError
from privagg.backends import _shamir
from privagg.backends._primitives import clamp_x25519, x25519_key, x25519_public
from privagg.backends.secagg import messages as sm
from privagg.backends.secagg.aggregator import SecAggAggregator, mask_key_check
from privagg.hazmat import DeterministicRng
from tests.privagg.test_review_aborted_round import _Round as _Round5
from tests.privagg.test_review_secagg_drop import (
    MASKED,
    _forge_shares,
    _last,
    _Round,
)

P = _shamir.PRIME
_LOGGER = "privagg.backends.secagg.aggregator"


# -- helpers -------------------------------------------------------------------------------
def _lagrange_at(xs: list[int], ys: list[int], x: int, prime: int = P) -> int:
    """The polynomial of degree < len(xs) through the points, evaluated at ``x``
    (independent of the code under review)."""
    acc = 0
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                num = num * (x - xj) % prime
                den = den * (xi - xj) % prime
        acc = (acc + ys[i] * num * pow(den, -1, prime)) % prime
    return acc


def _bump(roots: Sequence[int], x: int, prime: int = P) -> int:
    """g(x) for the polynomial g of degree len(roots) with g(0) = 1 vanishing on
    ``roots``."""
    v = 1
    for r in roots:
        v = v * (x - r) % prime * pow(-r, -1, prime) % prime
    return v


def _moved(
    f: Mapping[int, int], liars: Sequence[int], roots: Sequence[int], delta: int
) -> dict[int, int]:
    """The shares with each liar moved onto f + delta*g (g as in :func:`_bump`): the
    liars only need their own shares and the public x's."""
    pts = dict(f)
    for x in liars:
        pts[x] = (f[x] + delta * _bump(roots, x)) % P
    return pts


def _clamp_delta(secret: int) -> int:
    """A field offset that changes only bit 7 of the last byte of the 32-byte secret,
    a bit X25519 clamping clears: the key with it changed has the same public key. The
    sign needs the bit's value: an attacker guesses it (probability 1/2)."""
    return -128 if secret >> 7 & 1 else 128


def _brute(
    points: Mapping[int, int],
    t: int,
    check: Callable[[bytes], bool] | None,
    prime: int = P,
) -> set[tuple[bytes, frozenset[int]]]:
    """Every (secret, disagreeing x's) of a polynomial of degree < t within
    ``max_wrong_shares`` of the points whose secret passes ``check``: such a polynomial
    agrees with at least t points, so it interpolates some t of them."""
    xs = sorted(points)
    bound = _shamir.max_wrong_shares(len(xs), t, checked=check is not None)
    out = set()
    for sub in itertools.combinations(xs, t):
        ys = [points[x] for x in sub]
        secret = _lagrange_at(list(sub), ys, 0, prime)
        if secret >> 256:
            continue
        wrong = frozenset(
            x for x in xs if _lagrange_at(list(sub), ys, x, prime) != points[x]
        )
        raw = secret.to_bytes(32, "big")
        if len(wrong) <= bound and (check is None or check(raw)):
            out.add((raw, wrong))
    return out


@contextmanager
def _spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Counts Berlekamp-Welch solves and records each decode call (x's, checked)."""
    rec: dict[str, Any] = {"bw": 0, "decode": []}
    bw, dec = _shamir._berlekamp_welch, _shamir.decode

    def spy_bw(*a: Any) -> Any:
        rec["bw"] += 1
        return bw(*a)

    def spy_decode(points: Mapping[int, int], t: int, check: Any = None) -> Any:
        rec["decode"].append((frozenset(points), check is not None))
        return dec(points, t, check)

    monkeypatch.setattr(_shamir, "_berlekamp_welch", spy_bw)
    monkeypatch.setattr(_shamir, "decode", spy_decode)
    yield rec


def _to_c04_mask_key_stage(r: _Round5) -> dict[str, bytes]:
    """5 clients (t = 3), c04 silent from the masking stage: the honest unmask batch;
    c04's key has 4 holders c00..c03 at x = 1..4 (m - t = 1: the check's extra one)."""
    r.start()
    r.step(r.replies())
    r.step(r.replies())
    r.step(r.replies(frozenset({"c04"})))
    if isinstance(r.agg, SecAggAggregator) and r.agg._cfg.active:
        r.step(r.replies())
    return r.replies()


def _shares_of(batch: Mapping[str, bytes], owner: str) -> dict[str, int]:
    out = {}
    for c, d in batch.items():
        for o, _, sh in sm.UnmaskShares.from_bytes(d).shares:
            if o == owner:
                out[c] = _shamir.decode_share(sh[: _shamir.SHARE_SIZE])
    return out


def _add(
    batch: dict[str, bytes],
    holder: str,
    owner: str,
    off: int,
    dealt: SecAggAggregator | None = None,
) -> None:
    """``holder`` reveals its share of ``owner``'s secret plus ``off``: as a lying
    holder (it does not open ``owner``'s commitment, v5), or as ``owner`` dealt it
    (``dealt``: the round's aggregator; see ``_forge_shares``)."""

    def change(o: str, w: int, sh: bytes) -> bytes:
        if o != owner:
            return sh
        return _shamir.encode_share((_shamir.decode_share(sh) + off) % P)

    batch[holder] = _forge_shares(batch[holder], change, dealt=dealt)


# -- 1/3. a wrong secret that passes the check; framing honest holders ---------------------
def test_decode_names_exactly_the_liars_within_the_bound_despite_clamping() -> None:
    """Was open (review r4, MEDIUM): within the bound, liars could have honest holders
    named and go unnamed themselves. A mask key that differs from the dealer's in a bit
    X25519 clamping ignores passed the advertised-key check, and the polynomial
    f + delta*g (g(0) = 1, vanishing on t - 1 honest x's) needs no knowledge of the
    secret, only the clamped bit's value (one guess, 1/2). With m - t odd (the
    leave-one-out case) e = (m - t + 1) // 2 liars reach it.

    Fixed (SecAgg+ v4): clients share the key in clamped form and the aggregator's
    check (``mask_key_check``) accepts only the clamped form with the advertised
    public key, so the liars' key (a clamped bit flipped) fails and they are named.
    Changed with the fix: the dealt key is in clamped form (as clients now share it)
    and the check is the aggregator's."""
    m, t = 8, 3
    xs = list(range(1, m + 1))
    key = clamp_x25519(bytes(range(100, 132)))
    spk = x25519_public(x25519_key(key))
    f = _shamir.share(key, xs, t, DeterministicRng(4))
    bound = _shamir.max_wrong_shares(m, t, checked=True)
    assert bound == 3
    liars = xs[:bound]  # x = 1, 2, 3: the first one is in the head
    roots = xs[bound : bound + t - 1]  # honest x = 4, 5: p agrees with them
    delta = _clamp_delta(int.from_bytes(key, "big"))
    pts = _moved(f, liars, roots, delta)
    got = _shamir.decode(pts, t, mask_key_check(spk))
    assert got is not None
    assert got[1] == frozenset(liars)
    # the old check (public key only) is still fooled: the clamped form is the fix
    old = _shamir.decode(pts, t, lambda raw: x25519_public(x25519_key(raw)) == spk)
    assert old is not None and old[1] != frozenset(liars)


@pytest.mark.parametrize("active", [False, True])
def test_one_liar_cannot_frame_an_honest_holder_of_a_mask_key(active: bool) -> None:
    """Was open (review r4, MEDIUM): one liar among a dropped client's 4 holders (t = 3,
    the case the change was made for) had the honest c03 named 'wrong mask-key share'
    and was not named itself (clamped-bit offset, guessed with probability 1/2; the
    sum stayed exact since the clamped key gives the same ECDH). Fixed by the
    clamped-form check: the liar alone is named. Since v5 the liar's share does not
    open c04's commitment, so its reply is left out before decoding (3 = t honest
    shares remain) and it is named for that."""
    r = _Round5("secagg-active" if active else "secagg-passive")
    honest = _to_c04_mask_key_stage(r)
    shares = _shares_of(honest, "c04")
    assert sorted(shares) == ["c00", "c01", "c02", "c03"]
    xs = [1, 2, 3]
    secret = _lagrange_at(xs, [shares["c00"], shares["c01"], shares["c02"]], 0)
    batch = dict(honest)
    # c00 (x = 1) moves onto f + delta*g with g(0) = 1, g(2) = g(3) = 0
    _add(batch, "c00", "c04", _clamp_delta(secret) * _bump([2, 3], 1))
    r.step(batch)
    r.check_sum(r.session.holder().recover(r.agg.result()), set(r.ups) - {"c04"})
    assert isinstance(r.agg, SecAggAggregator)
    assert r.agg.rejection_reasons == {"c00": "share does not open its commitment"}


@pytest.mark.parametrize("active", [False, True])
def test_a_dealer_dealing_a_clamp_shifted_share_is_named_not_the_holders(
    active: bool,
) -> None:
    """The same polynomial, dealt: c04 itself gave c00 the clamp-shifted share (it
    opens c04's commitment). The clamped-form check refuses the shifted key, decoding
    corrects c00's share and the dealer c04 alone is named; the sum is exact."""
    r = _Round5("secagg-active" if active else "secagg-passive")
    honest = _to_c04_mask_key_stage(r)
    shares = _shares_of(honest, "c04")
    secret = _lagrange_at([1, 2, 3], [shares[c] for c in ("c00", "c01", "c02")], 0)
    batch = dict(honest)
    assert isinstance(r.agg, SecAggAggregator)
    _add(batch, "c00", "c04", _clamp_delta(secret) * _bump([2, 3], 1), dealt=r.agg)
    r.step(batch)
    r.check_sum(r.session.holder().recover(r.agg.result()), set(r.ups) - {"c04"})
    assert r.agg.rejection_reasons == {"c04": "dealt wrong mask-key shares"}


@pytest.mark.parametrize("active", [False, True])
def test_a_liar_offsetting_by_a_non_clamped_bit_is_corrected_and_named(
    active: bool,
) -> None:
    """The same attack with the wrong guess (the offset changes a bit the key uses):
    the check refuses the liar's polynomial, decoding falls back to the dealer's, the
    sum is exact and the liar alone is named (since v5: its share does not open)."""
    r = _Round5("secagg-active" if active else "secagg-passive")
    honest = _to_c04_mask_key_stage(r)
    shares = _shares_of(honest, "c04")
    secret = _lagrange_at([1, 2, 3], [shares[c] for c in ("c00", "c01", "c02")], 0)
    batch = dict(honest)
    _add(batch, "c00", "c04", -_clamp_delta(secret) * _bump([2, 3], 1))
    r.step(batch)
    r.check_sum(r.session.holder().recover(r.agg.result()), set(r.ups) - {"c04"})
    assert isinstance(r.agg, SecAggAggregator)
    assert r.agg.rejection_reasons == {"c00": "share does not open its commitment"}


def test_t_minus_one_colluders_cannot_move_a_checked_key_without_a_guess() -> None:
    """t - 1 colluding holders (all of a coalition just under t) consistent on f + h
    with h(0) != 0 for a non-clamped offset: the check refuses every such polynomial
    and decoding returns the right key with the liars named (within the bound) or
    None; never a key that fails the check."""
    m, t = 9, 4
    xs = list(range(1, m + 1))
    key = bytes(range(7, 39))
    spk = x25519_public(x25519_key(key))
    f = _shamir.share(key, xs, t, DeterministicRng(6))
    for liars in itertools.combinations(xs, t - 1):
        roots = [x for x in xs if x not in liars][: t - 1]
        pts = _moved(f, liars, roots, (1 << 100))
        got = _shamir.decode(pts, t, lambda raw: x25519_public(x25519_key(raw)) == spk)
        assert got is not None and got[0] == key
        assert got[1] == frozenset(liars)  # 3 <= bound (m - t = 5: 3)


def test_a_majority_on_a_non_clamped_key_never_passes_the_check() -> None:
    """From one liar up to a majority (m - t + 1 holders) all on f + delta*g with a
    delta that changes a bit the key uses (the check cannot be fooled without the
    clamping guess): the right key with exactly the liars named while within the
    bound, None beyond it; never another key."""
    m, t = 9, 4
    xs = list(range(1, m + 1))
    key = bytes(range(9, 41))
    spk = x25519_public(x25519_key(key))
    f = _shamir.share(key, xs, t, DeterministicRng(12))
    bound = _shamir.max_wrong_shares(m, t, checked=True)
    for e in range(1, m - t + 2):
        liars = xs[-e:] if e % 2 else xs[:e]
        roots = [x for x in xs if x not in liars][: t - 1]
        pts = _moved(f, liars, roots, (1 << 200))
        got = _shamir.decode(pts, t, lambda raw: x25519_public(x25519_key(raw)) == spk)
        if e <= bound:
            assert got == (key, frozenset(liars))
        else:
            assert got is None


def test_consistent_majority_on_another_polynomial_with_the_same_key_names_honest() -> (
    None
):
    """Pinned limit (the docs state it): bound + 1 liars on f + h with h(0) = 0 need
    no guess at all; the key is right (exact sum) but the honest holders off h's roots
    are named. Reproduced here directly to pin the count."""
    m, t = 8, 3
    xs = list(range(1, m + 1))
    key = bytes(range(32))
    f = _shamir.share(key, xs, t, DeterministicRng(2))
    bound = _shamir.max_wrong_shares(m, t, checked=True)
    liars = xs[: bound + 1]
    root = xs[bound + 1]
    pts = dict(f)
    for x in liars:
        pts[x] = (f[x] + x * (x - root)) % P  # h(0) = 0, h(root) = 0
    got = _shamir.decode(pts, t, lambda raw: raw == key)
    assert got is not None and got[0] == key
    assert got[1] == frozenset(xs) - set(liars) - {root}  # honest, named


def _self_mask_colluders(m: int, t: int) -> int:
    """The fewest holders on one wrong polynomial (through t - 1 honest shares) that
    decoding without a check accepts: m - e - (t - 1) <= (m - t) // 2."""
    return m - t + 1 - (m - t) // 2


def test_colluders_beyond_the_bound_do_not_frame_honest_self_mask_holders() -> None:
    """Was open (review r4, MEDIUM): bound + 1 holders of a survivor's self-mask seed
    (m = 10, t = 6: 3 colluders, a coalition under t) on one wrong polynomial
    f + delta*g (no guess needed: there was no check) made decode return the seed
    shifted by their chosen delta AND name (m - t) // 2 honest holders 'wrong
    self-mask share'. Fixed (SecAgg+ v4): the aggregator checks every seed against the
    client's commitment (a hash: one seed passes). Changed with the fix: decode gets
    that check (here equality with the seed, which is what a matching hash means)."""
    m, t = 10, 6
    xs = list(range(1, m + 1))
    seed = bytes(range(50, 82))
    f = _shamir.share(seed, xs, t, DeterministicRng(8))
    e = _self_mask_colluders(m, t)
    assert e == _shamir.max_wrong_shares(m, t, checked=False) + 1 == 3 < t
    liars, roots = xs[:e], xs[e : e + t - 1]
    pts = _moved(f, liars, roots, 12345)
    got = _shamir.decode(pts, t, lambda raw: raw == seed)
    # secure: no answer (abort) rather than a wrong seed with honest holders named
    assert got is None or not (got[1] - set(liars))


def test_colluders_beyond_the_bound_get_a_wrong_self_mask_seed_accepted() -> None:
    """The mechanics of the attack above (formerly an xfail), pinned for decoding
    WITHOUT a check: the decoded seed is the right one plus the colluders' chosen
    offset, and the named x's are exactly the honest shares off the wrong polynomial.
    The aggregator no longer decodes a seed without its commitment check."""
    m, t = 10, 6
    xs = list(range(1, m + 1))
    seed = bytes(range(50, 82))
    f = _shamir.share(seed, xs, t, DeterministicRng(8))
    liars, roots = xs[:3], xs[3:8]
    pts = _moved(f, liars, roots, 12345)
    got = _shamir.decode(pts, t)
    assert got is not None
    assert int.from_bytes(got[0], "big") == int.from_bytes(seed, "big") + 12345
    assert got[1] == frozenset(xs[8:])


def test_one_fewer_colluder_on_a_self_mask_seed_is_corrected() -> None:
    """The bound itself holds against the same crafted polynomial: (m - t) // 2
    colluders are corrected and named, whatever the polynomial they agree on."""
    m, t = 10, 6
    xs = list(range(1, m + 1))
    seed = bytes(range(50, 82))
    f = _shamir.share(seed, xs, t, DeterministicRng(8))
    for liars in itertools.combinations(xs, 2):
        roots = [x for x in xs if x not in liars][: t - 1]
        pts = _moved(f, liars, roots, 12345)
        assert _shamir.decode(pts, t) == (seed, frozenset(liars))


def test_self_mask_colluders_end_to_end_are_refused_without_framing() -> None:
    """Was open (review r4, MEDIUM): end to end, 12 clients on the complete graph (t = 7,
    11 holders per seed), 3 holders of survivor c05's self-mask seed collude: the
    aggregator finished, named 2 honest holders 'wrong self-mask share' and handed out
    a wrong sum. Fixed: the seed commitment refuses the colluders' seed (3 > the
    checked bound 2: the round aborts, nobody framed). Since v5 the colluders' shares
    do not open c05's commitments: they are named, left out, and the 8 honest shares
    give the exact sum."""
    r = _Round(12, False, full_graph=True)
    assert (r.agg.graph.degree, r.agg.graph.threshold) == (11, 7)
    owner = "c05"
    framed: list[str] = []
    index = {c: i + 1 for i, c in enumerate(sorted(r.ups))}

    def tamper(s: int, replies: dict[str, bytes]) -> dict[str, bytes]:
        if s != _last(False):
            return replies
        holders = sorted(_shares_of(replies, owner))
        e = _self_mask_colluders(len(holders), 7)
        assert (len(holders), e) == (11, 3)
        liars, roots = holders[:e], [index[c] for c in holders[e : e + 6]]
        framed.extend(holders[e + 6 :])
        for c in liars:
            _add(replies, c, owner, 999 * _bump(roots, index[c]))
        return replies

    res = r.run(tamper)
    r.assert_exact(res)
    liars = sorted(_shares_of(r.got[-1], owner))[:3]
    assert framed and not set(framed) & set(r.agg.rejection_reasons)
    assert r.agg.rejection_reasons == dict.fromkeys(
        liars, "share does not open its commitment"
    )


# -- 2. work -------------------------------------------------------------------------------
def test_one_liar_costs_a_bounded_number_of_decodings_per_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Was open (review r4, MEDIUM, DoS): one liar with the smallest x (in the head of
    every secret it holds) sends one wrong share per secret and cost one
    Berlekamp-Welch decoding (O(m^3)) for each: n per round with the complete graph.
    Reviewer's figures (2-core dev box): 0.25-0.4 s per secret at m = 98-99, ~30 s a
    round at n = 100 full graph; 3.2 s per secret at m = 199 (n = 200: ~10 min).

    Fixed: once a sender is named in a round, its shares of the round's other secrets
    are erasures (left out when t others remain), so decoding interpolates t shares of
    senders not named and checks (every secret is checked since v4); Berlekamp-Welch
    runs only when that check fails. Measured on this scenario (the unmask stage of a
    full-graph round, c00 lying on every share, 2-core dev box, wall time):
    n = 12 (m = 11, t = 7): 11 BW solves, 0.010 s before; 1 solve, 0.002 s after;
    n = 40 (m = 39, t = 21): 39 solves, 0.54 s before; 1 solve, 0.053 s after.
    Since v5 the liar's shares do not open their commitments: its reply is left out
    whole before decoding, so it costs no Berlekamp-Welch solve at all."""
    r = _Round(12, False, full_graph=True)
    assert (r.agg.graph.degree, r.agg.graph.threshold) == (11, 7)

    def tamper(s: int, replies: dict[str, bytes]) -> dict[str, bytes]:
        if s == _last(False):
            replies["c00"] = _forge_shares(
                replies["c00"],
                lambda o, w, sh: _shamir.encode_share(
                    (_shamir.decode_share(sh) + 1) % P
                ),
            )
        return replies

    with _spy(monkeypatch) as rec:
        r.assert_exact(r.run(tamper))
    assert r.agg.rejection_reasons == {"c00": "share does not open its commitment"}
    assert rec["bw"] == 0  # was 11, one per secret c00 holds a share of; then 1


def test_leave_one_out_work_stays_within_the_documented_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worst case for the checked decoder: m = 32 (the leave-one-out cap), t = 17,
    the bound's liars: the last x of the first t (the first interpolation fails) and
    the largest x's (leave-one-out tries the 16 honest shares before it first), then
    one more (it aborts). Solves <= m + 1 (18, then 33), checks <= m + 2."""
    m, t = 32, 17
    xs = list(range(1, m + 1))
    key = bytes(range(32))
    f = _shamir.share(key, xs, t, DeterministicRng(1))
    bound = _shamir.max_wrong_shares(m, t, checked=True)
    assert bound == 8
    for e, solves in ((bound, 1 + t), (bound + 1, 1 + m)):
        liars = [t, *xs[-(e - 1) :]]
        pts = dict(f)
        for x in liars:
            pts[x] = (pts[x] + 3**x) % P
        checks = [0]

        def check(raw: bytes, checks: list[int] = checks) -> bool:
            checks[0] += 1
            return raw == key

        with _spy(monkeypatch) as rec:
            got = _shamir.decode(pts, t, check)
        monkeypatch.undo()
        assert rec["bw"] == solves <= m + 1 and checks[0] <= m + 2
        if e == bound:
            assert got == (key, frozenset(liars))
        else:
            assert got is None


# -- 4. crafted bytes at the unmask stage ----------------------------------------------------
def _craft(kind: str, data: bytes, alive: set[str], dropped: str, me: str) -> bytes:
    m = sm.UnmaskShares.from_bytes(data)
    shares = list(m.shares)
    o, w, sh = shares[0]
    if kind == "value-prime":
        shares[0] = (o, w, P.to_bytes(33, "big"))
    elif kind == "value-max":
        shares[0] = (o, w, b"\xff" * 33)
    elif kind == "survivor-mask-key":  # s_sk of a survivor: with its b, its input
        shares = [(x, sm._S if x in alive else k, v) for x, k, v in shares]
    elif kind == "dropped-self-mask":  # b of the dropped client
        shares = [x for x in shares if x[0] != dropped] + [(dropped, sm._B, sh)]
    elif kind == "own-secret":
        shares.append((me, sm._B, sh))
    elif kind == "unknown-owner":
        shares.append(("zz-nobody", sm._B, sh))
    elif kind == "not-a-survivor":  # a client never in the round's key set
        shares.append(("c99", sm._S, sh))
    elif kind == "duplicate-owner":
        shares.append((o, w, sh))
    elif kind == "both-kinds":
        shares.append((o, sm._S if w == sm._B else sm._B, sh))
    elif kind == "cut":
        return data[:-1]
    elif kind == "trailing":
        return data + b"\x00"
    else:
        raise AssertionError(kind)
    return sm.UnmaskShares(m.params_id, m.round_id, me, tuple(shares)).to_bytes()


CRAFT = [
    "value-prime",
    "value-max",
    "survivor-mask-key",
    "dropped-self-mask",
    "own-secret",
    "unknown-owner",
    "duplicate-owner",
    "not-a-survivor",
    "both-kinds",
    "cut",
    "trailing",
]


@pytest.mark.parametrize("kind", CRAFT)
def test_crafted_unmask_reply_is_ignored_and_no_owner_loses_both_secrets(
    monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """12 clients, c03 dropped before its upload; c00 (in the head of most secrets)
    answers with a crafted reply: out-of-field share values, a survivor's mask-key
    share (the classic attack: with its self-mask seed, its input), the dropped
    client's self-mask share, its own secret, an unknown owner, a duplicated owner,
    both kinds for one owner, a cut message. The reply is ignored whole (c00 listed,
    still a contributor), the sum is exact, only privagg errors, and every owner is
    decoded once, checked iff it dropped: no survivor's mask key is ever decoded."""
    r = _Round(12, False)
    dropped = "c03"

    def tamper(s: int, replies: dict[str, bytes]) -> dict[str, bytes]:
        if s == MASKED:
            del replies[dropped]
        if s == _last(False):
            alive = set(replies)
            replies["c00"] = _craft(kind, replies["c00"], alive, dropped, "c00")
        return replies

    with _spy(monkeypatch) as rec:
        res = r.run(tamper)
    r.assert_exact(res)
    assert "c00" in r.agg.rejected and "c00" in res.contributors
    owners_x = [xs for xs, _ in rec["decode"]]
    assert len(owners_x) == len(set(res.contributors)) + 1
    # every secret is checked since SecAgg+ v4 (c03's key, the survivors' seeds
    # against their commitments); this assertion changed with the fix (was: 1)
    assert all(checked for _, checked in rec["decode"])
    assert rec["bw"] == 0  # c00's shares were never used


# -- 4. decode's own input ------------------------------------------------------------------
def test_decode_refuses_too_few_shares_and_nonpositive_threshold() -> None:
    with pytest.raises(privagg.ConfigurationError):
        _shamir.decode({}, 1)
    with pytest.raises(privagg.ConfigurationError):
        _shamir.decode({1: 2, 2: 3}, 0)


def _crafted_points(kind: str) -> dict[int, int]:
    sh = _shamir.share(bytes(32), [1, 2, 3, 4], 3, DeterministicRng(1))
    if kind == "x-equal-mod-prime":  # among the first t: an untyped ValueError
        return {1: sh[1], 1 + P: sh[1], 2: sh[2]}
    if kind == "x-zero":  # taken as a share at 0
        return {0: 5, 1: sh[1], 2: sh[2], 3: sh[3]}
    return {1: sh[1] + P, 2: sh[2], 3: sh[3], 4: sh[4]}  # y not canonical


@pytest.mark.parametrize("kind", ["x-equal-mod-prime", "x-zero", "y-not-canonical"])
def test_decode_refuses_crafted_points_with_a_typed_error(kind: str) -> None:
    """Was open (review r4, LOW): decode did not validate its points as share() does
    (x in [1, PRIME), distinct mod PRIME, y canonical): two x's equal mod PRIME raised
    an untyped ValueError from pow(); x = 0 was taken as a share; a y >= PRIME equal
    to the right share mod PRIME was named wrong. The aggregator only passes
    index + 1 and decode_share() values, so no wire path reached it."""
    with pytest.raises(PrivaggError):
        _shamir.decode(_crafted_points(kind), 3)


# -- 5. privacy: what leaves the decoder -----------------------------------------------------
@pytest.mark.parametrize("over", [False, True])
def test_no_share_or_secret_in_reasons_logs_or_errors(
    caplog: pytest.LogCaptureFixture, over: bool
) -> None:
    """Wrong shares within the bound (finished round) or one more (ProtocolError),
    dealt by c04 (they open its commitments, so they reach decoding): the rejection
    reasons are fixed words, the log and the error text carry no share value, no
    secret and no liar-chosen offset, in decimal or hex."""
    r = _Round5("secagg-passive")
    honest = _to_c04_mask_key_stage(r)
    off = 0xC0FFEE123456789ABCDEF
    batch = dict(honest)
    liars = ["c00", "c01"] if over else ["c01"]
    assert isinstance(r.agg, SecAggAggregator)
    for k, c in enumerate(liars):
        _add(batch, c, "c04", off * (k + 2), dealt=r.agg)  # unrelated offsets
    text = ""
    with caplog.at_level(logging.DEBUG):
        try:
            r.step(batch)
        except ProtocolError as exc:
            text = str(exc) + repr(exc)
    assert bool(text) is over  # aborted exactly when one liar too many
    assert isinstance(r.agg, SecAggAggregator)
    if not over:
        assert r.agg.rejection_reasons == {"c04": "dealt wrong mask-key shares"}
    assert set(r.agg.rejection_reasons.values()) <= {
        "dealt wrong mask-key shares",
        "dealt wrong self-mask shares",
    }
    text += caplog.text + repr(r.agg.rejection_reasons) + repr(r.agg)
    secrets: list[int] = [off * 2, off * 3]
    for d in list(honest.values()) + list(batch.values()):
        secrets += [
            _shamir.decode_share(s[: _shamir.SHARE_SIZE])
            for _, _, s in sm.UnmaskShares.from_bytes(d).shares
        ]
    for v in secrets:
        for form in (str(v), f"{v:x}", f"{v:066x}", v.to_bytes(33, "big").hex()):
            assert form[-16:] not in text
    salts = [  # the revealed salts (v5) stay out too
        s[_shamir.SHARE_SIZE :].hex()
        for d in batch.values()
        for _, _, s in sm.UnmaskShares.from_bytes(d).shares
    ]
    assert salts and all(x[:16] not in text and x[-16:] not in text for x in salts)


@settings(max_examples=60, deadline=None)
@given(
    t=st.integers(1, 4),
    extra=st.integers(0, 5),
    seed=st.integers(0, 2**32 - 1),
    checked=st.booleans(),
)
def test_decode_never_answers_from_fewer_than_t_agreeing_shares(
    t: int, extra: int, seed: int, checked: bool
) -> None:
    """Any points at all (random, adversarial: a mix of several polynomials): when
    decode answers, at least t of the shares agree with it (never a secret from fewer
    than t shares), it is the only polynomial within the bound that passes the check
    (brute force over every t-subset), and it names exactly its disagreements."""
    rnd = random.Random(seed)  # test data, not a secret
    m = t + extra
    xs = sorted(rnd.sample(range(1, 40), m))
    base = [rnd.randrange(2**256) for _ in range(t)]
    alt = [rnd.randrange(2**256) for _ in range(t)]
    pts = {}
    for x in xs:
        coeffs = base if rnd.random() < 0.7 else alt
        v = sum(c * pow(x, i, P) for i, c in enumerate(coeffs)) % P
        pts[x] = v if rnd.random() < 0.9 else rnd.randrange(P)
    key = base[0].to_bytes(32, "big")
    check = (lambda raw: raw == key) if checked else None
    got = _shamir.decode(pts, t, check)
    want = _brute(pts, t, check)
    assert len(want) <= 1
    assert (got is None) == (not want)
    if got is not None:
        assert got in want
        assert m - len(got[1]) >= t


# -- 6. decode against a brute-force decoder over a small field -------------------------------
@contextmanager
def _field(p: int) -> Iterator[None]:
    """The decoder over GF(p): PRIME is read at call time; the inverse cache is
    cleared before and after."""
    saved = _shamir.PRIME
    _shamir._inv.cache_clear()
    _shamir.PRIME = p
    try:
        yield
    finally:
        _shamir.PRIME = saved
        _shamir._inv.cache_clear()


def test_decode_matches_brute_force_exhaustively_over_gf5() -> None:
    """Every t <= m <= 4 on x = 1..m, EVERY value vector in GF(5)^m (each adversarial
    choice of wrong shares), unchecked and checked with every target secret: decode
    answers iff a polynomial within the bound passes the check, that polynomial is
    unique, and decode returns it with exactly its disagreements."""
    p = 5
    with _field(p):
        _exhaustive(p)
    assert _shamir.PRIME == P


def _is(s: int, raw: bytes) -> bool:
    return int.from_bytes(raw, "big") == s


def _exhaustive(p: int) -> None:
    n = 0
    for m in range(1, 5):
        xs = list(range(1, m + 1))
        for t in range(1, m + 1):
            for ys in itertools.product(range(p), repeat=m):
                pts = dict(zip(xs, ys, strict=True))
                checks: list[Callable[[bytes], bool] | None] = [None]
                checks += [partial(_is, s) for s in range(p)]
                for check in checks:
                    want = _brute(pts, t, check, p)
                    assert len(want) <= 1
                    got = _shamir.decode(pts, t, check)
                    assert got == (next(iter(want)) if want else None), (pts, t)
                    n += 1
    assert n == sum(p**m * m * (p + 1) for m in range(1, 5))


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_decode_matches_brute_force_on_larger_codes_over_gf13(
    data: st.DataObject,
) -> None:
    """GF(13), m up to 9 on random x's, a codeword with arbitrary errors (any count,
    any values): decode agrees with the brute-force decoder."""
    p = 13
    m = data.draw(st.integers(1, 9))
    t = data.draw(st.integers(1, m))
    xs = sorted(
        data.draw(st.lists(st.integers(1, p - 1), min_size=m, max_size=m, unique=True))
    )
    coeffs = data.draw(st.lists(st.integers(0, p - 1), min_size=t, max_size=t))
    pts = {x: sum(c * x**i for i, c in enumerate(coeffs)) % p for x in xs}
    for x in data.draw(st.lists(st.sampled_from(xs), unique=True)):
        pts[x] = data.draw(st.integers(0, p - 1))
    target = data.draw(st.integers(0, p - 1))
    for check in (None, lambda raw: int.from_bytes(raw, "big") == target):
        want = _brute(pts, t, check, p)
        assert len(want) <= 1
        with _field(p):
            got = _shamir.decode(pts, t, check)
        assert got == (next(iter(want)) if want else None)
