"""Additive sharing across processes (issue #16): no dealer, each key holder makes its
own key, every role loads only its own material, and a key file for one party refuses
to act as another."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import numpy as np
import pytest

import privagg
from privagg import Dealing, Distributable, OwnKey, Role, SelfKeyed
from privagg.backends.additive import AdditiveBackend
from privagg.backends.additive._material import read_own_key
from privagg.distribution import (
    deal,
    dealing,
    directory_fingerprint,
    key_holders,
    make_directory,
    own_key,
    session_for_role,
)
from privagg.hazmat import DeterministicRng

LAYOUT = privagg.Layout.from_arrays({"w": np.zeros(7), "b": np.zeros(3)})
CLIENTS = ["client-0", "client-1", "client-2"]
KW: dict[str, Any] = {"max_clients": 3}


def _backend(n_servers: int = 3) -> AdditiveBackend:
    return AdditiveBackend(bound=1.0, n_servers=n_servers)


def _keys(be: AdditiveBackend) -> dict[str, OwnKey]:
    """What each key holder makes on its own machine."""
    return {p: own_key(be, r, p) for p, r in key_holders(be).items()}


def _sessions(
    be: AdditiveBackend, keys: dict[str, OwnKey], directory: bytes
) -> dict[str, Any]:
    pin = directory_fingerprint(directory)  # published by the operator
    out: dict[str, Any] = {
        "aggregator": session_for_role(
            be, LAYOUT, Role.AGGREGATOR, material=directory, pinned=pin, **KW
        )
    }
    for c in CLIENTS:
        out[c] = session_for_role(
            be, LAYOUT, Role.CLIENT, party_id=c, material=directory, pinned=pin, **KW
        )
    for p, k in keys.items():
        out[p] = session_for_role(
            be,
            LAYOUT,
            k.role,
            party_id=p,
            material=directory,
            secret=k.secret,
            pinned=pin.hex(),
            **KW,
        )
    return out


def _updates() -> dict[str, np.ndarray]:
    g = np.random.default_rng(11)
    return {c: g.uniform(-0.9, 0.9, LAYOUT.size) for c in CLIENTS}


def _distributed_round(sessions: dict[str, Any], ups: dict[str, np.ndarray]) -> Any:
    agg = sessions["aggregator"].aggregator(5, CLIENTS)
    roles: dict[str, Any] = {
        c: sessions[c].client(c, 5, ups[c], rng=DeterministicRng(i))
        for i, c in enumerate(CLIENTS)
    }
    for p, s in sessions.items():
        if p.startswith("server-"):
            served = s.servers(5)
            assert list(served) == [p]  # a server's process makes only its own role
            roles.update(served)
    out = agg.start()
    while not agg.done:
        out = agg.receive({p: roles[p].handle(r) for p, r in out.items()})
    return sessions["holder"].holder().recover(agg.result())


def test_dealing_is_directory_and_nobody_deals() -> None:
    be = _backend()
    assert isinstance(be, Distributable) and isinstance(be, SelfKeyed)
    assert dealing(be) is Dealing.OWN_KEYS
    assert not Dealing.OWN_KEYS.needs_dealer and Dealing.OWN_KEYS.holder_has_secret
    assert deal(be, LAYOUT, CLIENTS, **KW) is None  # nothing for a dealer to make
    with pytest.raises(privagg.UnsupportedError, match="no dealer"):
        be.deal(LAYOUT, CLIENTS, **KW)
    assert key_holders(be) == {
        "server-1": Role.SERVER,
        "server-2": Role.SERVER,
        "holder": Role.HOLDER,
    }
    # other dealings have no self-keyed parties
    assert key_holders(privagg.get_backend("plain")) == {}
    with pytest.raises(privagg.UnsupportedError, match="OWN_KEYS"):
        own_key(privagg.get_backend("plain"), Role.HOLDER, "holder")


def test_every_role_from_its_own_material_equals_the_in_process_sum() -> None:
    be = _backend()
    keys = _keys(be)
    directory = make_directory(be, [k.public for k in reversed(keys.values())])
    assert directory == make_directory(be, [k.public for k in keys.values()])
    sessions = _sessions(be, keys, directory)
    assert len({s.params_id for s in sessions.values()}) == 1
    ups = _updates()
    got = _distributed_round(sessions, ups)
    assert got.contributors == tuple(CLIENTS)
    # the in-process (trusted dealer) session on the same inputs
    want = privagg.secure_sum(
        [LAYOUT.unflatten(ups[c]) for c in CLIENTS], backend=_backend()
    )
    tol = be.tolerance(n_clients=3, max_abs=0.9)
    np.testing.assert_allclose(got.vector, LAYOUT.flatten(want), atol=2 * tol)
    np.testing.assert_allclose(got.vector, np.sum(list(ups.values()), axis=0), atol=tol)


def test_each_role_holds_only_its_own_key() -> None:
    be = _backend()
    keys = _keys(be)
    directory = make_directory(be, [k.public for k in keys.values()])
    sessions = _sessions(be, keys, directory)
    for who in ["aggregator", *CLIENTS]:
        s = sessions[who]
        assert s.secret_keys() == []
        assert s.servers(1) == {}
        with pytest.raises(privagg.MissingKeyError):
            s.holder()
    for sid in ("server-1", "server-2"):
        s = sessions[sid]
        assert len(s.secret_keys()) == 1
        assert list(s.servers(1)) == [sid]
        with pytest.raises(privagg.MissingKeyError):
            s.holder()
    h = sessions["holder"]
    assert len(h.secret_keys()) == 1 and h.servers(1) == {}
    h.holder()
    # no secret reaches the public blobs or the directory
    for k in keys.values():
        sk = read_own_key(k.secret)[2]
        assert sk not in directory and sk not in k.public
        assert all(sk not in other.public for other in keys.values())


def test_a_key_file_for_one_party_refuses_to_act_as_another() -> None:
    be = _backend()
    keys = _keys(be)
    directory = make_directory(be, [k.public for k in keys.values()])
    s1, s2, hk = keys["server-1"].secret, keys["server-2"].secret, keys["holder"].secret

    def load(
        role: str, pid: str | None, secret: bytes | None, mat: bytes = directory
    ) -> Any:
        # pinned to the material given, so the checks after the pin are what fails
        pin = directory_fingerprint(mat)
        return be.load_role(LAYOUT, role, pid, mat, secret=secret, pinned=pin, **KW)

    with pytest.raises(privagg.ParameterMismatchError, match="server-1"):
        load("server", "server-2", s1)
    with pytest.raises(privagg.ParameterMismatchError):
        load("holder", None, s1)
    with pytest.raises(privagg.ParameterMismatchError):
        load("server", "server-1", hk)
    # the aggregator and the clients hold no secret: given one, they refuse
    with pytest.raises(privagg.ConfigurationError, match="no secret"):
        load("aggregator", None, hk)
    with pytest.raises(privagg.ConfigurationError, match="no secret"):
        load("client", "client-0", s2)
    # key holders need their own secret and their party id
    with pytest.raises(privagg.ConfigurationError, match="secret key file"):
        load("server", "server-1", None)
    with pytest.raises(privagg.ConfigurationError, match="party id"):
        load("server", None, s1)
    with pytest.raises(privagg.ConfigurationError, match="party id"):
        load("server", "server-9", s1)
    with pytest.raises(privagg.ConfigurationError, match="party id"):
        load("client", None, None)
    with pytest.raises(privagg.ConfigurationError, match="party id"):
        load("client", "server-1", None)  # a client cannot take a server's id
    with pytest.raises(privagg.ConfigurationError, match="role"):
        load("janitor", None, None)
    # a secret blob is not a directory, a public blob is not a secret
    with pytest.raises(privagg.DeserializationError):
        load("aggregator", None, None, s1)
    with pytest.raises(privagg.DeserializationError):
        load("server", "server-1", keys["server-1"].public)
    tampered = bytearray(s1)
    tampered[-40] ^= 1
    with pytest.raises(privagg.DeserializationError):
        load("server", "server-1", bytes(tampered))
    # a fresh key for server-1 that the directory does not list
    stray = own_key(be, Role.SERVER, "server-1")
    with pytest.raises(privagg.ParameterMismatchError, match="directory"):
        load("server", "server-1", stray.secret)
    # a directory for another number of servers
    other = _backend(n_servers=2)
    other_dir = make_directory(
        other, [own_key(other, r, p).public for p, r in key_holders(other).items()]
    )
    with pytest.raises(privagg.ParameterMismatchError, match="n_servers"):
        load("aggregator", None, None, other_dir)


def test_directory_needs_every_key_holder_once() -> None:
    be = _backend()
    keys = _keys(be)
    pubs = [k.public for k in keys.values()]
    with pytest.raises(privagg.ConfigurationError, match="no public key"):
        make_directory(be, pubs[:-1])
    with pytest.raises(privagg.ConfigurationError, match="two public keys"):
        make_directory(be, [*pubs, pubs[0]])
    other = _backend(n_servers=4)
    with pytest.raises(privagg.ConfigurationError, match="not a key holder"):
        make_directory(be, [*pubs, own_key(other, Role.SERVER, "server-3").public])
    with pytest.raises(privagg.DeserializationError):
        make_directory(be, [*pubs[:-1], keys["holder"].secret])
    with pytest.raises(privagg.ConfigurationError):
        own_key(be, Role.SERVER, "holder")
    with pytest.raises(privagg.ConfigurationError):
        own_key(be, Role.SERVER, "client-0")


def test_own_key_and_sessions_never_pickle_or_print_secrets() -> None:
    be = _backend()
    keys = _keys(be)
    directory = make_directory(be, [k.public for k in keys.values()])
    sessions = _sessions(be, keys, directory)
    for k in keys.values():
        sk = read_own_key(k.secret)[2]
        for fn in (pickle.dumps, copy.copy, copy.deepcopy):
            with pytest.raises(TypeError):
                fn(k)
        text = repr(k) + str(k) + f"{k}"
        assert sk.hex() not in text and k.secret.hex() not in text
        assert "secret hidden" in text and k.party_id in text
        s = sessions[k.party_id]
        with pytest.raises(TypeError):
            pickle.dumps(s)
        shown = repr(s) + str(s) + repr(s.secret_keys()) + repr(s.servers(3))
        assert sk.hex() not in shown and str(sk) not in shown


def test_session_for_role_needs_the_directory() -> None:
    be = _backend()
    with pytest.raises(privagg.ConfigurationError, match="material"):
        session_for_role(be, LAYOUT, Role.CLIENT, party_id="client-0", **KW)


def test_setup_is_unchanged_for_one_process() -> None:
    """The in-process session still draws the same keys from a given rng."""
    be = _backend()
    a = be.setup(LAYOUT, rng=DeterministicRng(3), **KW)
    b = be.setup(LAYOUT, rng=DeterministicRng(3), **KW)
    assert a.params_id == b.params_id
    assert len(a.secret_keys()) == 3 and set(a.servers(1)) == {"server-1", "server-2"}
