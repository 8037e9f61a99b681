"""Review r6 (outside reviewer) of SecAgg+ v4: the self-mask seed commitment, the
clamped mask-key check and ``_shamir.decode`` on crafted input. Each attack is a test:
a passing test asserts the refusal."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from privagg import ConfigurationError, Layout, ProtocolError
from privagg._rng import SystemRng
from privagg.backends import _shamir
from privagg.backends._primitives import clamp_x25519, x25519_key, x25519_public
from privagg.backends.secagg import SecAggBackend
from privagg.backends.secagg import _context as sa_ctx
from privagg.backends.secagg import messages as sm
from privagg.backends.secagg.aggregator import mask_key_check
from privagg.errors import DeserializationError
from privagg.hazmat import DeterministicRng
from tests.privagg.test_review_secagg_drop import _last, _Round


def _adv(b_commit: bytes) -> sm.AdvertiseMessage:
    return sm.AdvertiseMessage(bytes(32), 1, "c00", bytes(32), bytes(32), b"", b_commit)


def test_commitment_domain_differs_from_every_other_secagg_label() -> None:
    """Privacy: the commitment hash of b is domain-separated ("self-mask-commitment")
    and is not a prefix-collision with the key/mask/share labels, so it cannot be
    confused with another hash of b or s_sk; distinct seeds give distinct
    commitments (no oracle beyond equality on a 256-bit random seed)."""
    cfg: Any = SimpleNamespace(params_id=bytes(32))
    b1, b2 = os.urandom(32), os.urandom(32)
    assert sa_ctx._seed_commitment(cfg, 1, "c00", b1) != sa_ctx._seed_commitment(
        cfg, 1, "c00", b2
    )
    for label in (b"keys", b"survivors", b"partners", b"share-key", b"mask"):
        assert not b"self-mask-commitment".startswith(label + b"\x00")
        assert not label.startswith(b"self-mask-commitment")


@pytest.mark.parametrize("n", [0, 31, 33])
def test_advertisement_with_wrong_length_commitment_is_a_typed_error(n: int) -> None:
    """Crafted bytes: a b_commit of the wrong length never parses (typed error)."""
    raw = _adv(bytes(n)).to_bytes()
    with pytest.raises(DeserializationError):
        sm.AdvertiseMessage.from_bytes(raw)


def test_advertisement_round_trips_its_commitment() -> None:
    c = os.urandom(32)
    assert sm.AdvertiseMessage.from_bytes(_adv(c).to_bytes()).b_commit == c


def test_mask_key_check_accepts_only_the_clamped_key() -> None:
    """Integrity: keys equal up to clamping share the public key, only the clamped
    one passes; an all-zero key, and a key of another public key, are refused."""
    sk = clamp_x25519(os.urandom(32))
    pk = x25519_public(x25519_key(sk))
    check = mask_key_check(pk)
    assert check(sk)
    unclamped = bytes([sk[0] | 1]) + sk[1:31] + bytes([sk[31] | 128])
    assert x25519_public(x25519_key(unclamped)) == pk
    assert not check(unclamped)
    assert not check(bytes(32))
    assert not check(clamp_x25519(os.urandom(32)))


def test_mask_key_check_against_a_small_order_public_key_refuses_every_key() -> None:
    """A client advertising the all-zero (small-order) public key: no clamped key
    reconstructs to it, so nothing is accepted for it."""
    check = mask_key_check(bytes(32))
    assert not check(clamp_x25519(os.urandom(32)))
    assert not check(clamp_x25519(bytes(32)))


def _points(secret: bytes, n: int, t: int) -> dict[int, int]:
    return _shamir.share(secret, list(range(1, n + 1)), t, DeterministicRng(6))


def test_decode_after_erasures_below_threshold_refuses() -> None:
    """Erasing a liar's shares can leave fewer than t: decode refuses (typed), never
    a secret."""
    pts = _points(bytes(range(32)), 5, 4)
    left = {x: y for x, y in pts.items() if x not in (1, 2)}
    with pytest.raises(ConfigurationError):
        _shamir.decode(left, 4)


@pytest.mark.parametrize("bad", [{0: 1}, {_shamir.PRIME: 1}, {-1: 1}])
def test_decode_refuses_invalid_x(bad: dict[int, int]) -> None:
    pts = _points(bytes(range(32)), 5, 3)
    pts.pop(1)
    pts.update(bad)
    with pytest.raises(ConfigurationError):
        _shamir.decode(pts, 3)


def test_decode_refuses_non_field_y() -> None:
    pts = _points(bytes(range(32)), 5, 3)
    pts[1] = _shamir.PRIME
    with pytest.raises(ConfigurationError):
        _shamir.decode(pts, 3)


def test_decode_with_a_check_never_returns_a_failing_secret() -> None:
    """Too many wrong shares with a seed-commitment-style check: None, never a
    secret the check refuses."""
    secret = bytes(range(32))
    pts = _points(secret, 7, 3)
    for x in (1, 2, 3, 4):
        pts[x] = (pts[x] + 1) % _shamir.PRIME
    assert _shamir.decode(pts, 3, check=lambda s: s == secret) is None
    assert _shamir.decode(_points(secret, 7, 3), 3, check=lambda s: s == secret) == (
        secret,
        frozenset(),
    )


def test_passive_relay_swapping_two_commitments_is_refused() -> None:
    """Passive variant (nothing signed): the relay swaps c02's and c03's commitments
    in their advertisements. Each commitment names its owner, so neither verifies the
    other's seed; the first of them to see the relayed set refuses it (misstated own
    keys) at stage 1, before any masked input is sent."""
    r = _Round(8, False)

    def tamper(s: int, replies: dict[str, bytes]) -> dict[str, bytes]:
        if s == 0:
            a = sm.AdvertiseMessage.from_bytes(replies["c02"])
            b = sm.AdvertiseMessage.from_bytes(replies["c03"])
            for m, other in ((a, b), (b, a)):
                replies[m.party] = sm.AdvertiseMessage(
                    m.params_id,
                    m.round_id,
                    m.party,
                    m.c_pk,
                    m.s_pk,
                    b"",
                    other.b_commit,
                ).to_bytes()
        return replies

    with pytest.raises(ProtocolError, match="the relayed key set misstates"):
        r.run(tamper)
    assert r.stage == 1


def test_the_self_mask_seed_comes_from_the_system_csprng_by_default() -> None:
    """Privacy of the commitment rests on b being 32 uniformly random bytes: without
    an explicit rng the client draws its secrets from the system CSPRNG, and the
    commitment it advertises is 32 bytes and differs between two sessions' clients
    with the same id, round and update."""
    commits = []
    for _ in range(2):
        s = SecAggBackend().setup(Layout.from_arrays({"w": np.zeros(4)}), max_clients=3)
        clients = {c: s.client(c, 1, np.zeros(4)) for c in ("c0", "c1", "c2")}
        assert isinstance(clients["c0"]._rng, SystemRng)
        req = s.aggregator(1, sorted(clients)).start()
        adv = sm.AdvertiseMessage.from_bytes(clients["c0"].handle(req["c0"]))
        assert len(adv.b_commit) == 32
        commits.append(adv.b_commit)
    assert commits[0] != commits[1]


def test_active_server_telling_one_client_a_survivor_dropped_is_refused() -> None:
    """The classic SecAgg+ attack (active variant): after c03's masked input is in,
    the server tells c00 that c03 dropped (U3 without c03 and its signature) to get
    c03's mask key from c00 while the others reveal c03's seed. The survivors'
    signatures are over the real U3, so c00 refuses and reveals nothing."""
    r = _Round(8, True)
    while r.stage < _last(True):
        r.step(r.honest())
    m = sm.UnmaskRequest.from_bytes(r.requests["c00"])
    forged = sm.UnmaskRequest(
        m.params_id,
        m.round_id,
        m.party,
        tuple(c for c in m.survivors if c != "c03"),
        tuple(s for s in m.signatures if s[0] != "c03"),
        tuple(a for a in m.attestations if a[0] != "c03"),
    ).to_bytes()
    assert "c03" in m.survivors
    with pytest.raises(ProtocolError, match="survivor set differs"):
        r.clients["c00"].handle(forged)
