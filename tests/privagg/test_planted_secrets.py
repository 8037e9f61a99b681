"""Planted secrets never leak: keys, seeds and plaintext updates stay out of logs,
reprs, exception messages and chains, and captured output, on honest and failing runs.

Every backend runs honest rounds and rounds in which one message per stage is corrupted
(so that error paths run); everything a user or an operator could see is collected and
scanned for the planted patterns in raw, hex, base64 and decimal form.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import traceback
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from privagg.envelope import Header, open_envelope, seal
from privagg.errors import PrivaggError
from privagg.keys import NoProtection, SecretBytes, SecretKey
from tests.hardening_counts import count
from tests.privagg.test_fuzz_protocols import BACKENDS, N_CLIENTS, SIZE, _session

pytestmark = pytest.mark.slow

# Distinctive plaintext values: their decimal expansions are looked for in every output.
PLANTED = np.array([0.6180339887498949, -0.4142135623730951, 0.7320508075688772])


def _updates() -> dict[str, np.ndarray]:
    out = {}
    for i in range(N_CLIENTS):
        v = np.resize(PLANTED, SIZE) * (1.0 - 0.01 * i)
        out[f"c{i}"] = v
    return out


def _patterns(secret: bytes) -> Iterator[bytes]:
    if len(secret) < 8:
        return
    head = secret[:16]
    yield head
    yield head.hex().encode()
    yield base64.b64encode(secret).rstrip(b"=")[:20]
    if len(secret) <= 512:
        yield str(int.from_bytes(secret, "big")).encode()[:24]


def _secret_bytes(obj: Any) -> list[bytes]:
    if isinstance(obj, SecretBytes):
        return [obj.reveal()]
    if isinstance(obj, SecretKey):
        try:
            return [obj.to_bytes(protection=NoProtection())[-32:]]
        except PrivaggError:
            m = obj.unsafe_material()
            return [bytes(m)] if isinstance(m, (bytes, bytearray)) else []
    return []


def _exception_text(exc: BaseException) -> str:
    parts = ["".join(traceback.format_exception(exc))]
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        parts += [str(e), repr(e), repr(e.args)]
        e = e.__cause__ or e.__context__
    return "\n".join(parts)


def _corrupt(data: bytes) -> bytes:
    """Re-seal with the last payload byte flipped (the payload parser sees it)."""
    try:
        h, payload = open_envelope(data)
    except PrivaggError:
        return data[:-1]
    p = bytearray(payload)
    if p:
        p[-1] ^= 0x5A
    return seal(Header(h.scheme, h.kind, h.params_id, h.round_id), bytes(p))


def _run(
    session: Any, corrupt_stage: int | None, texts: list[str], planted: list[bytes]
) -> None:
    ups = _updates()
    rid = session.next_round_id()
    parties: dict[str, Any] = {}
    for cid, v in ups.items():
        parties[cid] = session.client(cid, rid, v)
        texts.append(repr(parties[cid]))

    # Per-round client secrets (ephemeral keys, self-mask seeds), once they exist:
    # role attributes and the fields of the per-stage state objects they hold.
    def collect(obj: Any, depth: int) -> None:
        planted.extend(_secret_bytes(obj))
        if depth and dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            for f in dataclasses.fields(obj):
                collect(getattr(obj, f.name), depth - 1)

    def harvest() -> None:
        for party in parties.values():
            for v in list(getattr(party, "__dict__", {}).values()):
                collect(v, 3)

    parties.update(session.servers(rid))
    agg = session.aggregator(rid, sorted(ups))
    texts.append(repr(agg))
    try:
        out = agg.start()
        stage = 0
        while not agg.done:
            replies = {}
            for pid, req in out.items():
                try:
                    rep = parties[pid].handle(req)
                except PrivaggError as exc:
                    texts.append(_exception_text(exc))
                    continue
                if stage == corrupt_stage and pid == "c1":
                    rep = _corrupt(rep)
                replies[pid] = rep
            harvest()
            out = agg.receive(replies)
            stage += 1
        rec = session.holder().recover(agg.result())
        texts.append(repr(rec))
    except PrivaggError as exc:
        texts.append(_exception_text(exc))


@pytest.mark.parametrize("name", list(BACKENDS))
def test_planted_secrets_never_leak(
    name: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    session = _session(name)
    texts: list[str] = [repr(session), str(session)]
    secrets: list[bytes] = []
    for stage in (None, 0, 1, 2, 3, 4):
        _run(session, stage, texts, secrets)
    for obj in (session, session.holder()):
        try:
            import pickle

            pickle.dumps(obj)
        except Exception as exc:
            texts.append(_exception_text(exc))
    captured = capsys.readouterr()
    blob = "\n".join([*texts, caplog.text, captured.out, captured.err]).encode()

    # Plaintext updates: decimal expansions and raw float64 bytes.
    plain_leaks = [v for v in PLANTED if repr(float(v))[:10].encode() in blob]
    raw_leak = np.resize(PLANTED, SIZE).tobytes()[:16] in blob
    count("secrets", f"{name}: plaintext values", planted=len(PLANTED) + 1)
    count("secrets", f"{name}: plaintext values", leaked=len(plain_leaks) + raw_leak)
    for v in PLANTED:
        assert repr(float(v))[:10].encode() not in blob, f"plaintext {v} leaked"
    assert not raw_leak
    # Keys and seeds the session holds (plus the clients' per-round ones, above).
    for attr in ("identity_keys", "secret_keys"):
        fn = getattr(session, attr, None)
        if callable(fn):
            for s in fn():
                secrets += _secret_bytes(s)
    holder = session.holder()
    codec = getattr(holder, "codec", None)
    sk = getattr(codec, "secret_key", None)
    if sk is not None:
        secrets += _secret_bytes(sk)
    keys = getattr(session, "ckks_keys", None)
    if keys is not None:
        secrets += _secret_bytes(keys.secret_key)
    leaked = [s for s in secrets if any(p in blob for p in _patterns(s))]
    count(
        "secrets", f"{name}: keys and seeds", planted=len(secrets), leaked=len(leaked)
    )
    for secret in secrets:
        for pat in _patterns(secret):
            assert pat not in blob, f"{name}: a planted secret leaked"
    if name.startswith(("secagg", "additive", "paillier", "ckks")):
        assert secrets, f"{name}: the test found no secret to plant"
