"""SecAgg+ v4 (review r4, issue #14): the self-mask seed commitment and the clamped
mask key.

Each client advertises, with its public keys at stage 0 (signed with them in the
active variant), ``SHA-256(domain || params_id || round || client id || b)``, a
commitment to its self-mask seed ``b``. The aggregator accepts a reconstructed seed
only if it matches, as it accepts a dropped client's mask key only in clamped form with
the advertised public key: either way exactly one secret passes the check. The
wrong-share bound, the exact names and the abort beyond the bound are in
``test_secagg_wrong_shares.py`` and ``test_review_r4_shares.py``; here: what the
commitment binds, a client that commits to another seed, a replayed advertisement, and
the version bump.
"""

from __future__ import annotations

import hashlib
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from privagg import Layout, ParameterMismatchError, ProtocolError
from privagg.backends import _masking
from privagg.backends._primitives import clamp_x25519
from privagg.backends.secagg import SecAggBackend
from privagg.backends.secagg import _context as sa_ctx
from privagg.backends.secagg import client as sa_client
from privagg.backends.secagg import messages as sm
from privagg.backends.secagg.aggregator import SecAggAggregator
from privagg.hazmat import DeterministicRng
from tests.privagg.test_review_aborted_round import _assert_aborted
from tests.privagg.test_review_secagg_drop import _last, _Round

ADVERTISE = 0  # the stage whose replies are the advertisements


def test_the_commitment_is_bound_to_session_round_client_and_seed() -> None:
    cfg: Any = SimpleNamespace(params_id=bytes(32))
    other: Any = SimpleNamespace(params_id=bytes(31) + b"\x01")
    b = bytes(range(32))
    c = sa_ctx._seed_commitment(cfg, 1, "c00", b)
    assert len(c) == 32
    assert c == sa_ctx._seed_commitment(cfg, 1, "c00", b)
    assert c != sa_ctx._seed_commitment(cfg, 2, "c00", b)  # another round
    assert c != sa_ctx._seed_commitment(cfg, 1, "c01", b)  # another client
    assert c != sa_ctx._seed_commitment(other, 1, "c00", b)  # another session
    assert c != sa_ctx._seed_commitment(cfg, 1, "c00", b[:-1] + b"\x00")
    assert c != hashlib.sha256(b).digest()  # domain-separated


@pytest.mark.parametrize("active", [False, True])
def test_every_advertised_mask_key_is_shared_clamped_and_seed_committed(
    active: bool,
) -> None:
    """What the clients send: a commitment in every advertisement, and the mask key
    the aggregator reconstructs for a dropped client is in clamped form (it passes
    the v4 check; an honest round with a drop gives the exact sum)."""
    r = _Round(8, active)

    def tamper(s: int, replies: dict[str, bytes]) -> dict[str, bytes]:
        if s == ADVERTISE:
            for d in replies.values():
                m = sm.AdvertiseMessage.from_bytes(d)
                assert len(m.b_commit) == 32
        if s == 2:  # the masked-input stage: c03 drops
            del replies["c03"]
        return replies

    res = r.run(tamper)
    r.assert_exact(res)
    assert "c03" not in res.contributors
    assert r.agg.rejection_reasons == {}


@pytest.mark.parametrize("active", [False, True])
def test_a_client_committing_to_another_seed_aborts_the_round(
    active: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decision (documented in docs/backends/secagg.md): a survivor whose shares agree
    on a seed that does not match its own commitment cannot have its self-mask
    removed with a verified seed. Its masked input is already in the sum, so it cannot
    be excluded either: the round aborts (ProtocolError naming the owner), never a
    wrong sum. In the active variant the commitment is signed, so the owner is
    accountable."""
    real = sa_ctx._seed_commitment

    def lying(cfg: Any, round_id: int, cid: str, b: bytes) -> bytes:
        c = real(cfg, round_id, cid, b)
        return bytes([c[0] ^ 1]) + c[1:] if cid == "c02" else c

    monkeypatch.setattr(sa_client, "_seed_commitment", lying)
    r = _Round(8, active)
    with pytest.raises(ProtocolError, match="'c02''s self-mask seed"):
        r.run()
    assert r.stage == _last(active)  # only the last stage can tell
    assert isinstance(r.agg, SecAggAggregator)
    _assert_aborted(r.agg, ProtocolError)


def test_an_advertisement_replayed_from_another_round_is_refused() -> None:
    """c02's round-1 advertisement replayed in round 2 of the same session: the
    envelope's round id does not match, so the reply is ignored (c02 is a stage-0
    dropout) and the round completes without it."""
    s1 = _Round(8, False, round_id=1)
    old = s1.honest()["c02"]
    r = _Round(8, False, session=s1.session, round_id=2)

    def tamper(s: int, replies: dict[str, bytes]) -> dict[str, bytes]:
        if s == ADVERTISE:
            replies["c02"] = old
        return replies

    res = r.run(tamper, quiet_refusals=True)
    r.assert_exact(res)
    assert "c02" not in res.contributors and "c02" in r.agg.rejected


def test_a_commitment_replayed_from_another_round_does_not_verify() -> None:
    """Passive variant (nothing signed): the server, or a relay, puts c02's round-1
    commitment into its round-2 advertisement, with the round-2 header. The
    commitment is bound to the round, so it is not c02's round-2 commitment: c02
    itself refuses the relayed key set at stage 1 (it misstates its own keys), and
    were it not relayed back to c02, the aggregator's check of c02's seed would fail
    at the last stage (abort) rather than accept an unverified seed."""
    s1 = _Round(8, False, round_id=1)
    old = sm.AdvertiseMessage.from_bytes(s1.honest()["c02"])
    r = _Round(8, False, session=s1.session, round_id=2)

    def tamper(s: int, replies: dict[str, bytes]) -> dict[str, bytes]:
        if s == ADVERTISE:
            m = sm.AdvertiseMessage.from_bytes(replies["c02"])
            replies["c02"] = sm.AdvertiseMessage(
                m.params_id, 2, "c02", m.c_pk, m.s_pk, m.signature, old.b_commit
            ).to_bytes()
        return replies

    with pytest.raises(ProtocolError, match="'c02': the relayed key set misstates"):
        r.run(tamper)
    assert r.stage == 1


def test_in_the_active_variant_a_changed_commitment_drops_the_client() -> None:
    """The commitment is signed with the keys: an advertisement whose commitment was
    changed fails its signature and the client is dropped at stage 0 ("invalid
    keys"); the round completes without it."""
    r = _Round(8, True)

    def tamper(s: int, replies: dict[str, bytes]) -> dict[str, bytes]:
        if s == ADVERTISE:
            m = sm.AdvertiseMessage.from_bytes(replies["c02"])
            replies["c02"] = sm.AdvertiseMessage(
                m.params_id, m.round_id, "c02", m.c_pk, m.s_pk, m.signature, bytes(32)
            ).to_bytes()
        return replies

    res = r.run(tamper, quiet_refusals=True)
    r.assert_exact(res)
    assert r.agg.rejection_reasons.get("c02") == "invalid keys"


def test_clamp_is_the_rfc7748_clamping() -> None:
    k = clamp_x25519(b"\xff" * 32)
    assert k[0] == 0xF8 and k[31] == 0x7F and k[1:31] == b"\xff" * 30
    k = clamp_x25519(bytes(32))
    assert k[0] == 0 and k[31] == 0x40
    assert clamp_x25519(k) == k


@pytest.mark.parametrize("old", [b"secagg/v3", b"secagg/v4"])
def test_an_older_peer_is_another_session(
    monkeypatch: pytest.MonkeyPatch, old: bytes
) -> None:
    """The wire format changed (v4: the commitment in the advertisement; v5: committed
    share records): the params_id tag is ``secagg/v5``, so a v3 or v4 peer's requests
    are refused before decoding, both ways."""
    layout = Layout.from_arrays({"w": np.zeros(8)})
    sessions = {}
    real = _masking.fingerprint
    for version in (b"secagg/v5", old):
        monkeypatch.setattr(
            _masking,
            "fingerprint",
            lambda tag, *rest, v=version: real(
                v if tag == b"secagg/v5" else tag, *rest
            ),
        )
        sessions[version] = SecAggBackend().setup(
            layout, max_clients=3, rng=DeterministicRng(1)
        )
    monkeypatch.undo()
    new, older = sessions[b"secagg/v5"], sessions[old]
    assert older.params_id != new.params_id
    assert (
        SecAggBackend().setup(layout, max_clients=3, rng=DeterministicRng(1)).params_id
        == new.params_id
    )
    request = older.aggregator(0, ["a", "b", "c"]).start()["a"]
    with pytest.raises(ParameterMismatchError):
        new.client("a", 0, np.zeros(8)).handle(request)
    request = new.aggregator(0, ["a", "b", "c"]).start()["a"]
    with pytest.raises(ParameterMismatchError):
        older.client("a", 0, np.zeros(8)).handle(request)
