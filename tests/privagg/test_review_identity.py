"""Outside review r2 of :mod:`privagg.identity` (issue #14): crafted keys, ids and bytes.

* Found and fixed: the directory accepted any 32 bytes as an Ed25519 public key. The
  ``cryptography`` Ed25519 (OpenSSL) accepts small-order and non-canonically encoded
  public keys, and under the identity point the signature ``(R = identity, S = 0)``
  verifies on *every* message: a client registering such a key hands its signatures
  to anyone (the server), and one point could be listed twice under distinct bytes.
  The directory (and each public record) now refuses non-canonical, off-curve and
  small-order keys.
* Refused already (regression tests): confusable or odd party ids, non-canonical JSON
  variants, another party's key under one's own id, secrets in reprs and errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import privagg
from privagg.backends._primitives import ed25519_public, ed25519_verify, new_ed25519
from privagg.cli import cli
from privagg.hazmat import DeterministicRng
from privagg.identity import (
    IDENTITY_PUBLIC_FORMAT,
    IdentityDirectory,
    identity_fingerprint,
    load_identity_key,
    parse_public_record,
)
from privagg.keys import read_secret_file

_P = 2**255 - 19
_C8 = "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"


def _le(n: int) -> bytes:
    return n.to_bytes(32, "little")


def _real_keys(n: int, seed: int = 3) -> list[bytes]:
    rng = DeterministicRng(bytes([seed]) * 32)
    return [ed25519_public(new_ed25519(rng)) for _ in range(n)]


#: (name, 32 bytes): every key a directory must refuse.
WEAK_KEYS = [
    ("identity (order 1)", _le(1)),
    ("identity with the sign bit", _le(1 | 1 << 255)),
    ("identity as p + 1 (non-canonical)", _le(_P + 1)),
    ("order 2 (y = -1)", _le(_P - 1)),
    ("order 4 (y = 0)", _le(0)),
    ("order 4 (y = 0, sign bit)", _le(1 << 255)),
    ("order 4 as p (non-canonical)", _le(_P)),
    ("order 8", bytes.fromhex(_C8)),
    ("order 8, negated y", _le(_P - int.from_bytes(bytes.fromhex(_C8), "little"))),
    ("order 8, sign bit", _le(int.from_bytes(bytes.fromhex(_C8), "little") | 1 << 255)),
    ("y = 2**255 - 1 (non-canonical)", b"\xff" * 31 + b"\x7f"),
    ("off the curve (y = 2)", _le(2)),
]


def test_the_primitive_accepts_a_universal_forgery_under_the_identity_point() -> None:
    """Why the directory must check keys: the library's verify does not."""
    forged = _le(1) + bytes(32)  # R = identity, S = 0
    for msg in (b"survivor set", b"any message at all"):
        assert ed25519_verify(_le(1), forged, msg)
        assert ed25519_verify(_le(_P + 1), forged, msg)  # the same point, other bytes
    assert not ed25519_verify(_real_keys(1)[0], forged, b"survivor set")


@pytest.mark.parametrize(
    "key", [k for _, k in WEAK_KEYS], ids=[n for n, _ in WEAK_KEYS]
)
def test_directory_refuses_weak_public_keys(key: bytes) -> None:
    real = _real_keys(2)
    with pytest.raises(privagg.ConfigurationError, match="Ed25519 public key"):
        IdentityDirectory(bytes(32), {"honest": real[0], "mallory": key})
    # the same key in a file that is otherwise canonical (written by hand)
    good = IdentityDirectory(bytes(32), {"honest": real[0], "mallory": real[1]})
    crafted = good.to_bytes().replace(real[1].hex().encode(), key.hex().encode())
    with pytest.raises(privagg.DeserializationError):
        IdentityDirectory.from_bytes(crafted)
    # and as a client's public record handed to the operator
    record = {
        "format": IDENTITY_PUBLIC_FORMAT,
        "party_id": "mallory",
        "ed25519_public_key": key.hex(),
        "fingerprint": identity_fingerprint(key).hex(),
    }
    with pytest.raises(privagg.ConfigurationError):
        parse_public_record(json.dumps(record))
    with pytest.raises(privagg.ConfigurationError):
        IdentityDirectory.build([record])


def test_one_point_cannot_be_listed_twice_under_two_encodings() -> None:
    """The identity point as 01 00.. and as p + 1: distinct bytes, one point."""
    with pytest.raises(privagg.ConfigurationError, match="Ed25519 public key"):
        IdentityDirectory(bytes(32), {"a": _le(1), "b": _le(_P + 1)})


def test_every_real_key_is_accepted() -> None:
    keys = _real_keys(300, seed=9)
    d = IdentityDirectory(bytes(32), {f"p{i}": k for i, k in enumerate(keys)})
    assert IdentityDirectory.from_bytes(d.to_bytes(), pinned=d.fingerprint) == d


@pytest.mark.parametrize(
    "party",
    [
        "\u0441lient-0",  # Cyrillic es: looks like client-0
        "\uff43lient-0",  # fullwidth c
        "client\u200b-0",  # zero-width space
        "client-0\n",
        "client-0 ",
        " client-0",
        "client-\u0660",  # Arabic-Indic zero (a str.isdigit digit)
        "K\u212a",  # Kelvin sign (case-folds to k)
        "",
        "-client",
        ".client",
        "client/0",
        'client"0',
        "c" * 65,
    ],
)
def test_confusable_or_odd_party_ids_are_refused(party: str) -> None:
    key, other = _real_keys(2)
    with pytest.raises(privagg.ConfigurationError, match="party id"):
        IdentityDirectory(bytes(32), {party: key})
    good = IdentityDirectory(bytes(32), {"client-0": key, "zz": other})
    escaped = json.dumps(party)[1:-1]  # as a JSON string body
    for body in (escaped, party):
        crafted = good.to_bytes().replace(b'"client-0"', f'"{body}"'.encode())
        with pytest.raises(privagg.DeserializationError):
            IdentityDirectory.from_bytes(crafted)


def test_non_canonical_variants_of_a_directory_are_refused() -> None:
    keys = _real_keys(3)
    d = IdentityDirectory(
        bytes(range(32)), {f"client-{i}": k for i, k in enumerate(keys)}
    )
    data = d.to_bytes()
    assert IdentityDirectory.from_bytes(data, pinned=d.fingerprint.hex().upper()) == d
    lines = data.split(b"\n")
    variants = {
        "upper-case key hex": data.replace(
            keys[0].hex().encode(), keys[0].hex().upper().encode()
        ),
        "escaped id char": data.replace(b'"client-0"', b'"\\u0063lient-0"'),
        "CRLF": data.replace(b"\n", b"\r\n"),
        "BOM": b"\xef\xbb\xbf" + data,
        "extra newline": data + b"\n",
        "no final newline": data[:-1],
        "tab indent": data.replace(b"  ", b"\t"),
        "parties reordered": b"\n".join(
            [*lines[:4], lines[5], lines[4].rstrip(b",") + b",", *lines[6:]]
        ),
        "duplicate nonce key": data.replace(
            b'  "nonce"', b'  "nonce": "' + b"00" * 32 + b'",\n  "nonce"'
        ),
        "extra field": data.replace(b'  "parties"', b'  "x": 1,\n  "parties"'),
        "nonce upper-case": data.replace(
            bytes(range(32)).hex().encode(), bytes(range(32)).hex().upper().encode()
        ),
        "UTF-16": data.decode().encode("utf-16"),
    }
    for name, bad in variants.items():
        assert bad != data, name
        with pytest.raises(privagg.DeserializationError):
            IdentityDirectory.from_bytes(bad, pinned=d.fingerprint)


def test_a_client_cannot_register_another_partys_key() -> None:
    """Mallory copies the victim's public record under her own id (she cannot sign
    with it, but her entry would alias the victim's): the operator's build refuses."""
    victim, mine = _real_keys(2)

    def record(party: str, key: bytes) -> dict[str, str]:
        return {
            "format": IDENTITY_PUBLIC_FORMAT,
            "party_id": party,
            "ed25519_public_key": key.hex(),
            "fingerprint": identity_fingerprint(key).hex(),
        }

    with pytest.raises(privagg.ConfigurationError, match="share one identity key"):
        IdentityDirectory.build([record("victim", victim), record("mallory", victim)])
    with pytest.raises(privagg.ConfigurationError, match="twice"):
        IdentityDirectory.build([record("victim", victim), record("victim", mine)])
    wrong_fp = record("mallory", mine) | {
        "fingerprint": identity_fingerprint(victim).hex()
    }
    with pytest.raises(privagg.ConfigurationError, match="does not match"):
        IdentityDirectory.build([wrong_fp])


def test_identity_secrets_stay_out_of_reprs_files_and_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    password = "correct horse battery staple"
    monkeypatch.setenv("R2_PW", password)
    res = CliRunner().invoke(
        cli,
        [
            "keygen",
            "--backend",
            "secagg",
            "--party-id",
            "p",
            str(tmp_path),
            "--password-env",
            "R2_PW",
        ],
    )
    assert res.exit_code == 0, res.output
    key_file = tmp_path / "secagg-identity-p.key"
    pub_file = tmp_path / "secagg-identity-p.pub"
    assert key_file.stat().st_mode & 0o777 == 0o600
    secret = load_identity_key(
        read_secret_file(key_file), protection=privagg.PasswordProtection(password)
    )
    raw = secret.reveal()
    for text in (res.output, repr(secret), str(secret), pub_file.read_text()):
        assert raw.hex() not in text and password not in text
    assert raw not in key_file.read_bytes()  # encrypted at rest
    assert password not in repr(privagg.PasswordProtection(password))
    with pytest.raises(privagg.PrivaggError) as info:
        load_identity_key(
            read_secret_file(key_file), protection=privagg.PasswordProtection("wrong")
        )
    assert password not in str(info.value) and "wrong" not in str(info.value)
    pid, pub = parse_public_record(pub_file.read_bytes())
    assert pid == "p" and pub == ed25519_public(raw)
