"""The aggregator encodes the fields every recipient of a stage shares once (issue #16,
item 5: throughput); the bytes must be those of encoding each message whole.

``tests/privagg/test_masking_vectors.py`` pins whole rounds' bytes; these tests check the
shared-body helpers directly, over party ids of several lengths and scripts, and every
request of a real round (with dropouts) against its re-encoding.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

from privagg import Layout, run_round
from privagg.backends._primitives import (
    ed25519_key,
    ed25519_public,
    ed25519_sign,
    ed25519_verify,
)
from privagg.backends.secagg import SecAggBackend
from privagg.backends.secagg import messages as sa_msg
from privagg.envelope import from_bytes

PARAMS = bytes(range(32))
PARTIES = ["c0", "client-000017", "é-ü-ß", "x" * 300, "客户端"]


def _adv(party: str) -> sa_msg.AdvertiseMessage:
    return sa_msg.AdvertiseMessage(
        PARAMS, 7, party, os.urandom(32), os.urandom(32), os.urandom(64), os.urandom(32)
    )


@pytest.mark.parametrize(
    ("cls", "fields"),
    [
        (
            sa_msg.SetupRequest,
            {"participants": tuple(PARTIES), "degree": 4, "threshold": 3},
        ),
        (sa_msg.ShareKeysRequest, {"keys": tuple(_adv(p) for p in PARTIES)}),
        (sa_msg.ShareKeysRequest, {"keys": ()}),
        (sa_msg.ConsistencyRequest, {"survivors": tuple(PARTIES[:3])}),
    ],
)
def test_seal_body_is_to_bytes(cls: Any, fields: dict[str, Any]) -> None:
    body = cls(PARAMS, 7, "", **fields).body()
    for party in PARTIES:
        want = cls(PARAMS, 7, party, **fields).to_bytes()
        assert cls.seal_body(PARAMS, 7, party, body) == want
        assert cls.from_bytes(want).party == party


def test_unmask_requests_for_recipients_are_to_bytes() -> None:
    survivors = tuple(PARTIES)
    sigs = tuple((p, os.urandom(64)) for p in PARTIES)
    att = {
        PARTIES[0]: (),
        PARTIES[1]: ((PARTIES[2], (), os.urandom(64)),),
        PARTIES[2]: (
            (PARTIES[0], (PARTIES[3], PARTIES[4]), os.urandom(64)),
            (PARTIES[4], (PARTIES[1],), os.urandom(64)),
        ),
    }
    for signatures in (sigs, ()):
        got = sa_msg.UnmaskRequest.for_recipients(PARAMS, 9, survivors, signatures, att)
        assert set(got) == set(att)
        for cid, a in att.items():
            want = sa_msg.UnmaskRequest(
                PARAMS, 9, cid, survivors, signatures, a
            ).to_bytes()
            assert got[cid] == want


@pytest.mark.parametrize("active", [True, False])
def test_every_request_of_a_round_is_its_message_encoded_whole(active: bool) -> None:
    """Each request the aggregator sends (all stages, with a dropout) decodes to a
    message whose ``to_bytes`` is the request, byte for byte."""
    import privagg.backends.secagg.aggregator as agg_mod

    seen: list[bytes] = []
    original = agg_mod.SecAggAggregator.receive

    def spy(self: Any, replies: Any) -> dict[str, bytes]:
        out: dict[str, bytes] = original(self, replies)
        seen.extend(out.values())
        return out

    vecs = {f"c{i:02d}": np.linspace(-1, 1, 50) * (i + 1) / 20 for i in range(12)}
    session = SecAggBackend(active=active).setup(
        Layout.from_arrays({"w": np.zeros(50)}), max_clients=12
    )
    agg_mod.SecAggAggregator.receive = spy  # type: ignore[method-assign]
    try:
        res = run_round(
            session, {c: {"w": v} for c, v in vecs.items()}, dropouts={2: {"c03"}}
        )
    finally:
        agg_mod.SecAggAggregator.receive = original  # type: ignore[method-assign]
    assert "c03" in res.dropped
    kinds = set()
    for data in seen:
        msg = from_bytes(data)
        kinds.add(type(msg).__name__)
        assert msg.to_bytes() == data
    expected = {"ShareKeysRequest", "MaskRequest", "UnmaskRequest"}
    if active:
        expected.add("ConsistencyRequest")
    assert expected <= kinds


def test_signing_key_object_signs_as_the_key_bytes() -> None:
    sk = os.urandom(32)
    key = ed25519_key(sk)
    for msg in (b"", b"m" * 200):
        sig = ed25519_sign(key, msg)
        assert sig == ed25519_sign(sk, msg)  # Ed25519 is deterministic
        assert ed25519_verify(ed25519_public(sk), sig, msg)
