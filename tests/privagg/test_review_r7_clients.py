"""Review r7 (outside reviewer) of SecAgg+ v4: malicious CLIENTS against the unmask
decoding (``_shamir.decode`` via ``SecAggAggregator._recover``).

New attack here: the *dealer* of a secret lies. A client Shamir-shares its own mask key
``s_sk`` and self-mask seed ``b`` at stage 1, encrypted to each holder; a holder cannot
check that its share lies on the dealer's polynomial. Under v4 a dealer that gave up to
the decoding bound of its holders wrong shares had its secret corrected (the sum stayed
exact) and those honest holders named in ``rejection_reasons`` as liars, while the
dealer was not named (MEDIUM). Fixed in SecAgg+ v5: every dealt share carries the
dealer's salted commitment, checked by the holder on receipt and by the aggregator on
reveal, so a wrong share that opens its commitment names the dealer ("dealt wrong ...
shares") and a holder's wrong reveal does not open ("share does not open its
commitment").

Also: a dealer beyond the bound aborts the round with a typed error naming it (the
documented denial of service); a holder lying on both kinds of secret is named once and
its shares are left out; coalitions of exactly t - 1, exactly the bound and one beyond
it, with independent offsets and with the strongest structured attack (a polynomial with
the same secret), never give a wrong sum.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest

from privagg import InsufficientParticipantsError, ProtocolError
from privagg._rng import Rng
from privagg.backends import _shamir
from privagg.backends.secagg import _context as sa_ctx
from privagg.backends.secagg import client as sa_client
from privagg.backends.secagg import messages as sm
from tests.privagg.test_review_secagg_drop import MASKED, _forge_shares, _last, _Round

P = _shamir.PRIME
N = 12
DEALER = "c05"


def _index(r: _Round) -> dict[str, int]:
    """Client id -> its Shamir x-coordinate (1 + its index in the sorted U0)."""
    return {c: i + 1 for i, c in enumerate(sorted(r.ups))}


def _offset(x: int, tag: str) -> int:
    """A nonzero offset unrelated to any other (no subset of wrong shares happens to
    interpolate the right secret)."""
    return 1 + int.from_bytes(hashlib.sha256(f"r7/{tag}/{x}".encode()).digest())


@contextmanager
def _lying_dealer(
    monkeypatch: pytest.MonkeyPatch,
    r: _Round,
    dealer: str,
    which: str,
    pick: Callable[[list[int]], Sequence[int]],
) -> Iterator[list[int]]:
    """While ``dealer`` answers stage 1 it Shamir-shares its secret ``which`` ("s":
    mask key, "b": self-mask seed) with wrong values for the holders ``pick`` chooses
    (from the sorted x-coordinates). Yields the x's it lied to (filled at stage 1)."""
    real = _shamir.share
    active = {"on": False, "calls": 0}
    lied: list[int] = []

    def share(secret: bytes, xs: Sequence[int], t: int, rng: Rng) -> dict[int, int]:
        out = real(secret, xs, t, rng)
        if active["on"]:
            active["calls"] += 1  # the client shares s_sk first, then b
            if (which, active["calls"]) in (("s", 1), ("b", 2)):
                for x in pick(sorted(xs)):
                    out[x] = (out[x] + _offset(x, which)) % P
                    lied.append(x)
        return out

    monkeypatch.setattr(_shamir, "share", share)
    handle = r.clients[dealer].handle

    def dealer_handle(req: bytes) -> bytes:
        active["on"] = True
        try:
            return handle(req)
        finally:
            active["on"] = False

    monkeypatch.setattr(r.clients[dealer], "handle", dealer_handle)
    yield lied


def _bound_last(xs: list[int], t: int = 3) -> Sequence[int]:
    """The decoding bound's worth of holders, those with the largest x."""
    return xs[len(xs) - _shamir.max_wrong_shares(len(xs), t, checked=True) :]


def _dropping(dealer: str) -> Callable[[int, dict[str, bytes]], dict[str, bytes]]:
    def tamper(s: int, replies: dict[str, bytes]) -> dict[str, bytes]:
        if s == MASKED:
            del replies[dealer]
        return replies

    return tamper


def _framed_run(
    monkeypatch: pytest.MonkeyPatch, active: bool, which: str
) -> tuple[_Round, set[str], Any]:
    """The framing round: ``DEALER`` lies to the bound's worth of its holders about
    ``which``; for the mask key it then drops before its masked upload (so its key is
    reconstructed), for the seed it survives (so its seed is)."""
    r = _Round(N, active)
    with _lying_dealer(monkeypatch, r, DEALER, which, _bound_last) as lied:
        res = r.run(_dropping(DEALER) if which == "s" else None)
    inv = {x: c for c, x in _index(r).items()}
    return r, {inv[x] for x in lied}, res


@pytest.mark.parametrize("which", ["b", "s"])
@pytest.mark.parametrize("active", [False, True])
def test_r7_lying_dealer_is_named_not_its_holders(
    monkeypatch: pytest.MonkeyPatch, active: bool, which: str
) -> None:
    """Refused since v5: the dealer's secret is corrected (exact sum), the dealer
    alone is named, with the reason of the secret; the honest holders it lied to are
    not named and stay contributors."""
    r, framed, res = _framed_run(monkeypatch, active, which)
    r.assert_exact(res)
    assert len(framed) == 3  # m = 8 holders, t = 3: the checked bound
    reason = (
        "dealt wrong self-mask shares"
        if which == "b"
        else "dealt wrong mask-key shares"
    )
    assert r.agg.rejection_reasons == {DEALER: reason}
    assert framed <= set(res.contributors)
    assert (DEALER in res.contributors) == (which == "b")


@pytest.mark.parametrize("which", ["b", "s"])
@pytest.mark.parametrize("active", [False, True])
def test_r7_lying_dealer_cannot_frame_honest_holders(
    monkeypatch: pytest.MonkeyPatch, active: bool, which: str
) -> None:
    """Review r7, MEDIUM, accountability (fixed in v5): one malicious client deals
    wrong shares of its own secret to as many holders as the bound allows. Holders
    cannot see it (the share is on no polynomial they know, but it opens the dealer's
    commitment); the aggregator corrects the secret. Secure: an honest holder is never
    blamed alone; the dealer is named (or no holder is)."""
    r, framed, res = _framed_run(monkeypatch, active, which)
    r.assert_exact(res)
    named = set(r.agg.rejection_reasons)
    assert DEALER in named or not framed & named
    assert not framed & named


@pytest.mark.parametrize("which", ["b", "s"])
@pytest.mark.parametrize("active", [False, True])
def test_r7_dealer_beyond_the_bound_aborts_naming_itself(
    monkeypatch: pytest.MonkeyPatch, active: bool, which: str
) -> None:
    """Refused (the documented denial of service): a dealer that gives every holder
    a wrong share (of its seed while it survives, or of its key, then dropping) aborts
    the round with a ProtocolError naming the dealer, and never yields a result; no
    honest holder is named."""
    r = _Round(N, active)
    with (
        _lying_dealer(monkeypatch, r, DEALER, which, lambda xs: xs),
        pytest.raises(ProtocolError, match=repr(DEALER)),
    ):
        r.run(_dropping(DEALER) if which == "s" else None)
    assert not r.agg.done
    assert r.agg.rejection_reasons == {}


# -- a holder lying on both kinds of secret ------------------------------------------------
@pytest.mark.parametrize("active", [False, True])
def test_r7_holder_lying_on_both_kinds_is_corrected_and_named_once(
    active: bool,
) -> None:
    """Refused: with c03 dropped before its upload, one holder of c03's key sends a
    wrong share of EVERY secret it holds: the survivors' self-mask seeds and c03's
    mask key. Its shares do not open their dealers' commitments (v5): they are left
    out, the sum is exact, the liar (only it) is named once and stays a
    contributor."""
    r = _Round(N, active)
    last = _last(active)
    liar: list[str] = []

    def tamper(s: int, replies: dict[str, bytes]) -> dict[str, bytes]:
        if s == MASKED:
            del replies["c03"]
        if s == last:
            holders = sorted(
                c
                for c, d in replies.items()
                if any(o == "c03" for o, _, _ in sm.UnmaskShares.from_bytes(d).shares)
            )
            liar.append(holders[0])
            kinds = {
                w for o, w, _ in sm.UnmaskShares.from_bytes(replies[liar[0]]).shares
            }
            assert kinds == {sm._B, sm._S}
            replies[liar[0]] = _forge_shares(
                replies[liar[0]],
                lambda o, w, sh: _shamir.encode_share(
                    (_shamir.decode_share(sh) + _offset(len(o) + w, o)) % P
                ),
            )
        return replies

    res = r.run(tamper)
    r.assert_exact(res)
    assert r.agg.rejection_reasons == {liar[0]: "share does not open its commitment"}
    assert liar[0] in res.contributors and "c03" not in res.contributors


# -- coalitions of holders on one survivor's seed ------------------------------------------
def _holder_coalition(
    r: _Round,
    owner: str,
    k: Callable[[int, int], int],
    structured: bool,
    t: int,
    chosen: list[str],
) -> Callable[[int, dict[str, bytes]], dict[str, bytes]]:
    """At the unmask stage ``k(m, t)`` holders of ``owner``'s seed (smallest x) send
    wrong shares: independent offsets, or (``structured``) ``f + h`` with
    ``h(0) = 0`` vanishing at the next ``t - 2`` holders' x's, so that the coalition
    agrees on a polynomial with the right secret (no guess needed)."""
    index = _index(r)
    last = _last(r.agg._cfg.active)

    def tamper(s: int, replies: dict[str, bytes]) -> dict[str, bytes]:
        if s != last:
            return replies
        holders = sorted(
            c
            for c, d in replies.items()
            if any(o == owner for o, _, _ in sm.UnmaskShares.from_bytes(d).shares)
        )
        n_liars = k(len(holders), t)
        liars, roots = holders[:n_liars], holders[n_liars : n_liars + t - 2]
        chosen.extend(liars)
        for c in liars:
            x = index[c]
            if structured:
                h = x
                for rc in roots:
                    h = h * (x - index[rc]) % P
                delta = 4242 * h % P
            else:
                delta = _offset(x, owner)

            def change(o: str, w: int, sh: bytes, delta: int = delta) -> bytes:
                if o != owner:
                    return sh
                return _shamir.encode_share((_shamir.decode_share(sh) + delta) % P)

            replies[c] = _forge_shares(replies[c], change)
        return replies

    return tamper


def _checked(m: int, t: int) -> int:
    return _shamir.max_wrong_shares(m, t, checked=True)


COALITIONS: dict[str, Callable[[int, int], int]] = {
    "t-1": lambda m, t: t - 1,
    "bound": _checked,
    "bound+1": lambda m, t: _checked(m, t) + 1,
}


@pytest.mark.parametrize("structured", [False, True])
@pytest.mark.parametrize("size", sorted(COALITIONS))
@pytest.mark.parametrize("full_graph", [False, True])
def test_r7_holder_coalitions_never_give_a_wrong_sum(
    full_graph: bool, size: str, structured: bool
) -> None:
    """Refused: coalitions of exactly t - 1, exactly the checked bound and one beyond
    it on survivor c05's self-mask seed (sparse graph: m = 8, t = 3, bound 3; complete
    graph: m = 11, t = 7, bound 2). Under v4 coalitions beyond the bound could have
    honest holders named (structured) or abort the round. Since v5 a wrong reveal does
    not open its dealer's commitment: every liar is named and its shares left out,
    whatever the coalition's structure; the sum is exact while ``m - k >= t`` honest
    shares remain, else the round aborts for too few shares (t - 1 = 6 liars on the
    complete graph). Never a wrong sum, never an honest holder named."""
    r = _Round(N, False, full_graph=full_graph)
    t = r.agg.graph.threshold
    chosen: list[str] = []
    tamper = _holder_coalition(r, "c05", COALITIONS[size], structured, t, chosen)
    m = 8 if not full_graph else 11
    k = COALITIONS[size](m, t)
    if m - k < t:
        with pytest.raises(InsufficientParticipantsError, match="too few shares"):
            r.run(tamper)
        assert not r.agg.done
        assert len(chosen) == k
        return
    res = r.run(tamper)
    r.assert_exact(res)
    assert len(chosen) == k
    assert r.agg.rejection_reasons == dict.fromkeys(
        chosen, "share does not open its commitment"
    )


# -- a commitment for the right seed, bound to something else -----------------------------
@pytest.mark.parametrize("bound_to", ["params_id", "round", "client"])
@pytest.mark.parametrize("active", [False, True])
def test_r7_commitment_to_the_right_seed_under_another_binding_aborts(
    monkeypatch: pytest.MonkeyPatch, active: bool, bound_to: str
) -> None:
    """Refused: c02 commits to its real seed, but under another session's params_id,
    another round id or another client's id (so that, were the binding loose, it could
    reuse or transplant it). The aggregator checks with the round's own binding: the
    round aborts with a ProtocolError naming c02 (the documented denial of service of
    a wrong commitment), never a result."""
    real = sa_ctx._seed_commitment

    def other(cfg: Any, round_id: int, cid: str, b: bytes) -> bytes:
        if cid != "c02":
            return real(cfg, round_id, cid, b)
        if bound_to == "params_id":
            cfg = SimpleNamespace(params_id=bytes(a ^ 1 for a in cfg.params_id))
        elif bound_to == "round":
            round_id += 1
        else:
            cid = "c03"
        return real(cfg, round_id, cid, b)

    monkeypatch.setattr(sa_client, "_seed_commitment", other)
    r = _Round(8, active)
    with pytest.raises(ProtocolError, match="'c02''s self-mask seed"):
        r.run()
    assert not r.agg.done
