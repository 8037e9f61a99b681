"""Old and new formats refuse each other with typed errors (issue #16, item 5).

* The envelope is format 2 (BLAKE3 digest); format-1 bytes (BLAKE2b digest, as an older
  privagg wrote them, built here with ``hashlib`` directly) raise
  :class:`~privagg.errors.FormatVersionError`, a :class:`DeserializationError`, from
  every entry point: ``open_envelope``, ``from_bytes``, the roles' header checks.
* SecAgg+ v3 and additive v3 bind their mask PRG (AES-128-CTR under HKDF mask keys)
  into the params_id: a peer with another PRG is another session, refused with
  :class:`ParameterMismatchError` before anything is decoded.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import numpy as np
import pytest
from blake3 import blake3

import privagg
from privagg import Layout
from privagg.backends import _masking, _wire
from privagg.backends.additive import AdditiveBackend
from privagg.backends.secagg import SecAggBackend
from privagg.envelope import FORMAT_VERSION, Header, Scheme, open_envelope, seal
from privagg.errors import (
    DeserializationError,
    FormatVersionError,
    ParameterMismatchError,
)
from privagg.hazmat import DeterministicRng
from privagg.messages import RoundRequest

_HEAD = struct.Struct(">4sHBB32sQQ")


def _v1(
    scheme: int, kind: int, params_id: bytes, round_id: int, payload: bytes
) -> bytes:
    """A format-1 envelope exactly as privagg <= this change sealed it (BLAKE2b-128)."""
    head = _HEAD.pack(b"PVAG", 1, scheme, kind, params_id, round_id, len(payload))
    digest = hashlib.blake2b(head + payload, digest_size=16).digest()
    return head + payload + digest


def _as_v1(env: bytes) -> bytes:
    """The same message re-sealed in format 1."""
    _, _, scheme, kind, pid, rid, n = _HEAD.unpack_from(env, 0)
    return _v1(scheme, kind, pid, rid, env[_HEAD.size : _HEAD.size + n])


def test_format_is_2_with_a_blake3_digest() -> None:
    assert FORMAT_VERSION == 2 and privagg.FORMAT_VERSION == 2
    env = seal(Header(Scheme.CORE, 9, bytes(32), 5), b"payload")
    assert env[4:6] == b"\x00\x02"
    assert env[-16:] == blake3(env[:-16]).digest(16)
    header, payload = open_envelope(env)
    assert (header.version, bytes(payload)) == (2, b"payload")


def test_format_1_bytes_raise_a_typed_version_error() -> None:
    old = _v1(int(Scheme.CORE), 9, bytes(32), 5, b"payload")
    with pytest.raises(FormatVersionError) as ei:
        open_envelope(old)
    assert (ei.value.found, ei.value.supported) == (1, 2)
    assert isinstance(ei.value, DeserializationError)  # old handlers still catch it
    assert "format 1" in str(ei.value) and "format 2" in str(ei.value)
    with pytest.raises(FormatVersionError):
        _wire.peek_header(old)
    # a format-2 header over a format-1 (BLAKE2b) digest is corruption, not a version
    mixed = bytearray(old)
    mixed[4:6] = b"\x00\x02"
    mixed[-16:] = hashlib.blake2b(bytes(mixed[:-16]), digest_size=16).digest()
    with pytest.raises(DeserializationError) as e2:
        open_envelope(bytes(mixed))
    assert not isinstance(e2.value, FormatVersionError)


def test_from_bytes_refuses_an_old_plain_message() -> None:
    new = RoundRequest(Scheme.PLAIN, bytes(32), 3, "alice").to_bytes()
    assert privagg.from_bytes(new) == RoundRequest(Scheme.PLAIN, bytes(32), 3, "alice")
    with pytest.raises(FormatVersionError):
        RoundRequest.from_bytes(_as_v1(new))
    with pytest.raises(FormatVersionError):
        privagg.from_bytes(_as_v1(new))


@pytest.mark.parametrize("version", [0, 3, 0xFFFF])
def test_other_versions_are_refused_too(version: int) -> None:
    env = bytearray(seal(Header(Scheme.CORE, 1, bytes(32), 0), b"x"))
    env[4:6] = version.to_bytes(2, "big")
    env[-16:] = blake3(bytes(env[:-16])).digest(16)
    with pytest.raises(FormatVersionError):
        open_envelope(bytes(env))


def _secagg(active: bool = True) -> Any:
    return SecAggBackend(active=active).setup(
        Layout.from_arrays({"w": np.zeros(8)}),
        max_clients=3,
        rng=DeterministicRng(1),
        secret_rng=DeterministicRng(2),
    )


def _additive() -> Any:
    return AdditiveBackend(n_servers=2).setup(
        Layout.from_arrays({"w": np.zeros(8)}), max_clients=3, rng=DeterministicRng(3)
    )


@pytest.mark.parametrize("make", [_secagg, _additive], ids=["secagg", "additive"])
def test_a_format_1_request_is_refused_by_the_roles(make: Any) -> None:
    s = make()
    ids = ["a", "b", "c"]
    reqs = s.aggregator(0, ids).start()
    client = s.client("a", 0, np.zeros(8))
    with pytest.raises(FormatVersionError):
        client.handle(_as_v1(reqs["a"]))
    client.handle(reqs["a"])  # the format-2 request is still answered


@pytest.mark.parametrize("make", [_secagg, _additive], ids=["secagg", "additive"])
def test_another_mask_prg_is_another_session(
    make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The params_id binds the mask PRG: a peer still on the v2 PRG (AES-256-CTR of the
    seed) computes another params_id, and its messages are refused as another
    session's before they are decoded."""
    new = make()
    # both backends build their params_id in the ring-masking core (#14)
    monkeypatch.setattr(_masking, "MASK_PRG", b"aes-256-ctr")
    old = make()
    assert old.params_id != new.params_id
    ids = ["a", "b", "c"]
    req = old.aggregator(0, ids).start()["a"]
    with pytest.raises(ParameterMismatchError):
        new.client("a", 0, np.zeros(8)).handle(req)
