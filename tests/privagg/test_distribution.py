"""The distribution protocol (issue #16): every backend declares its dealing, and one
role per process is built from that role's material only."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import numpy as np
import pytest

import privagg
from privagg import Dealing, DealtMaterial, Distributable, Role
from privagg.backends.paillier import PaillierBackend
from privagg.distribution import deal, dealing, public_setup, session_for_role
from privagg.hazmat import DeterministicRng

LAYOUT = privagg.Layout.from_arrays({"w": np.zeros(6)})
IDS = ["client-0", "client-1", "client-2"]


def _round(sessions: dict[str, Any], updates: dict[str, np.ndarray]) -> np.ndarray:
    """One round, each role from its own session (as separate processes would)."""
    agg = sessions["aggregator"].aggregator(7, sorted(updates))
    clients = {
        c: sessions[c].client(c, 7, updates[c], rng=DeterministicRng(i))
        for i, c in enumerate(sorted(updates))
    }
    out = agg.start()
    while not agg.done:
        out = agg.receive({p: clients[p].handle(r) for p, r in out.items()})
    vec: np.ndarray = sessions["holder"].holder().recover(agg.result()).vector
    return vec


def _updates() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {c: rng.uniform(-0.5, 0.5, LAYOUT.size) for c in IDS}


@pytest.mark.parametrize(
    ("name", "options", "mode"),
    [
        ("plain", {}, Dealing.NONE),
        ("secagg", {"active": False}, Dealing.PUBLIC_SEED),
        ("paillier", {"workers": 1}, Dealing.DEALER),
        ("ckks", {"preset": "test-fast", "threads": 1}, Dealing.DEALER),
    ],
)
def test_every_role_from_its_own_material(
    name: str, options: dict[str, Any], mode: Dealing
) -> None:
    if name not in privagg.available_backends():
        pytest.skip(f"{name} not available")
    if name == "paillier":
        backend: Any = PaillierBackend._insecure_for_tests(key_bits=512, **options)
    else:
        backend = privagg.get_backend(name, **options)
    assert isinstance(backend, Distributable)
    assert dealing(backend) is mode
    assert mode.needs_dealer == (mode is Dealing.DEALER)
    dealt = deal(backend, LAYOUT, IDS, max_clients=3)
    assert (dealt is None) == (not mode.needs_dealer)
    seed = bytes(range(32))
    sessions = {}
    for who in ["aggregator", "holder", *IDS]:
        role = Role(who) if who in ("aggregator", "holder") else Role.CLIENT
        blob = None
        if dealt is not None:
            blob = {"aggregator": dealt.aggregator, "holder": dealt.holder}.get(
                who, dealt.clients.get(who)
            )
        sessions[who] = session_for_role(
            backend,
            LAYOUT,
            role,
            party_id=who if role is Role.CLIENT else None,
            material=blob,
            setup_seed=seed,
            max_clients=3,
        )
    ids = {s.params_id for s in sessions.values()}  # type: ignore[attr-defined]
    assert len(ids) == 1  # every process agrees on the public parameters
    ups = _updates()
    got = _round(sessions, ups)
    want = np.sum(list(ups.values()), axis=0)
    assert np.allclose(got, want, atol=backend.tolerance(n_clients=3, max_abs=0.5))


def test_dealt_material_is_one_type_with_the_old_names() -> None:
    from privagg.backends import secagg

    assert secagg.SecAggMaterial is DealtMaterial
    if "ckks" in privagg.available_backends():
        from privagg.backends import ckks

        assert ckks.CkksMaterial is DealtMaterial
    m = DealtMaterial(b"pub", b"\x13SECRET-HOLDER" * 3, {"a": b"\x42SECRET-CLIENT"})
    for fn in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(TypeError):
            fn(m)
    text = repr(m) + str(m)
    assert "SECRET" not in text and m.holder.hex() not in text
    assert "aggregator_fp=" in text and "clients=1" in text


def test_paillier_holder_material_keeps_its_file_format() -> None:
    """``u32 len(pk) || pk || sk`` (what fedtrain's adapter wrote before issue #16)."""
    from privagg.backends.paillier import PaillierPublicKey, load_secret_key

    be = PaillierBackend._insecure_for_tests(key_bits=512, workers=1)
    dealt = be.deal(LAYOUT, IDS, max_clients=3, rng=DeterministicRng(5))
    n = int.from_bytes(dealt.holder[:4], "big")
    assert dealt.holder[4 : 4 + n] == dealt.aggregator
    assert all(dealt.clients[c] == dealt.aggregator for c in IDS)
    pk = PaillierPublicKey.from_bytes(dealt.aggregator, key_bits=512)
    sk = load_secret_key(dealt.holder[4 + n :])
    assert sk.public_fingerprint == pk.fingerprint
    with pytest.raises(privagg.MissingKeyError):  # the public file cannot recover
        be.load_role(
            LAYOUT, "aggregator", None, dealt.aggregator, max_clients=3
        ).holder()
    for bad in (b"", b"\x00\x00\xff\xff", dealt.holder[:40]):
        with pytest.raises(privagg.DeserializationError):
            be.load_role(LAYOUT, "holder", None, bad, max_clients=3)
    with pytest.raises(privagg.ConfigurationError):
        be.load_role(LAYOUT, "janitor", None, dealt.aggregator, max_clients=3)
    # a client role names its party (as CKKS and SecAgg+ require)
    for missing in (None, ""):
        with pytest.raises(privagg.ConfigurationError, match="party id"):
            be.load_role(
                LAYOUT, "client", missing, dealt.clients["client-0"], max_clients=3
            )
    with pytest.raises(privagg.ConfigurationError, match="party id"):
        session_for_role(
            be, LAYOUT, Role.CLIENT, material=dealt.aggregator, max_clients=3
        )
    c = be.load_role(
        LAYOUT, "client", "client-0", dealt.clients["client-0"], max_clients=3
    )
    c.client("client-0", 1, np.zeros(LAYOUT.size))


@pytest.mark.parametrize(
    ("name", "options", "scale"),
    [
        ("plain", {}, None),
        ("ckks", {"preset": "test-fast", "threads": 1}, None),
        ("paillier", {"scale_bits": 12}, 4096.0),
        ("secagg", {"scale_bits": 20}, 2.0**20),
        ("additive", {}, 65536.0),
    ],
)
def test_fixed_point_scale_is_a_public_capability(
    name: str, options: dict[str, Any], scale: float | None
) -> None:
    """fedtrain asks privagg, not a list of names, whether noise is discrete."""
    if name not in privagg.available_backends():
        pytest.skip(f"{name} not available")
    be = privagg.get_backend(name, **options)
    assert privagg.fixed_point_scale(be) == scale
    assert isinstance(be, privagg.FixedPointBackend) == (scale is not None)


def test_refusals() -> None:
    active = privagg.get_backend("secagg", active=True)
    assert dealing(active) is Dealing.DIRECTORY  # own keys + a pinned directory
    with pytest.raises(privagg.ConfigurationError, match="directory"):
        session_for_role(active, LAYOUT, Role.AGGREGATOR, max_clients=2)
    additive = privagg.get_backend("additive")
    assert (
        dealing(additive) is Dealing.OWN_KEYS
    )  # no dealer (test_additive_distribution)
    with pytest.raises(privagg.ConfigurationError, match="material"):
        session_for_role(additive, LAYOUT, Role.CLIENT, max_clients=2)

    class _Keyless:  # a backend without the hook is refused, never given every secret
        name = "keyless"

    with pytest.raises(privagg.UnsupportedError, match="no deal/load_role"):
        dealing(_Keyless())  # type: ignore[arg-type]
    plain = privagg.get_backend("plain")
    with pytest.raises(privagg.UnsupportedError, match="public-seeded"):
        public_setup(plain, LAYOUT, bytes(32), max_clients=2)
    passive = privagg.get_backend("secagg", active=False)
    with pytest.raises(privagg.ConfigurationError, match="32-byte"):
        session_for_role(passive, LAYOUT, Role.CLIENT, setup_seed=b"x", max_clients=2)
    with pytest.raises(privagg.ConfigurationError, match="role"):
        session_for_role(plain, LAYOUT, "janitor", max_clients=2)
    if "ckks" in privagg.available_backends():
        ckks = privagg.get_backend("ckks", preset="test-fast", threads=1)
        with pytest.raises(privagg.ConfigurationError, match="material"):
            session_for_role(ckks, LAYOUT, Role.HOLDER, max_clients=2)


def test_public_seed_reaches_no_secret() -> None:
    """Two processes from one public seed agree on params_id, never on secrets."""
    be = privagg.get_backend("secagg", active=True)  # identity keys exist here
    a = public_setup(be, LAYOUT, bytes(32), max_clients=3)
    b = public_setup(be, LAYOUT, bytes(32), max_clients=3)
    assert a.params_id == b.params_id  # type: ignore[attr-defined]
    a.client("c", 0, np.zeros(LAYOUT.size))
    b.client("c", 0, np.zeros(LAYOUT.size))
    assert a.identity_public("c") != b.identity_public("c")  # type: ignore[attr-defined]
