"""Review r11 (outside reviewer): SecAgg+ v5 committed shares (commit 05f42f3).

Parser attacks on the v5 share records and reveals: every malformed record or
reveal is a typed DeserializationError."""

from __future__ import annotations

import dataclasses

import pytest

from privagg.backends.secagg import messages as sm
from privagg.errors import DeserializationError

PID = b"\x01" * 32


def _record() -> bytes:
    return sm.seal_shares(b"\x02" * 32, b"\x03" * 32, b"\x04" * (sm.SEALED_SIZE - 64))


@pytest.mark.parametrize("delta", [-1, 1, -(sm.SEALED_SIZE), 16])
def test_r11_open_sealed_refuses_wrong_sizes(delta: int) -> None:
    rec = _record()
    bad = rec[:delta] if delta < 0 else rec + b"\x00" * delta
    with pytest.raises(DeserializationError):
        sm.open_sealed(bad)
    assert sm.open_sealed(rec) == (b"\x02" * 32, b"\x03" * 32, rec[64:])


@pytest.mark.parametrize("cls", [sm.SharesMessage, sm.MaskRequest])
@pytest.mark.parametrize("delta", [-1, 1])
def test_r11_share_record_of_wrong_size_is_typed(cls: type, delta: int) -> None:
    rec = _record()
    bad = rec[:delta] if delta < 0 else rec + b"\x00"
    data = cls(PID, 1, "c1", (("c2", bad),)).to_bytes()
    with pytest.raises(DeserializationError):
        cls.from_bytes(data)
    ok = cls(PID, 1, "c1", (("c2", rec),)).to_bytes()
    assert cls.from_bytes(ok).ciphertexts == (("c2", rec),)


@pytest.mark.parametrize("delta", [-1, 1, -32])
def test_r11_reveal_of_wrong_size_is_typed(delta: int) -> None:
    rev = b"\x05" * sm.REVEAL_SIZE
    bad = rev[:delta] if delta < 0 else rev + b"\x00"
    data = sm.UnmaskShares(PID, 1, "c1", (("c2", sm._S, bad),)).to_bytes()
    with pytest.raises(DeserializationError):
        sm.UnmaskShares.from_bytes(data)


# -- attack 2: a holder reveals a share with a forged salt -------------------------------
@pytest.mark.parametrize("active", [True, False])
def test_r11_holder_revealing_true_share_with_forged_salt_is_named(
    active: bool,
) -> None:
    """c00 reveals its true shares but flips a bit of every salt: none opens its
    commitment, c00 is named "share does not open its commitment" (only c00), its
    shares are erasures, the sum is exact."""
    from tests.privagg.test_review_secagg_drop import _last, _Round

    r = _Round(7, active)
    last = _last(active)

    def tamper(s: int, replies: dict[str, bytes]) -> dict[str, bytes]:
        if s == last:
            m = sm.UnmaskShares.from_bytes(replies["c00"])
            n = sm.REVEAL_SIZE - sm.SALT_SIZE
            shares = tuple(
                (o, w, rec[:n] + bytes([rec[n] ^ 1]) + rec[n + 1 :])
                for o, w, rec in m.shares
            )
            replies["c00"] = dataclasses.replace(m, shares=shares).to_bytes()
        return replies

    res = r.run(tamper)
    r.assert_exact(res)
    assert r.agg.rejection_reasons == {"c00": "share does not open its commitment"}


# -- attack 1: a dealer commits to a share other than the one it encrypts ----------------
@pytest.mark.parametrize("active", [True, False])
def test_r11_dealer_committing_to_another_share_for_one_holder_is_excluded(
    active: bool,
) -> None:
    """c00's record for its first holder carries a commitment that the encrypted share
    does not open: that holder refuses c00 (as a bad ciphertext), c00 alone is named
    "share refused by a neighbour" and left out, no honest holder is named, the sum of
    the others is exact."""
    from tests.privagg.test_review_secagg_drop import _Round

    r = _Round(7, active)

    def tamper(s: int, replies: dict[str, bytes]) -> dict[str, bytes]:
        if s == 1:
            m = sm.SharesMessage.from_bytes(replies["c00"])
            h0 = m.ciphertexts[0][0]
            cts = tuple(
                (h, bytes([rec[0] ^ 1]) + rec[1:] if h == h0 else rec)
                for h, rec in m.ciphertexts
            )
            replies["c00"] = dataclasses.replace(m, ciphertexts=cts).to_bytes()
        return replies

    res = r.run(tamper)
    r.assert_exact(res)
    assert sorted(res.contributors) == [f"c0{i}" for i in range(1, 7)]
    assert r.agg.rejection_reasons == {"c00": "share refused by a neighbour"}


# -- attack 2: a holder reveals another holder's (share, salt) ---------------------------
@pytest.mark.parametrize("active", [True, False])
def test_r11_holder_replaying_another_holders_reveal_is_named(active: bool) -> None:
    """c00 replaces its reveals by another holder's (share, salt) of the same owners:
    the commitment binds the holder, so they do not open; only c00 is named, the sum
    over all seven is exact."""
    from tests.privagg.test_review_secagg_drop import _last, _Round

    r = _Round(7, active)
    last = _last(active)

    def tamper(s: int, replies: dict[str, bytes]) -> dict[str, bytes]:
        if s == last:
            ms = {c: sm.UnmaskShares.from_bytes(d) for c, d in replies.items()}
            a = ms["c00"]
            for c, m in sorted(ms.items()):
                other = {(o, w): rec for o, w, rec in m.shares}
                sh = tuple((o, w, other.get((o, w), rec)) for o, w, rec in a.shares)
                if c != "c00" and sh != a.shares:
                    replies["c00"] = dataclasses.replace(a, shares=sh).to_bytes()
                    break
            else:
                raise AssertionError("no shared owner")
        return replies

    res = r.run(tamper)
    r.assert_exact(res)
    assert len(res.contributors) == 7
    assert r.agg.rejection_reasons == {"c00": "share does not open its commitment"}
