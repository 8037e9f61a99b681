"""Active SecAgg+ without a dealer (issue #14): each client's own identity key, one
public-key directory pinned by its fingerprint (:mod:`privagg.identity`).

Every role is built in its own session, as separate processes would: the clients from
their own identity key and the directory, the aggregator and the holder from the
directory alone. A malicious server cannot substitute a key (the pin, and the
signatures checked against the pinned directory), and the directory file is a parser
of untrusted bytes (fuzzed below).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

import privagg
from privagg import Dealing, Role
from privagg.backends._primitives import ed25519_public, new_ed25519
from privagg.backends.secagg.backend import _role_session
from privagg.cli import cli
from privagg.distribution import dealing, session_for_role
from privagg.hazmat import DeterministicRng
from privagg.identity import (
    DIRECTORY_FORMAT,
    MAX_DIRECTORY_BYTES,
    MAX_PARTIES,
    IdentityDirectory,
    load_identity_key,
    parse_public_record,
)
from privagg.keys import NoProtection, SecretBytes, read_secret_file
from tests.hardening_counts import BATCH, count, fuzz_settings
from tests.privagg.test_fuzz_parsers import feed, mutate_bytes

LAYOUT = privagg.Layout.from_arrays({"w": np.zeros(7)})
IDS = [f"client-{i}" for i in range(4)]
ROUND = 11


def _keys(seed: int = 0, ids: list[str] = IDS) -> dict[str, SecretBytes]:
    rng = DeterministicRng(bytes([seed]) * 32)
    return {p: SecretBytes(new_ed25519(rng)) for p in ids}


def _directory(keys: dict[str, SecretBytes], nonce: int = 1) -> IdentityDirectory:
    return IdentityDirectory(
        bytes([nonce]) * 32, {p: ed25519_public(k.reveal()) for p, k in keys.items()}
    )


def _updates() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    return {c: rng.uniform(-0.5, 0.5, LAYOUT.size) for c in IDS}


def _sessions(keys: dict[str, SecretBytes], d: IdentityDirectory) -> dict[str, Any]:
    be = privagg.get_backend("secagg")
    out: dict[str, Any] = {
        role: session_for_role(be, LAYOUT, role, directory=d, max_clients=len(IDS))
        for role in (Role.AGGREGATOR, Role.HOLDER)
    }
    for p, k in keys.items():
        out[p] = session_for_role(
            be,
            LAYOUT,
            Role.CLIENT,
            party_id=p,
            identity=k,
            directory=d,
            max_clients=len(IDS),
        )
    return out


def _round(
    sessions: dict[str, Any], updates: dict[str, np.ndarray], gone_at: int | None = None
) -> privagg.Recovered:
    """One round; ``client-3`` stops answering from stage ``gone_at`` on."""
    agg = sessions[Role.AGGREGATOR].aggregator(ROUND, sorted(updates))
    clients = {c: sessions[c].client(c, ROUND, updates[c]) for c in sorted(updates)}
    out, stage = agg.start(), 0
    while not agg.done:
        replies = {
            p: clients[p].handle(r)
            for p, r in out.items()
            if gone_at is None or p != "client-3" or stage < gone_at
        }
        out, stage = agg.receive(replies), stage + 1
    rec: privagg.Recovered = sessions[Role.HOLDER].holder().recover(agg.result())
    return rec


@pytest.mark.parametrize("gone_at", [None, 2, 3])
def test_round_from_own_keys_and_directory_equals_the_sum(gone_at: int | None) -> None:
    """The same result as the in-process session, with every role in its own session;
    a client lost after sharing (masking or consistency stage) is recovered."""
    keys = _keys()
    d = IdentityDirectory.from_bytes(
        _directory(keys).to_bytes(), pinned=_directory(keys).fingerprint.hex()
    )
    updates = _updates()
    be = privagg.get_backend("secagg")
    assert dealing(be) is Dealing.DIRECTORY
    rec = _round(_sessions(keys, d), updates, gone_at)
    # lost at the masking stage (2): left out, its pairwise masks removed; lost at the
    # consistency stage (3): its masked input is in, its self-mask recovered
    live = [c for c in IDS if gone_at != 2 or c != "client-3"]
    assert list(rec.contributors) == live
    want = sum(updates[c] for c in live)
    tol = be.tolerance(n_clients=len(IDS), max_abs=0.5)
    np.testing.assert_allclose(rec.vector, want, rtol=0, atol=tol)
    # the in-process (single-session) runtime on the same updates agrees
    one = be.setup(LAYOUT, max_clients=len(IDS))
    ref = _round(
        dict.fromkeys([Role.AGGREGATOR, Role.HOLDER, *IDS], one), updates, gone_at
    )
    assert ref.contributors == rec.contributors
    np.testing.assert_allclose(rec.vector, ref.vector, rtol=0, atol=2 * tol)


def test_only_the_client_role_holds_an_identity_key() -> None:
    keys = _keys()
    d = _directory(keys)
    be = privagg.get_backend("secagg")
    agg = session_for_role(be, LAYOUT, Role.AGGREGATOR, directory=d, max_clients=4)
    assert agg.identity_keys() == []  # type: ignore[attr-defined]
    with pytest.raises(privagg.ConfigurationError, match="holds no identity key"):
        session_for_role(
            be,
            LAYOUT,
            Role.AGGREGATOR,
            directory=d,
            identity=keys["client-0"],
            max_clients=4,
        )
    with pytest.raises(privagg.ConfigurationError, match="identity key"):
        session_for_role(
            be, LAYOUT, Role.CLIENT, party_id="client-0", directory=d, max_clients=4
        )
    with pytest.raises(privagg.ConfigurationError, match="directory"):
        session_for_role(
            be,
            LAYOUT,
            Role.CLIENT,
            party_id="client-0",
            identity=keys["client-0"],
            max_clients=4,
        )
    passive = privagg.get_backend("secagg", active=False)
    with pytest.raises(privagg.ConfigurationError, match="active"):
        passive.directory_role(LAYOUT, "aggregator", d, max_clients=4)  # type: ignore[attr-defined]
    with pytest.raises(privagg.MissingKeyError):
        agg.client("client-0", ROUND, np.zeros(LAYOUT.size))  # no key: cannot sign


def test_client_refuses_a_directory_without_its_own_key() -> None:
    keys = _keys()
    be = privagg.get_backend("secagg")
    others = _directory({p: k for p, k in keys.items() if p != "client-0"})
    with pytest.raises(privagg.ConfigurationError, match="not in the directory"):
        session_for_role(
            be,
            LAYOUT,
            Role.CLIENT,
            party_id="client-0",
            identity=keys["client-0"],
            directory=others,
            max_clients=4,
        )
    # the directory lists someone else's key under client-0 (a substitution)
    swapped = dict(_directory(keys).keys)
    swapped["client-0"] = ed25519_public(_keys(9)["client-0"].reveal())
    with pytest.raises(privagg.ParameterMismatchError):
        session_for_role(
            be,
            LAYOUT,
            Role.CLIENT,
            party_id="client-0",
            identity=keys["client-0"],
            directory=IdentityDirectory(bytes(32), swapped),
            max_clients=4,
        )


def test_duplicate_party_ids_or_keys_are_refused() -> None:
    keys = _keys()
    good = _directory(keys).to_bytes().decode()
    lines = good.splitlines()
    entry0, entry1 = lines[4], lines[5]
    dup_id = good.replace(entry1, entry0)  # client-0 twice (with the same key)
    key0 = json.loads(entry0.rstrip(","))["ed25519_public_key"]
    key1 = json.loads(entry1.rstrip(","))["ed25519_public_key"]
    dup_key = good.replace(key1, key0)  # one key for client-0 and client-1
    for bad in (dup_id, dup_key):
        with pytest.raises(privagg.DeserializationError):
            IdentityDirectory.from_bytes(bad.encode())
    with pytest.raises(privagg.ConfigurationError, match="share one identity key"):
        IdentityDirectory(bytes(32), {"a": bytes(range(32)), "b": bytes(range(32))})
    records = [_record(p, k) for p, k in keys.items()]
    with pytest.raises(privagg.ConfigurationError, match="twice"):
        IdentityDirectory.build([records[0], records[1], records[0]])


def _record(party: str, key: SecretBytes) -> dict[str, str]:
    from privagg.identity import identity_fingerprint

    pk = ed25519_public(key.reveal())
    return {
        "format": "privagg/secagg-identity-public/v1",
        "party_id": party,
        "ed25519_public_key": pk.hex(),
        "fingerprint": identity_fingerprint(pk).hex(),
    }


def test_pin_and_canonical_form() -> None:
    d = _directory(_keys())
    data = d.to_bytes()
    assert IdentityDirectory.from_bytes(data, pinned=d.fingerprint) == d
    other = _directory(_keys(), nonce=2)  # same keys, new nonce: a new directory
    assert other.fingerprint != d.fingerprint
    with pytest.raises(privagg.ParameterMismatchError, match="pinned"):
        IdentityDirectory.from_bytes(other.to_bytes(), pinned=d.fingerprint.hex())
    with pytest.raises(privagg.ConfigurationError):
        IdentityDirectory.from_bytes(data, pinned="abc")
    # the same content, not in canonical form: refused (one file, one fingerprint)
    loose = json.dumps(json.loads(data)).encode()
    with pytest.raises(privagg.DeserializationError):
        IdentityDirectory.from_bytes(loose)
    for bad in (
        b"",
        b"[]",
        data.replace(DIRECTORY_FORMAT.encode(), b"privagg/secagg-directory/v0"),
        data.replace(b'"nonce"', b'"nonce", "nonce"'),
        data[:-3],
        data.replace(b"client-0", b"-client"),
        b'{"format": NaN}',
        b"[" * 100_000,
    ):
        with pytest.raises(privagg.DeserializationError):
            IdentityDirectory.from_bytes(bad)
    assert "client" not in repr(d) and d.fingerprint.hex()[:16] in repr(d)


def test_size_limits_are_checked_before_parsing() -> None:
    too_big = b" " * (MAX_DIRECTORY_BYTES + 1)
    with pytest.raises(privagg.DeserializationError):
        IdentityDirectory.from_bytes(too_big)
    many = json.dumps(
        {
            "format": DIRECTORY_FORMAT,
            "nonce": "00" * 32,
            "parties": [{}] * (MAX_PARTIES + 1),
        }
    ).encode()
    with pytest.raises(privagg.DeserializationError):
        IdentityDirectory.from_bytes(many)


def test_server_cannot_substitute_an_identity() -> None:
    """A malicious server keeps the genuine params_id (it is public) but claims a key of
    its own for client-1 and answers as client-1: the honest clients check client-1's
    signed keys against their pinned directory and refuse to share."""
    keys = _keys()
    d = _directory(keys)
    be = privagg.get_backend("secagg")
    honest = _sessions(keys, d)
    cfg = honest[Role.AGGREGATOR]._cfg  # the genuine, public parameters
    fake = SecretBytes(new_ed25519(DeterministicRng(b"\x07" * 32)))
    forged_keys = dict(d.keys) | {"client-1": ed25519_public(fake.reveal())}
    server = _role_session(
        cfg, LAYOUT, "aggregator", None, forged_keys, b"", privagg.SystemRng()
    )
    forged = _role_session(
        cfg,
        LAYOUT,
        "client",
        "client-1",
        forged_keys,
        fake.reveal(),
        privagg.SystemRng(),
    )
    updates = _updates()
    agg = server.aggregator(ROUND, IDS)
    roles = {
        c: (forged if c == "client-1" else honest[c]).client(c, ROUND, updates[c])
        for c in IDS
    }
    advertised = {c: roles[c].handle(r) for c, r in agg.start().items()}
    share_requests = agg.receive(advertised)  # the server's aggregator accepts it
    assert "client-1" in share_requests
    for c in IDS:
        if c == "client-1":
            continue
        with pytest.raises(privagg.ProtocolError, match="signature"):
            roles[c].handle(share_requests[c])
    assert be.dealing() is Dealing.DIRECTORY  # type: ignore[attr-defined]


def test_directories_that_differ_cannot_talk() -> None:
    """params_id binds the directory: a client pinned to another directory (here: the
    same keys, another nonce) refuses the first request."""
    keys = _keys()
    mine = _sessions(keys, _directory(keys, nonce=1))
    theirs = _sessions(keys, _directory(keys, nonce=2))
    agg = theirs[Role.AGGREGATOR].aggregator(ROUND, IDS)
    request = agg.start()["client-0"]
    role = mine["client-0"].client("client-0", ROUND, np.zeros(LAYOUT.size))
    with pytest.raises((privagg.ParameterMismatchError, privagg.ProtocolError)):
        role.handle(request)


def test_keygen_files_to_directory_to_round(tmp_path: Path) -> None:
    """The documented path: keygen on each client, `privagg directory` at the
    operator, each client loads its own key file and the pinned directory."""
    runner = CliRunner()
    for p in IDS:
        res = runner.invoke(
            cli, ["keygen", "--backend", "secagg", "--party-id", p, str(tmp_path / p)]
        )
        assert res.exit_code == 0, res.output
    pubs = [str(tmp_path / p / f"secagg-identity-{p}.pub") for p in IDS]
    res = runner.invoke(cli, ["directory", str(tmp_path / "dir.json"), *pubs, "--json"])
    assert res.exit_code == 0, res.output
    pin = json.loads(res.stdout)["fingerprint"]
    res = runner.invoke(cli, ["directory", str(tmp_path / "dir.json"), "--json"])
    assert json.loads(res.stdout)["fingerprint"] == pin
    res = runner.invoke(cli, ["directory", str(tmp_path / "dir.json"), pubs[0]])
    assert res.exit_code == 2  # never overwritten without --force
    d = IdentityDirectory.from_bytes((tmp_path / "dir.json").read_bytes(), pinned=pin)
    keys = {
        p: load_identity_key(
            read_secret_file(tmp_path / p / f"secagg-identity-{p}.key")
        )
        for p in IDS
    }
    rec = _round(_sessions(keys, d), _updates())
    assert list(rec.contributors) == IDS
    # a record copied with a wrong fingerprint, or a key file of another scheme
    bad = json.loads(Path(pubs[0]).read_text()) | {"fingerprint": "00" * 32}
    with pytest.raises(privagg.ConfigurationError, match="fingerprint"):
        parse_public_record(bad)
    with pytest.raises(privagg.DeserializationError):
        load_identity_key(NoProtection().wrap("ckks", bytes(32), bytes(32)))
    key0 = read_secret_file(tmp_path / IDS[0] / f"secagg-identity-{IDS[0]}.key")
    _, fp, secret = NoProtection().unwrap(key0)
    with pytest.raises(privagg.DeserializationError, match="inconsistent"):
        load_identity_key(
            NoProtection().wrap("secagg-identity", fp, keys[IDS[1]].reveal())
        )
    assert secret == keys[IDS[0]].reveal()


# -- fuzz: the directory file is a parser of untrusted bytes -----------------------------
def _corpus() -> list[bytes]:
    small = _directory(_keys(ids=["a"]))
    return [_directory(_keys()).to_bytes(), small.to_bytes()]


def _json_mutation(rnd: random.Random, data: bytes) -> bytes:
    """A structural change: a field dropped, retyped or duplicated, an entry changed."""
    d = json.loads(data)
    choice = rnd.randrange(6)
    junk = rnd.choice(
        [None, 0, -1, 1e308, "", "zz" * 32, [], {}, True, "A" * 65, 10**30, "ab"]
    )
    if choice == 0:
        d.pop(rnd.choice(list(d)))
    elif choice == 1:
        d[rnd.choice(list(d))] = junk
    elif choice == 2 and d["parties"]:
        e = rnd.choice(d["parties"])
        e[rnd.choice(list(e))] = junk
    elif choice == 3 and d["parties"]:
        d["parties"].append(dict(rnd.choice(d["parties"])))
    elif choice == 4:
        d[rnd.choice(["extra", "nonce", "format"])] = junk
    else:
        d = rnd.choice([[d], junk, {"x": d}])
    return json.dumps(d, indent=rnd.choice([None, 2])).encode()


_FUZZ = fuzz_settings()
_DIRECTORY_ERRORS = (privagg.DeserializationError, privagg.ParameterMismatchError)


@pytest.mark.slow
@_FUZZ
@given(seed=st.integers(0, 2**64 - 1), data=st.data())
def test_fuzz_identity_directory(seed: int, data: st.DataObject) -> None:
    corpus = _corpus()
    pin = IdentityDirectory.from_bytes(corpus[0]).fingerprint
    rnd = random.Random(seed)
    first = data.draw(st.binary(max_size=512), label="raw bytes")
    inputs = [first]
    for _ in range(BATCH - 1):
        base = rnd.choice(corpus)
        inputs.append(
            _json_mutation(rnd, base) if rnd.random() < 0.5 else mutate_bytes(rnd, base)
        )

    def parse(b: bytes) -> Any:
        return IdentityDirectory.from_bytes(b, pinned=pin)

    n, escapes = feed(parse, _DIRECTORY_ERRORS, inputs)
    count("fuzz", "IdentityDirectory.from_bytes", inputs=n, escapes=len(escapes))
    assert not escapes, escapes[:3]
    # and the valid files still parse (the fuzzing is not vacuous)
    parse(corpus[0])
