"""Review r7 (outside reviewer): crafted bytes on the SecAgg+ v4 message parsers that
changed (``AdvertiseMessage`` with ``b_commit``, ``ShareKeysRequest`` which now writes
each key set with ``AdvertiseMessage._write``, the unmask messages) and on the live
endpoints that read them.

Attacks: every truncation and every single-bit flip of each payload, re-sealed in a
valid envelope (so the digest does not hide the parser), random multi-byte mutations
(hypothesis), and the same bytes delivered to the aggregator (as a client's reply) and
to a client (as the aggregator's request). Only ``PrivaggError`` may escape; a mutated
payload that parses must be the canonical encoding of what it parses to (no two byte
strings for one message: re-encoding gives the same bytes). All refused.
"""

from __future__ import annotations

import random
from dataclasses import replace
from functools import cache
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import privagg
from privagg.backends._primitives import x25519_key, x25519_public
from privagg.backends.secagg import messages as sm
from privagg.envelope import open_envelope, seal
from tests.privagg.test_fuzz_parsers import mutate_bytes
from tests.privagg.test_review_secagg_drop import _Round

N = 5
_ACTIVE_REPLIES: list[type[Any]] = [
    sm.AdvertiseMessage,
    sm.SharesMessage,
    sm.MaskedInput,
    sm.SignatureMessage,  # active only
    sm.UnmaskShares,
]
_ACTIVE_REQUESTS: list[type[Any]] = [
    sm.SetupRequest,
    sm.ShareKeysRequest,
    sm.MaskRequest,
    sm.ConsistencyRequest,  # active only
    sm.UnmaskRequest,
]
# by stage, for each variant (the passive one has no signature stage)
REPLIES = {True: _ACTIVE_REPLIES, False: [*_ACTIVE_REPLIES[:3], _ACTIVE_REPLIES[4]]}
REQUESTS = {True: _ACTIVE_REQUESTS, False: [*_ACTIVE_REQUESTS[:3], _ACTIVE_REQUESTS[4]]}
CHANGED = (sm.AdvertiseMessage, sm.ShareKeysRequest, sm.UnmaskShares, sm.UnmaskRequest)


@cache
def _transcript(active: bool) -> tuple[list[dict[str, bytes]], list[dict[str, bytes]]]:
    """An honest round's requests and replies, by stage."""
    r = _Round(N, active)
    requests = []
    while not r.agg.done:
        requests.append(dict(r.requests))
        r.step(r.honest())
    return requests, r.got


def _corpus(cls: type[Any]) -> list[bytes]:
    out = []
    for active in (False, True):
        requests, replies = _transcript(active)
        for stage, kinds in enumerate(REQUESTS[active]):
            if kinds is cls:
                out += list(requests[stage].values())[:2]
        for stage, kinds in enumerate(REPLIES[active]):
            if kinds is cls:
                out += list(replies[stage].values())[:2]
    return out


def _parse_checked(cls: type[Any], data: bytes) -> None:
    """Parse ``data`` as ``cls``: a typed error, or the canonical encoding."""
    try:
        msg = cls.from_bytes(data)
    except privagg.PrivaggError:
        return
    assert msg.to_bytes() == data  # canonical: nothing ignored, nothing re-encoded


@pytest.mark.parametrize("cls", CHANGED, ids=lambda c: c.__name__)
def test_r7_every_truncation_of_a_resealed_payload_is_typed(cls: type[Any]) -> None:
    for data in _corpus(cls):
        header, payload = open_envelope(data)
        body = bytes(payload)
        assert cls.from_bytes(data).to_bytes() == data
        for cut in range(len(body)):
            with pytest.raises(privagg.PrivaggError):
                cls.from_bytes(seal(header, body[:cut]))
        with pytest.raises(privagg.PrivaggError):
            cls.from_bytes(seal(header, body + b"\x00"))  # trailing byte


@pytest.mark.parametrize(
    "cls", [sm.AdvertiseMessage, sm.UnmaskShares], ids=lambda c: c.__name__
)
def test_r7_every_bit_flip_of_a_resealed_payload_is_typed_or_canonical(
    cls: type[Any],
) -> None:
    data = _corpus(cls)[0]
    header, payload = open_envelope(data)
    body = bytearray(payload)
    for i in range(len(body)):
        for bit in range(8):
            body[i] ^= 1 << bit
            _parse_checked(cls, seal(header, bytes(body)))
            body[i] ^= 1 << bit


def test_r7_advertisement_length_fields_accept_only_32_byte_keys_and_commitment() -> (
    None
):
    """Refused: each of c_pk, s_pk and b_commit is exactly 32 bytes, the signature 0
    or 64; a payload with any of them 31 or 33 bytes long is refused (typed)."""
    base = sm.AdvertiseMessage.from_bytes(_corpus(sm.AdvertiseMessage)[0])
    for field in ("c_pk", "s_pk", "b_commit", "signature"):
        for n in (0, 31, 33, 63, 65):
            if field == "signature" and n == 0:
                continue
            bad = sm.AdvertiseMessage(
                **{
                    "params_id": base.params_id,
                    "round_id": base.round_id,
                    "party": base.party,
                    "c_pk": base.c_pk,
                    "s_pk": base.s_pk,
                    "signature": base.signature,
                    "b_commit": base.b_commit,
                    field: bytes(n),
                }
            ).to_bytes()
            with pytest.raises(privagg.DeserializationError):
                sm.AdvertiseMessage.from_bytes(bad)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), which=st.sampled_from(CHANGED))
def test_r7_random_mutations_of_changed_messages_are_typed(
    seed: int, which: type[Any]
) -> None:
    rnd = random.Random(seed)
    data = rnd.choice(_corpus(which))
    for _ in range(10):
        _parse_checked(which, mutate_bytes(rnd, data))


# -- the live endpoints -------------------------------------------------------------------
def _finish(r: _Round, replies: dict[str, bytes]) -> None:
    """Deliver ``replies`` and run the round honestly to its end: the exact sum of the
    contributors, or a typed error and no result; in the passive variant also a
    result the holder refuses as out of range (a mutated key made a pair of masks not
    cancel: see test_r7_passive_relay_substituting_a_neighbour_key_is_caught_by_the_holder)."""
    try:
        r.step(replies)
        while not r.agg.done:
            r.step(r.honest())
    except privagg.PrivaggError:
        assert not r.agg.done
        return
    try:
        res = r.session.holder().recover(r.agg.result())
    except privagg.EncodingOverflowError:
        assert not r.agg._cfg.active
        return
    r.assert_exact(res)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), active=st.booleans())
def test_r7_mutated_advertisement_at_the_aggregator_is_typed_and_exact(
    seed: int, active: bool
) -> None:
    """Refused: a client's stage-0 advertisement mutated (re-sealed or raw) reaches the
    aggregator: the round goes on without that client (or, if the bytes still parse as
    its advertisement, with it, and its neighbours or the commitment check refuse what
    does not match), ending in the exact sum of the contributors or a typed error."""
    rnd = random.Random(seed)
    r = _Round(N, active)
    replies = r.honest()
    replies["c01"] = mutate_bytes(rnd, replies["c01"])
    _finish(r, replies)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), active=st.booleans())
def test_r7_mutated_key_set_at_a_client_is_typed(seed: int, active: bool) -> None:
    """Refused: the stage-1 key set (every advertisement, each with its commitment)
    mutated on its way to one client: that client raises a typed error or answers;
    the round then ends in the exact sum of its contributors or a typed error."""
    rnd = random.Random(seed)
    r = _Round(N, active)
    r.step(r.honest())
    bad = mutate_bytes(rnd, r.requests["c02"])
    replies = {}
    for c, req in r.requests.items():
        try:
            replies[c] = r.clients[c].handle(bad if c == "c02" else req)
        except privagg.PrivaggError:
            assert c == "c02"
    _finish(r, replies)


def test_r7_passive_relay_substituting_a_neighbour_key_leaves_the_victim_out() -> None:
    """Found by the mutation test above (seed 338: bits of c03's ``s_pk`` flipped in
    the key set relayed to c02). Passive variant (LOW; semi-honest, nothing signed):
    under v4 a relay that changed one neighbour's mask key in ONE client's key set
    made that client's pairwise mask with it not cancel; no role saw it (the complete
    graph of 5 ignores the graph seed, and the share ciphertexts' AAD did not bind the
    key sets) and only the holder's range check refused the garbage sum. Since v5 the
    share keys bind the graph seed, which hashes every key set: c02 and its
    neighbours cannot read each other's shares, so they refuse each other, c02 is
    left out (it refuses to mask with fewer than t partners) and the others' sum is
    exact. Active variant: refused (the key's signature does not verify)."""
    for active in (False, True):
        r = _Round(N, active)
        r.step(r.honest())
        req = sm.ShareKeysRequest.from_bytes(r.requests["c02"])
        keys = tuple(
            replace(k, s_pk=x25519_public(x25519_key(bytes(range(32)))))
            if k.party == "c03"
            else k
            for k in req.keys
        )
        bad = replace(req, keys=keys).to_bytes()
        if active:
            with pytest.raises(privagg.ProtocolError, match="bad signature"):
                r.clients["c02"].handle(bad)
            continue
        replies = {
            c: r.clients[c].handle(bad if c == "c02" else q)
            for c, q in r.requests.items()
        }
        r.step(replies)
        with pytest.raises(privagg.InsufficientParticipantsError, match="'c02'"):
            r.clients["c02"].handle(r.requests["c02"])
        while not r.agg.done:
            r.step(r.honest(quiet_refusals=True))
        res = r.session.holder().recover(r.agg.result())
        r.assert_exact(res)
        assert set(res.contributors) == set(r.ups) - {"c02"}
        assert r.agg.rejection_reasons == {}  # c02 silent at stage 2: a dropout
