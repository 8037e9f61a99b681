"""Self-keyed directories are pinned by their fingerprint (issues #14/#16 review).

The additive (``OWN_KEYS``) public-key directory was not pinned: whoever handed a
process its directory file (a coordinator, a server operator) could substitute the
servers' or the holder's X25519 keys and read a client's shares. Now every role of an
``OWN_KEYS`` backend needs the directory's fingerprint, received out of band, compared
in constant time, and the fingerprint is bound into params_id -- as the identity
directory of active SecAgg+ (``DIRECTORY``) always was. Also: dataclasses that hold
secrets have no generated (field-wise, non-constant-time) ``__eq__``.
"""

from __future__ import annotations

import hmac
from typing import Any

import numpy as np
import pytest

import privagg
from privagg import DealtMaterial, OwnKey, Role
from privagg import _pin as pin_mod
from privagg.backends.additive import AdditiveBackend
from privagg.backends.additive import _material as mat
from privagg.distribution import (
    directory_fingerprint,
    key_holders,
    make_directory,
    own_key,
    session_for_role,
)
from privagg.envelope import Header, PayloadWriter, Scheme, seal
from privagg.keys import fingerprint

LAYOUT = privagg.Layout.from_arrays({"w": np.zeros(6)})
KW: dict[str, Any] = {"max_clients": 3}


def _world() -> tuple[AdditiveBackend, dict[str, OwnKey], bytes]:
    be = AdditiveBackend(bound=1.0, n_servers=3)
    keys = {p: own_key(be, r, p) for p, r in key_holders(be).items()}
    return be, keys, make_directory(be, [k.public for k in keys.values()])


def _party(keys: dict[str, OwnKey], role: str) -> tuple[str | None, bytes | None]:
    """The party id and own secret blob (key holders only) of ``role``'s genuine
    process."""
    pid = {"client": "client-0", "aggregator": None, "server": "server-1"}.get(
        role, "holder"
    )
    return pid, keys[pid].secret if role in ("server", "holder") and pid else None


def _load(
    be: AdditiveBackend,
    keys: dict[str, OwnKey],
    role: str,
    directory: bytes,
    pinned: Any,
) -> Any:
    """Load ``role`` from ``directory`` as its genuine party would."""
    pid, secret = _party(keys, role)
    return session_for_role(
        be,
        LAYOUT,
        role,
        party_id=pid,
        material=directory,
        secret=secret,
        pinned=pinned,
        **KW,
    )


def _substituted(
    be: AdditiveBackend, keys: dict[str, OwnKey], party: str
) -> tuple[bytes, OwnKey]:
    """A directory in which ``party``'s public key is the attacker's own."""
    evil = own_key(be, key_holders(be)[party], party)
    pubs = [evil.public if p == party else k.public for p, k in keys.items()]
    return make_directory(be, pubs), evil


ROLES = ["client", "aggregator", "server", "holder"]


def test_fingerprint_is_sha256_of_the_canonical_file() -> None:
    be, keys, directory = _world()
    fp = directory_fingerprint(directory)
    assert len(fp) == 32
    assert fp == fingerprint(b"privagg/own-keys-directory/v1", directory)
    # one set of keys, one file, one fingerprint (the order the operator got them in
    # does not matter)
    again = make_directory(be, [k.public for k in reversed(keys.values())])
    assert directory_fingerprint(again) == fp


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("victim", ["server-1", "server-2", "holder"])
def test_a_substituted_key_is_refused_by_every_role(role: str, victim: str) -> None:
    """The genuine pin, a directory with the attacker's key for a server or the holder:
    every role refuses before it would use any key (ParameterMismatchError)."""
    be, keys, genuine = _world()
    pin = directory_fingerprint(genuine)
    fake, _ = _substituted(be, keys, victim)
    with pytest.raises(privagg.ParameterMismatchError, match="pinned"):
        _load(be, keys, role, fake, pin)
    # the backend's own hook refuses too (a caller that skips session_for_role)
    pid, secret = _party(keys, role)
    with pytest.raises(privagg.ParameterMismatchError, match="pinned"):
        be.load_role(LAYOUT, role, pid, fake, secret=secret, pinned=pin, **KW)
    # the genuine directory under the same pin loads
    assert _load(be, keys, role, genuine, pin.hex().upper()).params_id


@pytest.mark.parametrize("role", ROLES)
def test_a_reordered_or_extended_directory_is_refused(role: str) -> None:
    be, keys, genuine = _world()
    pin = directory_fingerprint(genuine)
    entries = [mat.read_public_key(k.public) for k in keys.values()]
    # the same entries in another order (not canonical, another file)
    w = PayloadWriter().u32(len(entries))
    parts: list[bytes] = []
    for r, p, pk in sorted(entries, key=lambda e: e[1], reverse=True):
        w.text(p).text(r).blob(pk)
        parts += [p.encode(), r.encode(), pk]
    reordered = seal(
        Header(
            Scheme.ADDITIVE,
            mat.DIRECTORY_KIND,
            fingerprint(b"additive/directory", *parts),
            0,
        ),
        w.getvalue(),
    )
    # a party added (a directory for four servers, the genuine keys among them)
    be4 = AdditiveBackend(bound=1.0, n_servers=4)
    extra = own_key(be4, Role.SERVER, "server-3")
    added = make_directory(be4, [*(k.public for k in keys.values()), extra.public])
    for bad in (reordered, added):
        assert directory_fingerprint(bad) != pin
        with pytest.raises(privagg.ParameterMismatchError, match="pinned"):
            _load(be, keys, role, bad, pin)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("pinned", [None, "", b"", "00" * 31, "zz" * 32, b"\x00" * 31])
def test_no_pin_or_a_malformed_pin_is_refused(role: str, pinned: Any) -> None:
    """No silent unpinned mode: a missing or malformed pin is a ConfigurationError,
    through session_for_role and through the backend's own load_role."""
    be, keys, directory = _world()
    with pytest.raises(privagg.ConfigurationError, match="fingerprint"):
        _load(be, keys, role, directory, pinned)
    pid, secret = _party(keys, role)
    with pytest.raises(privagg.ConfigurationError, match="fingerprint"):
        be.load_role(LAYOUT, role, pid, directory, secret=secret, pinned=pinned, **KW)
    with pytest.raises(privagg.ConfigurationError, match="fingerprint"):
        be.load_role(LAYOUT, role, pid, directory, secret=secret, **KW)


def test_params_id_binds_the_directory() -> None:
    """Parties loaded from different directories cannot agree on params_id; parties
    with the same directory do, and so does the in-process setup over those keys."""
    be, keys, directory = _world()
    pin = directory_fingerprint(directory)
    ids = {_load(be, keys, r, directory, pin).params_id for r in ROLES}
    assert len(ids) == 1
    for victim in ("server-1", "holder"):
        other, evil = _substituted(be, keys, victim)
        if victim == "holder":
            s = session_for_role(
                be,
                LAYOUT,
                "holder",
                party_id="holder",
                material=other,
                secret=evil.secret,
                pinned=directory_fingerprint(other),
                **KW,
            )
        else:
            s = _load(be, keys, "client", other, directory_fingerprint(other))
        assert s.params_id not in ids
    # and an in-process setup whose keys are the directory's has the same params_id
    # (params_id is a function of the directory's content and the options only)
    hk = mat.read_own_key(keys["holder"].secret)[2]
    sks = {p: mat.read_own_key(keys[p].secret)[2] for p in ("server-1", "server-2")}
    pks = mat.read_directory(
        directory, {p: r.value for p, r in key_holders(be).items()}
    )
    same = be._session(
        LAYOUT, 3, 1.0, None, privagg.hazmat.DeterministicRng(1), pks, sks, hk
    )
    assert {same.params_id} == ids


def test_the_pin_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((bytes(a), bytes(b)))
        return real(a, b)

    monkeypatch.setattr(pin_mod.hmac, "compare_digest", spy)
    be, keys, directory = _world()
    pin = directory_fingerprint(directory)
    _load(be, keys, "client", directory, pin.hex())
    assert (pin, pin) in calls
    calls.clear()
    with pytest.raises(privagg.ParameterMismatchError):
        _load(be, keys, "client", directory, bytes(32))
    assert (pin, bytes(32)) in calls


def test_identity_directory_pin_through_session_for_role() -> None:
    """The same pin rule for the identity directory (``DIRECTORY``): a pin given to
    session_for_role is checked against the loaded directory."""
    from tests.privagg.test_identity_directory import (
        _directory,
        _keys,
    )

    active = privagg.get_backend("secagg", active=True)
    d = _directory(_keys())
    with pytest.raises(privagg.ParameterMismatchError, match="pinned"):
        session_for_role(
            active, LAYOUT, Role.AGGREGATOR, directory=d, pinned=bytes(32), **KW
        )
    s = session_for_role(
        active, LAYOUT, Role.AGGREGATOR, directory=d, pinned=d.fingerprint, **KW
    )
    assert s.params_id


# -- secrets are never compared field by field ----------------------------------------
def test_secret_dataclasses_have_no_generated_eq() -> None:
    from privagg.backends.paillier.backend import _RecoverCodec
    from privagg.backends.secagg import client as sc
    from privagg.cli._keygen import _KeyFile

    for cls in (
        DealtMaterial,
        OwnKey,
        _RecoverCodec,
        _KeyFile,
        sc._Advertised,
        sc._Shared,
        sc._Masked,
        sc._Signed,
    ):
        # identity equality (object's), never a field-wise bytes comparison
        assert cls.__eq__ is object.__eq__, cls
    a = DealtMaterial(b"agg", b"holder-secret", {"c": b"client-secret"})
    b = DealtMaterial(b"agg", b"holder-secret", {"c": b"client-secret"})
    assert a == a and a != b
    _, keys, _ = _world()
    k = keys["holder"]
    twin = OwnKey(k.role, k.party_id, k.public, k.secret)
    assert k == k and k != twin


def test_cli_prints_an_additive_directory_fingerprint(tmp_path: Any) -> None:
    """``privagg directory FILE`` prints the pin of an additive key directory as it
    does an identity directory's, and refuses a damaged file."""
    import json

    from click.testing import CliRunner

    from privagg.cli import cli

    _, _, directory = _world()
    path = tmp_path / "directory.bin"
    path.write_bytes(directory)
    out = CliRunner().invoke(cli, ["directory", str(path), "--json"])
    assert out.exit_code == 0, out.output
    record = json.loads(out.output.strip().splitlines()[-1])
    assert record["kind"] == "own-keys"
    assert record["fingerprint"] == directory_fingerprint(directory).hex()
    assert record["parties"] == ["holder", "server-1", "server-2"]
    human = CliRunner().invoke(cli, ["directory", str(path)])
    assert (
        human.exit_code == 0 and directory_fingerprint(directory).hex() in human.output
    )
    damaged = bytearray(directory)
    damaged[-40] ^= 1
    path.write_bytes(bytes(damaged))
    bad = CliRunner().invoke(cli, ["directory", str(path), "--json"])
    assert bad.exit_code != 0
