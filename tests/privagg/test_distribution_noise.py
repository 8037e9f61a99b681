"""Distributed-DP noise through the distribution protocol (#14): a role loaded with
``session_for_role(..., noise=share)`` has the semantics of the one-process
``Backend.setup(noise=share)``, for every :class:`~privagg.Dealing` kind.

The contract, per backend (one per dealing kind: plain ``NONE``, passive SecAgg+
``PUBLIC_SEED``, active SecAgg+ ``DIRECTORY``, Paillier and CKKS ``DEALER``, additive
``OWN_KEYS``):

* every role of a noised session agrees on ``params_id``;
* with the same client randomness, the round over per-role sessions recovers what the
  one-process ``setup(noise=share)`` session recovers (bit for bit on the exact
  backends; within the backend's declared tolerance on CKKS), and that differs from
  the noiseless round in (almost) every coordinate: the clients did add their shares;
* a share whose headroom does not fit is refused with the same error type as
  ``setup`` raises for it (or accepted by both);
* a ``noise`` that is not a :class:`~privagg.NoiseShare` is a
  :class:`~privagg.ConfigurationError` for every role and kind.

Then: where the backend binds the share in ``params_id`` (CKKS, Paillier here; SecAgg+
and additive in ``test_masking_noise_binding.py``), a role loaded without it is
refused by the noised ones; a backend whose role loader takes no
``noise`` still loads without one and refuses one (:class:`~privagg.UnsupportedError`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import privagg
from privagg import Dealing, Role
from privagg.backends._primitives import ed25519_public, new_ed25519
from privagg.backends.paillier import PaillierBackend
from privagg.distribution import (
    deal,
    dealing,
    directory_fingerprint,
    key_holders,
    make_directory,
    own_key,
    session_for_role,
)
from privagg.dp import DiscreteGaussianShare
from privagg.hazmat import DeterministicRng
from privagg.identity import IdentityDirectory
from privagg.keys import SecretBytes

LAYOUT = privagg.Layout.from_arrays({"w": np.zeros(24), "b": np.zeros(8)})
IDS = ["client-0", "client-1", "client-2"]
ROUND = 9
SHARE = DiscreteGaussianShare(0.05)
N = len(IDS)

Sessions = dict[str, Any]
Loader = Callable[[Any, Any], Sessions]  # (backend, noise) -> party -> session


def _roles(
    be: Any, noise: Any, holders: dict[str, dict[str, Any]], **common: Any
) -> Sessions:
    """Aggregator, holder, clients (and any other key holder) from ``session_for_role``;
    ``holders``: party -> its extra keyword arguments."""
    out: Sessions = {}
    for party, role in [
        ("aggregator", Role.AGGREGATOR),
        ("holder", Role.HOLDER),
        *((c, Role.CLIENT) for c in IDS),
        *((p, Role.SERVER) for p in holders if p.startswith("server-")),
    ]:
        kw = {**common, **holders.get(party, {})}
        if role in (Role.CLIENT, Role.SERVER):
            kw.setdefault("party_id", party)
        out[party] = session_for_role(
            be, LAYOUT, role, max_clients=N, noise=noise, **kw
        )
    return out


def _plain(be: Any, noise: Any) -> Sessions:
    return _roles(be, noise, {})


def _passive(be: Any, noise: Any) -> Sessions:
    return _roles(be, noise, {}, setup_seed=bytes(range(32)))


def _active(be: Any, noise: Any) -> Sessions:
    rng = DeterministicRng(bytes(32))
    keys = {p: SecretBytes(new_ed25519(rng)) for p in IDS}
    directory = IdentityDirectory(
        bytes([1]) * 32, {p: ed25519_public(k.reveal()) for p, k in keys.items()}
    )
    per = {p: {"identity": k} for p, k in keys.items()}
    return _roles(be, noise, per, directory=directory)


def _dealt(be: Any, noise: Any) -> Sessions:
    dealt = deal(be, LAYOUT, IDS, max_clients=N)
    assert dealt is not None
    per: dict[str, dict[str, Any]] = {
        "aggregator": {"material": dealt.aggregator},
        "holder": {"material": dealt.holder},
    }
    per.update({c: {"material": dealt.clients[c]} for c in IDS})
    return _roles(be, noise, per)


_OWN_KEYS: dict[int, Any] = {}


def _own_keys(be: Any, noise: Any) -> Sessions:
    if id(be) not in _OWN_KEYS:  # each key holder's key, made once per backend
        keys = {p: own_key(be, r, p) for p, r in key_holders(be).items()}
        _OWN_KEYS[id(be)] = (
            keys,
            make_directory(be, [k.public for k in keys.values()]),
        )
    keys, directory = _OWN_KEYS[id(be)]
    per = {p: {"secret": k.secret} for p, k in keys.items()}
    return _roles(
        be, noise, per, material=directory, pinned=directory_fingerprint(directory)
    )


def _backend(case: str) -> Any:
    name = case.split("-")[0]
    if name not in privagg.available_backends():
        pytest.skip(f"{name} not available")
    return {
        "plain": lambda: privagg.get_backend("plain"),
        "secagg-passive": lambda: privagg.get_backend("secagg", active=False),
        "secagg-active": lambda: privagg.get_backend("secagg", active=True),
        "paillier": lambda: PaillierBackend._insecure_for_tests(
            key_bits=512, workers=1
        ),
        "ckks": lambda: privagg.get_backend("ckks", preset="test-fast", threads=1),
        "additive": lambda: privagg.get_backend("additive"),
    }[case]()


CASES: list[tuple[str, str, Dealing, Loader]] = [
    ("plain", "plain", Dealing.NONE, _plain),
    ("secagg-passive", "secagg", Dealing.PUBLIC_SEED, _passive),
    ("secagg-active", "secagg", Dealing.DIRECTORY, _active),
    ("paillier", "paillier", Dealing.DEALER, _dealt),
    ("ckks", "ckks", Dealing.DEALER, _dealt),
    ("additive", "additive", Dealing.OWN_KEYS, _own_keys),
]


def _updates() -> dict[str, np.ndarray]:
    g = np.random.default_rng(4)
    return {c: g.uniform(-0.5, 0.5, LAYOUT.size) for c in IDS}


def _round(sessions: Sessions, updates: dict[str, np.ndarray]) -> privagg.Recovered:
    """One round, each role from its own session; client ``i`` draws from
    ``DeterministicRng(i)`` (rounding, noise and per-round secrets)."""
    agg = sessions["aggregator"].aggregator(ROUND, IDS)
    roles: dict[str, Any] = {
        c: sessions[c].client(c, ROUND, updates[c], rng=DeterministicRng(i))
        for i, c in enumerate(IDS)
    }
    for p, s in sessions.items():
        if p.startswith("server-"):
            roles.update(s.servers(ROUND))
    out = agg.start()
    while not agg.done:
        out = agg.receive({p: roles[p].handle(r) for p, r in out.items()})
    rec: privagg.Recovered = sessions["holder"].holder().recover(agg.result())
    return rec


def _in_process(be: Any, noise: Any) -> Sessions:
    one = be.setup(LAYOUT, max_clients=N, noise=noise)
    servers = {p: one for p in key_holders(be) if p.startswith("server-")}
    return {"aggregator": one, "holder": one, **dict.fromkeys(IDS, one), **servers}


@pytest.mark.parametrize(
    ("case", "name", "mode", "load"), CASES, ids=[c[0] for c in CASES]
)
def test_noised_roles_recover_what_setup_with_noise_recovers(
    case: str, name: str, mode: Dealing, load: Loader
) -> None:
    be = _backend(case)
    assert dealing(be) is mode
    sessions = load(be, SHARE)
    ids = {bytes(s.params_id) for s in sessions.values()}
    assert len(ids) == 1  # every role agrees
    ups = _updates()
    got = _round(sessions, ups)
    want = _round(_in_process(be, SHARE), ups)
    clean = _round(load(be, None), ups)
    assert got.contributors == want.contributors == tuple(IDS)
    truth = sum(ups.values())
    if name == "ckks":  # approximate: encryption error (and the holder's flooding)
        tol = be.tolerance(n_clients=N, max_abs=0.5 + 8 * SHARE.stddev)
        np.testing.assert_allclose(got.vector, want.vector, rtol=0, atol=2 * tol)
    else:  # the same client streams: the same rounding and noise, bit for bit
        np.testing.assert_array_equal(got.vector, want.vector)
        tol = be.tolerance(n_clients=N, max_abs=0.5)
        np.testing.assert_allclose(clean.vector, truth, rtol=0, atol=tol + 1e-12)
    # the shares went in: the noised sum differs from the clean one almost everywhere,
    # by about sqrt(3) * 0.05 per coordinate
    moved = np.abs(got.vector - clean.vector)
    assert np.count_nonzero(moved > 1e-3) >= LAYOUT.size - 2
    assert 0.02 < float(np.std(got.vector - truth)) < 0.25


@pytest.mark.parametrize(
    ("case", "name", "mode", "load"), CASES, ids=[c[0] for c in CASES]
)
def test_noise_refused_as_setup_refuses_it(
    case: str, name: str, mode: Dealing, load: Loader
) -> None:
    be = _backend(case)
    # a headroom no ring, slot or modulus can hold (plain has none to exceed)
    huge = DiscreteGaussianShare(1e140)

    def error(fn: Callable[[], object]) -> type[BaseException] | None:
        try:
            fn()
        except privagg.PrivaggError as exc:
            return type(exc)
        return None

    want = error(lambda: be.setup(LAYOUT, max_clients=N, noise=huge))
    got = error(lambda: load(be, huge))
    assert got is want
    assert (want is None) == (name == "plain")
    # not a noise share at all: refused for every role, before any material is read
    for role in Role:
        with pytest.raises(privagg.ConfigurationError, match="NoiseShare"):
            session_for_role(be, LAYOUT, role, max_clients=N, noise=0.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("case", ["paillier", "ckks"])
def test_a_role_without_the_share_is_refused_where_params_id_binds_it(
    case: str,
) -> None:
    be = _backend(case)
    dealt = deal(be, LAYOUT, IDS, max_clients=N)
    assert dealt is not None
    noised = session_for_role(
        be,
        LAYOUT,
        Role.AGGREGATOR,
        material=dealt.aggregator,
        max_clients=N,
        noise=SHARE,
    )
    bare = session_for_role(
        be, LAYOUT, Role.AGGREGATOR, material=dealt.aggregator, max_clients=N
    )
    other = session_for_role(
        be,
        LAYOUT,
        Role.AGGREGATOR,
        material=dealt.aggregator,
        max_clients=N,
        noise=DiscreteGaussianShare(0.06),
    )
    assert len({noised.params_id, bare.params_id, other.params_id}) == 3  # type: ignore[attr-defined]
    client = session_for_role(
        be,
        LAYOUT,
        Role.CLIENT,
        party_id=IDS[0],
        material=dealt.clients[IDS[0]],
        max_clients=N,
        noise=SHARE,
    )
    # the noiseless aggregator's request is refused by the noised client
    role = client.client(IDS[0], ROUND, np.zeros(LAYOUT.size))
    (request,) = bare.aggregator(ROUND, IDS[:1]).start().values()
    with pytest.raises(privagg.ParameterMismatchError):
        role.handle(request)


class _OldLoader:
    """A backend whose role loader predates distributed noise (no ``noise=``)."""

    name = "old-loader"

    def __init__(self) -> None:
        self._plain = privagg.get_backend("plain")

    def setup(self, layout: Any, **kw: Any) -> Any:
        return self._plain.setup(layout, **kw)

    def dealing(self) -> Dealing:
        return Dealing.DEALER

    def deal(self, layout: Any, party_ids: Any, **kw: Any) -> Any:
        return self._plain.deal(layout, party_ids, **kw)

    def load_role(
        self,
        layout: Any,
        role: str,
        party_id: str | None,
        material: bytes,
        *,
        max_clients: int,
        max_weight: float = 1.0,
    ) -> Any:
        return self._plain.load_role(
            layout, role, party_id, material, max_clients=max_clients
        )


def test_a_loader_without_noise_still_loads_without_and_refuses_one() -> None:
    be: Any = _OldLoader()
    s = session_for_role(be, LAYOUT, Role.HOLDER, material=b"", max_clients=N)
    assert s.layout == LAYOUT
    with pytest.raises(privagg.UnsupportedError, match="noise"):
        session_for_role(
            be, LAYOUT, Role.HOLDER, material=b"", max_clients=N, noise=SHARE
        )
