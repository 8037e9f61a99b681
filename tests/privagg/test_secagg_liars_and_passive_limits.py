"""SecAgg+ cases the stop-24 reviews left uncovered (issue #14, r6 follow-up).

* One survivor lying in both kinds of shares in one round: a dropped client's mask-key
  share and a survivor's self-mask share. Since SecAgg+ v5 neither opens its dealer's
  commitment: the liar is named, those shares are left out (erasures) and the sum is exact, with no Berlekamp-Welch decoding at all.
* Passive (semi-honest) SecAgg+ against a malicious server that shows different
  clients different survivor lists: measured, the limit the docs state. The clients
  have no consistency round to compare lists, so the server collects t shares of a
  survivor's self-mask seed from some holders and t shares of its mask key from
  others: both secrets of one client, enough to unmask its input alone. The active
  variant refuses the forged list (``test_review_r6_commitment.py``).
"""

from __future__ import annotations

from typing import Any

import pytest

from privagg.backends import _shamir
from privagg.backends.secagg import messages as sm
from privagg.backends.secagg._context import _seed_commitment
from privagg.backends.secagg.aggregator import mask_key_check
from tests.privagg.test_review_secagg_drop import _last, _Round
from tests.privagg.test_secagg_wrong_shares import DROPPED, N, T, _Liars

_B, _S = 0, 1  # UnmaskShares "which": self-mask seed, mask key


class _BothKinds(_Liars):
    """The survivor with the smallest x that holds shares of both ``c03``'s mask key
    (c03 dropped) and ``c00``'s self-mask seed lies in both."""

    def __init__(self, last: int) -> None:
        self.both: list[str] = []

        def pick(hs: list[str]) -> list[str]:
            return [h for h in hs if h in self.both][:1]

        super().__init__(last, {"c03": pick, "c00": pick})

    def __call__(self, s: int, replies: dict[str, bytes]) -> dict[str, bytes]:
        if s == self.last:
            held: dict[str, set[str]] = {}
            for c, d in replies.items():
                for o, _, _ in sm.UnmaskShares.from_bytes(d).shares:
                    held.setdefault(o, set()).add(c)
            self.both = sorted(held["c03"] & held["c00"])
        return super().__call__(s, replies)


@pytest.mark.parametrize("active", [False, True])
def test_one_liar_in_both_kinds_of_share_is_left_out_without_decoding(
    active: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    solves: list[int] = []
    real = _shamir._berlekamp_welch

    def counting(*a: Any, **k: Any) -> Any:
        solves.append(1)
        return real(*a, **k)

    monkeypatch.setattr(_shamir, "_berlekamp_welch", counting)
    r = _Round(N, active)
    liars = _BothKinds(_last(active))
    res = r.run(liars)
    assert DROPPED[0] == "c03" and liars.both
    (liar,) = {h for hs in liars.chosen.values() for h in hs}
    assert liars.chosen == {"c03": [liar], "c00": [liar]}
    r.assert_exact(res)
    assert r.agg.rejection_reasons == {liar: "share does not open its commitment"}
    assert liar in res.contributors  # a named survivor's input stays in the sum
    # its shares never reach decoding: every secret interpolates from honest shares
    assert solves == []


def test_passive_server_showing_different_survivor_lists_gets_both_secrets() -> None:
    """Measured limit of the semi-honest variant (docs/backends/secagg.md): the
    server tells half of c03's share holders that c03 survived and the other half
    that it dropped; every client answers, and the server reconstructs both c03's
    self-mask seed (it matches c03's commitment) and its mask key (it matches its
    advertised public key): with c03's masked input, that is c03's input alone."""
    n = 12
    r = _Round(n, False)
    while r.stage < _last(False):
        r.step(r.honest())
    reqs = {c: sm.UnmaskRequest.from_bytes(q) for c, q in r.requests.items()}
    assert all("c03" in m.survivors for m in reqs.values())
    u0 = sorted(r.ups)
    holders = [c for c in sorted(reqs) if c != "c03" and "c03" in r.agg._peers[c]]
    assert len(holders) >= 2 * T
    half = len(holders) // 2
    b_pts: dict[int, int] = {}
    s_pts: dict[int, int] = {}
    for i, c in enumerate(holders):
        m = reqs[c]
        survivors = (
            m.survivors if i < half else tuple(x for x in m.survivors if x != "c03")
        )
        forged = sm.UnmaskRequest(
            m.params_id, m.round_id, m.party, survivors, m.signatures, m.attestations
        ).to_bytes()
        reply = sm.UnmaskShares.from_bytes(r.clients[c].handle(forged))
        x = u0.index(c) + 1
        for owner, which, sh in reply.shares:
            if owner == "c03":
                share = sh[: _shamir.SHARE_SIZE]  # then its salt (v5)
                (b_pts if which == _B else s_pts)[x] = _shamir.decode_share(share)
    assert len(b_pts) >= T and len(s_pts) >= T
    keys = r.agg._keys["c03"]
    b = _shamir.reconstruct(b_pts, T)
    s = _shamir.reconstruct(s_pts, T)
    assert _seed_commitment(r.agg._cfg, r.agg._round, "c03", b) == keys.b_commit
    assert mask_key_check(keys.s_pk)(s)
