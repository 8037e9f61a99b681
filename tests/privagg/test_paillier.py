"""Paillier backend: contract suite plus packing, boundary, tamper, key and speed checks.

Tests use :meth:`PaillierBackend._insecure_for_tests` (tiny, **insecure** moduli) for
speed; one test runs the real 3072-bit default and one the explicit 2048-bit size.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import math
import pickle
import types

import gmpy2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import privagg
from privagg import (
    ConfigurationError,
    DeserializationError,
    EncodingOverflowError,
    Layout,
    MissingKeyError,
    NoProtection,
    ParameterMismatchError,
    PasswordProtection,
    SecretKey,
)
from privagg._oneshot import OneShotSession
from privagg.backends.paillier import (
    PaillierBackend,
    PaillierPublicKey,
    load_secret_key,
)
from privagg.backends.paillier._fastexp import _encrypt_djn
from privagg.backends.paillier._slots import MARGIN_BITS, SlotLayout
from privagg.backends.paillier.backend import _ClientCodec
from privagg.backends.paillier.keys import _PrivateMaterial
from privagg.encoding import FixedPointEncoder
from privagg.hazmat import DeterministicRng
from privagg.messages import AggregateMessage
from tests.privagg.contract.backend_contract import BackendContract

TEST_BITS = 512


def _backend(**opts: object) -> PaillierBackend:
    opts.setdefault("workers", 1)
    return PaillierBackend._insecure_for_tests(TEST_BITS, **opts)  # type: ignore[arg-type]


class TestPaillierContract(BackendContract):
    max_clients = 4

    def make_backend(self) -> PaillierBackend:
        return _backend()

    def secrets(self, session: object) -> list[object]:
        assert isinstance(session, OneShotSession)
        return [session.holder().codec.secret_key]  # type: ignore[attr-defined]


_ROUND_IDS = itertools.count(100)


def _round(
    session: OneShotSession,
    vecs: dict[str, np.ndarray],
    weights: dict[str, float] | None = None,
    rng: privagg.Rng | None = None,
    recover: bool = True,
) -> tuple[bytes, privagg.Recovered | None]:
    # a fresh round id per call: the holder refuses a round id it already recovered
    round_id = next(_ROUND_IDS)
    agg = session.aggregator(round_id, list(vecs))
    reqs = agg.start()
    w = weights or {}
    replies = {
        cid: session.client(
            cid, round_id, vecs[cid], weight=w.get(cid, 1.0), rng=rng
        ).handle(r)
        for cid, r in reqs.items()
    }
    agg.receive(replies)
    result = agg.result()
    return result, (session.holder().recover(result) if recover else None)


# -- options ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "opts",
    [
        {"key_bits": 1024},
        {"key_bits": 4096},
        {"key_bits": True},
        {"bound": 0.0},
        {"bound": float("inf")},
        {"scale_bits": 60},
        {"scale_bits": 1.5},
        {"clip": 1},
        {"workers": 0},
        {"workers": True},
    ],
)
def test_bad_options_rejected(opts: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        PaillierBackend(**opts)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        privagg.get_backend("paillier", **opts)


def test_registry_and_public_key_sizes() -> None:
    be = privagg.get_backend("paillier", key_bits=3072, bound=2.0)
    assert isinstance(be, PaillierBackend) and be.effective_key_bits == 3072
    assert PaillierBackend().effective_key_bits == 3072  # ~128-bit (review #11)
    assert PaillierBackend(key_bits=2048).effective_key_bits == 2048
    assert "INSECURE" in repr(_backend()) and "INSECURE" not in repr(be)
    with pytest.raises(ConfigurationError):
        privagg.get_backend("paillier", _insecure_key_bits=512)


@pytest.mark.parametrize(
    "mc, mw", [(0, 1.0), (True, 1.0), (2, 0.0), (2, float("nan")), (2, -1.0)]
)
def test_bad_setup_arguments(mc: int, mw: float) -> None:
    layout = Layout.from_arrays({"a": np.zeros(3)})
    with pytest.raises(ConfigurationError):
        _backend().setup(layout, max_clients=mc, max_weight=mw)


# -- keys ---------------------------------------------------------------------------------
def test_keygen_uses_injected_rng_and_is_well_formed() -> None:
    be = _backend()
    pk1, sk1 = be.keygen(DeterministicRng(7))
    pk2, _ = be.keygen(DeterministicRng(7))
    pk3, _ = be.keygen(DeterministicRng(8))
    assert pk1 == pk2 and pk1 != pk3
    assert pk1.n.bit_length() == TEST_BITS
    m: _PrivateMaterial = sk1.unsafe_material()
    p, q = m.phe.p, m.phe.q
    assert gmpy2.is_prime(p) and gmpy2.is_prime(q) and p * q == pk1.n
    assert p.bit_length() == q.bit_length() == TEST_BITS // 2
    assert 1 < pk1.hs < pk1.n**2 and math.gcd(pk1.hs, pk1.n) == 1
    # h_s is an n-th residue: h_s**(lambda) == 1 mod n**2
    assert pow(pk1.hs, (p - 1) * (q - 1), pk1.n**2) == 1


def test_decryption_matches_phe() -> None:
    pk, sk = _backend().keygen(DeterministicRng(1))
    m: _PrivateMaterial = sk.unsafe_material()
    rng = np.random.default_rng(0)
    msgs = [0, 1, pk.n - 1] + [
        int.from_bytes(rng.bytes(60), "big") % pk.n for _ in range(20)
    ]
    cts = [
        _encrypt_djn(pk.n, pk.hs, x, int.from_bytes(rng.bytes(32), "big")) for x in msgs
    ]
    ours = [int(v) for v in m.decrypt_many([gmpy2.mpz(c) for c in cts])]
    assert ours == msgs == [m.phe.raw_decrypt(c) for c in cts]
    phe_ct = pk.phe.raw_encrypt(12345)
    assert int(m.decrypt_many([gmpy2.mpz(phe_ct)])[0]) == 12345


def test_secret_key_export_import_and_hygiene() -> None:
    be = _backend()
    layout = Layout.from_arrays({"a": np.zeros(5)})
    pk, sk = be.keygen()
    for prot in (NoProtection(), PasswordProtection("correct horse battery")):
        data = sk.to_bytes(protection=prot)
        assert str(pk.n) not in repr(data)
        sk2 = load_secret_key(data, prot)
        assert sk2 == sk
    with pytest.raises(DeserializationError):
        load_secret_key(
            sk.to_bytes(protection=PasswordProtection("pw-1234567")),
            PasswordProtection("other-pw-99"),
        )
    with pytest.raises(TypeError):
        pickle.dumps(sk.unsafe_material())
    assert str(sk.unsafe_material().phe.p) not in repr(sk.unsafe_material()) + repr(sk)
    # cross-machine: clients/aggregator build sessions from the public key alone
    holder_s = be.session(layout, pk, sk2, max_clients=3)
    public_s = be.session(
        layout, PaillierPublicKey.from_bytes(pk.to_bytes()), max_clients=3
    )
    assert holder_s.params_id == public_s.params_id
    with pytest.raises(MissingKeyError):
        public_s.holder()
    vecs = {"a": np.full(5, 0.5), "b": np.full(5, -0.25)}
    result, _ = _round(public_s, vecs, recover=False)
    rec = holder_s.holder().recover(result)
    np.testing.assert_allclose(
        rec.vector, np.full(5, 0.25), atol=be.tolerance(n_clients=2, max_abs=1.0)
    )
    # no key material reaches the client/aggregator objects: they pickle fine
    pickle.dumps(public_s.aggregator(0, ["a"]))
    _, other_sk = be.keygen()
    with pytest.raises(ConfigurationError):
        be.session(layout, pk, other_sk, max_clients=3)
    with pytest.raises(DeserializationError):
        PaillierPublicKey.from_bytes(pk.to_bytes()[:-1])


def test_public_key_carries_h_and_derives_hs_itself() -> None:
    """Review finding: a supplied h_s = 1 + n (not an n-th residue) made c readable."""
    pk, sk = _backend().keygen(DeterministicRng(5))
    m: _PrivateMaterial = sk.unsafe_material()
    p, q = m.phe.p, m.phe.q
    n, nn = pk.n, pk.n**2
    # the wire form is (key_bits, n, h) only: h_s is derived, never read
    assert 1 < pk.h < n - 1 and math.gcd(pk.h, n) == 1
    assert pk.hs == pow(pk.h, n, nn)
    assert (
        str(pk.hs) not in repr(pk)
        and pk.hs.to_bytes(2 * TEST_BITS // 8, "big") not in pk.to_bytes()
    )
    loaded = PaillierPublicKey.from_bytes(pk.to_bytes())
    assert loaded == pk and loaded.hs == pk.hs and loaded.fingerprint == pk.fingerprint
    # whatever h is supplied, h_s = h**n is an n-th residue (h_s**lambda == 1 mod n**2),
    # so ciphertexts stay textbook Paillier with r = h**a mod n
    for h in (2, 3, n - 2, pk.h):
        hs = PaillierPublicKey(n, h, TEST_BITS).hs
        assert pow(hs, (p - 1) * (q - 1), nn) == 1 and hs != 1 + n
    # the reviewer's key (n, 1 + n) cannot be expressed: 1 + n is not a valid h ...
    with pytest.raises(ConfigurationError):
        PaillierPublicKey(n, 1 + n, TEST_BITS)
    # ... nor can h = +-1 (h_s = +-1: no randomness), h = 0, or a non-unit
    for bad in (0, 1, n - 1, n, p):
        with pytest.raises(ConfigurationError):
            PaillierPublicKey(n, bad, TEST_BITS)
    # ... and neither form survives the wire: the v2 encoding with h = 1 + n or h = 1,
    # or the pre-v2 encoding that carried h_s itself
    from privagg.envelope import PayloadWriter

    for tag, h in (
        ("paillier-pk/v2", 1 + n),
        ("paillier-pk/v2", 1),
        ("paillier-pk/v1", 1 + n),
        ("paillier-pk/v1", pk.hs),
    ):
        forged = (
            PayloadWriter().text(tag).u32(TEST_BITS).int_big(n).int_big(h).getvalue()
        )
        with pytest.raises(DeserializationError):
            PaillierPublicKey.from_bytes(forged)


def test_reviewer_hs_attack_no_longer_reads_ciphertexts() -> None:
    """/tmp/review/hs.py: with h_s = 1 + n, (c - 1) / n revealed m + a. Now every
    party's h_s is h**n, and (c - 1) / n mod n is unrelated to the plaintext."""
    be = _backend()
    pk, _ = be.keygen(DeterministicRng(6))
    layout = Layout.from_arrays({"w": np.zeros(23)})
    s = be.session(layout, PaillierPublicKey.from_bytes(pk.to_bytes()), max_clients=2)
    codec = s.client_codec
    pts = codec.encode(np.linspace(-1, 1, 23), 1.0, DeterministicRng(1))  # type: ignore[attr-defined]
    (c,) = codec.encrypt(pts, DeterministicRng(2))  # type: ignore[attr-defined]
    n = pk.n
    leaked = ((int(c) - 1) // n) % n
    a_bound = 1 << pk.exponent_bits
    # under the attack leaked - m was the exponent a < 2**ceil(k/2); now it is not
    assert not 0 <= (leaked - pts[0]) % n < a_bound


def test_public_key_fingerprint_from_trusted_source() -> None:
    be = _backend()
    pk, _ = be.keygen(DeterministicRng(7))
    attacker, _ = be.keygen(
        DeterministicRng(8)
    )  # a fully substituted key is well formed
    assert (
        PaillierPublicKey.from_bytes(pk.to_bytes(), expected_fingerprint=pk.fingerprint)
        == pk
    )
    with pytest.raises(ParameterMismatchError):
        PaillierPublicKey.from_bytes(
            attacker.to_bytes(), expected_fingerprint=pk.fingerprint
        )
    layout = Layout.from_arrays({"w": np.zeros(4)})
    assert (
        be.session(layout, pk, max_clients=2).params_id
        != be.session(layout, attacker, max_clients=2).params_id
    )


@dataclasses.dataclass(frozen=True)
class _GaussLike:
    """Stand-in NoiseShare (only headroom and stddev matter for params_id)."""

    stddev: float

    def sample_encoded(self, n: int, *, scale: float, rng: privagg.Rng) -> np.ndarray:
        return np.zeros(n, dtype=np.int64)

    def sample_real(self, n: int, *, rng: privagg.Rng) -> np.ndarray:
        return np.zeros(n)

    def headroom(self, n_clients: int) -> float:
        return 10.0 * self.stddev * math.sqrt(n_clients)


class _SkellamLike(_GaussLike):
    """Same stddev and headroom as _GaussLike, another distribution."""


def test_params_id_binds_session_options_and_noise() -> None:
    be = _backend()
    pk, _ = be.keygen(DeterministicRng(9))
    layout = Layout.from_arrays({"w": np.zeros(4)})

    def pid(**kw: object) -> bytes:
        kw.setdefault("max_clients", 3)
        return be.session(layout, pk, **kw).params_id  # type: ignore[arg-type]

    ids = [
        pid(),
        pid(max_clients=4),
        pid(max_weight=2.0),
        pid(noise=_GaussLike(0.5)),
        pid(noise=_GaussLike(0.25)),
        pid(noise=_SkellamLike(0.5)),
    ]
    assert len(set(ids)) == len(ids)
    assert pid() == pid() and pid(noise=_SkellamLike(0.5)) == pid(
        noise=_SkellamLike(0.5)
    )


# -- packing and headroom -------------------------------------------------------------------
def test_slot_width_is_encoder_sum_bits_and_slots_fill_the_key() -> None:
    for mc, mw in [(1, 1.0), (5, 1.0), (100, 3.5), (3, 0.25)]:
        be = _backend(scale_bits=16, bound=1.0)
        slots = be.session_check(
            Layout.from_arrays({"a": np.zeros(1000)}), max_clients=mc, max_weight=mw
        )
        w = FixedPointEncoder(1.0, 16).sum_bits(mc, max_weight=mw)
        assert slots.slot_bits == w
        assert slots.slots == (TEST_BITS - 1 - MARGIN_BITS) // w
        assert slots.total_bits <= TEST_BITS - 1 - MARGIN_BITS < slots.total_bits + w
    # 2048-bit, 5 clients, bound 1, 16 bits: 20-bit slots, 99 per ciphertext
    s = PaillierBackend(key_bits=2048).session_check(
        Layout.from_arrays({"a": np.zeros(100_000)}), max_clients=5
    )
    assert (s.slot_bits, s.slots, s.n_plaintexts) == (20, 99, 1011)


def test_slot_boundary_is_tight() -> None:
    """Slot sums at both ends of [-2**(w-1), 2**(w-1)) decode; one beyond carries."""
    w = 12
    k = (TEST_BITS - 1 - MARGIN_BITS) // w
    nv = 2 * k  # two full plaintexts
    lay = SlotLayout.for_key(key_bits=TEST_BITS, slot_bits=w, n_values=nv)
    half = 1 << (w - 1)
    n = (1 << (TEST_BITS - 1)) + 1  # any modulus > 2**(w*k) shows the arithmetic

    def total(vals: list[np.ndarray]) -> list[int]:
        packed = [lay.pack(v) for v in vals]
        return [
            (sum(col) % n + lay.offset_pattern) % n for col in zip(*packed, strict=True)
        ]

    hi = np.full(nv, half - 1, dtype=np.int64)
    lo = np.full(nv, -half, dtype=np.int64)
    # sums built from several contributions, landing exactly on the extremes
    parts_hi = [hi - 2 * (half // 4), np.full(nv, half // 4), np.full(nv, half // 4)]
    parts_lo = [lo + half // 2, np.full(nv, -(half // 2), dtype=np.int64)]
    assert [int(x) for x in lay.unpack(total(parts_hi))] == [half - 1] * nv
    assert [int(x) for x in lay.unpack(total(parts_lo))] == [-half] * nv
    # one beyond the maximum in slot 0: it wraps and carries into slot 1
    one = np.zeros(nv, dtype=np.int64)
    one[0] = 1
    at_max = np.zeros(nv, dtype=np.int64)
    at_max[0] = half - 1
    assert [int(x) for x in lay.unpack(total([at_max]))][:2] == [half - 1, 0]
    bad = [int(x) for x in lay.unpack(total([at_max, one]))]
    assert bad[:3] == [-half, 1, 0]  # slot 0 wrapped, slot 1 received the carry
    # one beyond in every slot: the top slot carries out of the packed range (detected)
    with pytest.raises(ValueError):
        lay.unpack(total([hi, np.ones(nv, dtype=np.int64)]))
    # one below the minimum: a borrow, the top slot underflows (detected)
    with pytest.raises(ValueError):
        lay.unpack(total([lo, -np.ones(nv, dtype=np.int64)]))
    # a single value outside its slot is refused before anything is encrypted
    with pytest.raises(EncodingOverflowError):
        lay.pack(np.full(nv, half, dtype=np.int64))
    with pytest.raises(EncodingOverflowError):
        lay.pack(np.full(nv, -half - 1, dtype=np.int64))


@pytest.fixture
def no_encrypt(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    # every encryption (protect's streamed one and the encrypt hook) starts by drawing
    # its exponents in _encryptor
    calls: list[int] = []
    orig = _ClientCodec._encryptor

    def spy(self: _ClientCodec, count: int, rng: privagg.Rng) -> object:
        calls.append(count)
        return orig(self, count, rng)

    monkeypatch.setattr(_ClientCodec, "_encryptor", spy)
    return calls


def test_headroom_exactly_at_maximum_passes_one_beyond_fails_before_encryption(
    no_encrypt: list[int],
) -> None:
    bound, mw, mc = 1.0, 2.0, 3
    be = _backend(bound=bound, scale_bits=16)
    layout = Layout.from_arrays({"a": np.zeros(50)})
    session = be.setup(layout, max_clients=mc, max_weight=mw)
    slots = session.client_codec.params.slots  # type: ignore[attr-defined]
    per = math.ceil(mw * bound * 2**16)
    assert mc * per < slots.offset  # the guarantee the test exercises
    # every client at +bound or -bound with the maximum weight: the extreme slot sums
    for sign in (1.0, -1.0):
        vecs = {f"c{i}": np.full(50, sign * bound) for i in range(mc)}
        _, rec = _round(session, vecs, dict.fromkeys(vecs, mw))
        assert np.array_equal(rec.vector, np.full(50, sign * mc * mw * bound))  # exact
    mixed = {
        f"c{i}": np.where(np.arange(50) % 2 == 0, bound, -bound) for i in range(mc)
    }
    _, rec = _round(session, mixed, dict.fromkeys(mixed, mw))
    assert np.array_equal(
        rec.vector, np.where(np.arange(50) % 2 == 0, 1.0, -1.0) * mc * mw * bound
    )
    assert no_encrypt
    no_encrypt.clear()
    # one beyond: a value above the bound, a weight above max_weight
    beyond = np.full(50, bound)
    beyond[17] = np.nextafter(bound, np.inf)
    req = session.aggregator(1, ["c0"]).start()["c0"]
    with pytest.raises(EncodingOverflowError):
        session.client("c0", 1, beyond, weight=mw).handle(req)
    with pytest.raises(EncodingOverflowError):
        session.client(
            "c0", 1, np.full(50, bound), weight=float(np.nextafter(mw, np.inf))
        ).handle(req)
    assert no_encrypt == []  # nothing was encrypted
    # one contribution too many: refused by the aggregator and by the holder
    vecs = {f"c{i}": np.zeros(50) for i in range(mc + 1)}
    agg = session.aggregator(2, list(vecs))
    reqs = agg.start()
    with pytest.raises(EncodingOverflowError):
        agg.receive(
            {c: session.client(c, 2, vecs[c]).handle(r) for c, r in reqs.items()}
        )
    # (not recovered first: the holder would refuse the forged copy as a replayed round)
    result, _ = _round(
        session, {f"c{i}": np.zeros(50) for i in range(mc)}, recover=False
    )
    msg = AggregateMessage.from_bytes(result)
    forged = AggregateMessage(
        msg.scheme, msg.params_id, msg.round_id, (*msg.contributors, "x"), msg.body
    )
    with pytest.raises(EncodingOverflowError):
        session.holder().recover(forged.to_bytes())


def test_capacity_overflow_refused_at_setup() -> None:
    be = _backend(bound=1e3, scale_bits=52)
    layout = Layout.from_arrays({"a": np.zeros(4)})
    with pytest.raises(EncodingOverflowError):
        be.setup(layout, max_clients=2**400, max_weight=1.0)
    # the largest max_clients that fits still works (slot = all usable bits)
    big = _backend(bound=1.0, scale_bits=16)
    usable = TEST_BITS - 1 - MARGIN_BITS
    enc = FixedPointEncoder(1.0, 16)
    mc = (2 ** (usable - 1) - 1) // (enc.max_abs_int + 1)
    assert enc.sum_bits(mc) == usable and enc.sum_bits(mc + 1) == usable + 1
    s = big.setup(layout, max_clients=mc)
    _, rec = _round(s, {"a": np.ones(4), "b": -np.ones(4), "c": np.full(4, 0.5)})
    assert np.array_equal(rec.vector, np.full(4, 0.5))
    with pytest.raises(EncodingOverflowError):
        big.setup(layout, max_clients=mc + 1)


def test_clip_option() -> None:
    layout = Layout.from_arrays({"a": np.zeros(4)})
    s = _backend(clip=True, bound=1.0).setup(layout, max_clients=2)
    _, rec = _round(s, {"a": np.array([5.0, -5.0, 0.5, 1.0]), "b": np.zeros(4)})
    assert np.array_equal(rec.vector, np.array([1.0, -1.0, 0.5, 1.0]))


def test_large_slots_beyond_int64_path() -> None:
    """Slots wider than 62 bits use the exact Python-int path."""
    be = _backend(bound=1000.0, scale_bits=50)
    layout = Layout.from_arrays({"a": np.zeros(6)})
    s = be.setup(layout, max_clients=8, max_weight=4.0)
    assert s.client_codec.params.slots.slot_bits > 62  # type: ignore[attr-defined]
    vals = {
        "a": np.array([1000.0, -1000.0, 0.0, 1.5, -2.25, 999.0]),
        "b": np.full(6, -1000.0),
    }
    _, rec = _round(s, vals, {"a": 4.0, "b": 4.0})
    np.testing.assert_array_equal(rec.vector, 4.0 * (vals["a"] + vals["b"]))


# -- weights, noise --------------------------------------------------------------------------
def test_integer_and_fixed_point_weights() -> None:
    layout = Layout.from_arrays({"a": np.zeros(40)})
    s = _backend().setup(layout, max_clients=3, max_weight=7.0)
    rng = np.random.default_rng(3)
    vecs = {c: rng.uniform(-1, 1, 40) for c in ("a", "b", "c")}
    for weights in ({"a": 7.0, "b": 3.0, "c": 0.0}, {"a": 0.125, "b": 2.5, "c": 6.75}):
        _, rec = _round(s, vecs, weights)
        ref = sum(weights[c] * vecs[c] for c in vecs)
        assert np.max(np.abs(rec.vector - ref)) <= _backend().tolerance(
            n_clients=3, max_abs=7.0
        )


class _FixedNoise:
    """A deterministic stand-in for a DP noise share (test only)."""

    def __init__(self, value: int, head: float) -> None:
        self.value, self.head = value, head

    def sample_encoded(self, n: int, *, scale: float, rng: privagg.Rng) -> np.ndarray:
        return np.full(n, self.value, dtype=np.int64)

    def sample_real(self, n: int, *, rng: privagg.Rng) -> np.ndarray:
        return np.full(n, float(self.value))

    def headroom(self, n_clients: int) -> float:
        return self.head


def test_noise_is_added_in_encoded_units_with_reserved_headroom() -> None:
    layout = Layout.from_arrays({"a": np.zeros(10)})
    be = _backend(scale_bits=8)
    plain = be.session_check(layout, max_clients=3)
    noisy = be.session_check(layout, max_clients=3, noise=_FixedNoise(-3, 1000.0))
    assert noisy.slot_bits > plain.slot_bits
    s = be.setup(layout, max_clients=3, noise=_FixedNoise(-3, 1000.0))
    _, rec = _round(s, {"a": np.full(10, 1.0), "b": np.full(10, -0.5)})
    np.testing.assert_array_equal(rec.vector, np.full(10, 0.5 - 2 * 3 / 256))


# -- tampering, wrong key, leaks --------------------------------------------------------------
def _body(session: OneShotSession, cts: list[int]) -> bytes:
    from privagg.backends.paillier.backend import _write_body

    return _write_body(session.client_codec.params, cts)  # type: ignore[attr-defined]


def test_tampered_ciphertexts_rejected() -> None:
    layout = Layout.from_arrays({"a": np.zeros(30)})
    s = _backend().setup(layout, max_clients=3)
    params = s.client_codec.params  # type: ignore[attr-defined]
    n = params.public.n
    good = s.client_codec.protect(np.zeros(30), 1.0, privagg.SystemRng())
    k = params.n_ciphertexts
    p = s.holder().codec.secret_key.unsafe_material().phe.p  # type: ignore[attr-defined]
    for bad in ([0] * k, [n * n] * k, [n * n + 5] * k, [p] * k, [n] * k):
        with pytest.raises(DeserializationError):
            s.combine_codec.combine([good, _body(s, bad)])
    for junk in (
        b"",
        good[:-1],
        good + b"\x00",
        b"\x02" + good[1:],
        good[:1] + b"\xff" + good[2:],
    ):
        with pytest.raises(DeserializationError):
            s.combine_codec.combine([junk])
    with pytest.raises(DeserializationError):  # the holder checks units too
        s.holder().codec.recover(_body(s, [p] * k), 1)  # type: ignore[attr-defined]
    # a unit that is not a valid encryption of a packed vector: caught by the range check
    agg = s.combine_codec.combine([good, _body(s, [pow(3, 65537, n * n)] * k)])
    with pytest.raises(DeserializationError):
        s.holder().codec.recover(agg, 2)  # type: ignore[attr-defined]


def test_wrong_key_rejected() -> None:
    layout = Layout.from_arrays({"a": np.zeros(30)})
    be = _backend()
    s_a, s_b = be.setup(layout, max_clients=3), be.setup(layout, max_clients=3)
    result, _ = _round(s_a, {"x": np.full(30, 0.5), "y": np.full(30, 0.25)})
    with pytest.raises(ParameterMismatchError):
        s_b.holder().recover(result)
    body = AggregateMessage.from_bytes(result).body
    with pytest.raises(
        DeserializationError
    ):  # out of range, or garbage after decryption
        s_b.holder().codec.recover(body, 2)  # type: ignore[attr-defined]


def test_nothing_about_magnitude_leaks_in_the_wire_format() -> None:
    layout = Layout.from_arrays({"a": np.zeros(100)})
    s = _backend(bound=1000.0).setup(layout, max_clients=2)
    codec = s.client_codec
    width = s.client_codec.params.public.ciphertext_bytes  # type: ignore[attr-defined]
    k = s.client_codec.params.n_ciphertexts  # type: ignore[attr-defined]
    bodies = [
        codec.protect(v, 1.0, privagg.SystemRng())
        for v in (
            np.zeros(100),
            np.full(100, 1000.0),
            np.full(100, -1e-9),
            np.linspace(-1000, 1000, 100),
        )
    ]
    # fixed-size body: version, count, blob length, k fixed-width ciphertexts; no exponents
    assert {len(b) for b in bodies} == {1 + 4 + 8 + k * width}
    # semantic security: encrypting the same vector twice gives unrelated ciphertexts
    a1 = codec.protect(np.zeros(100), 1.0, privagg.SystemRng())
    a2 = codec.protect(np.zeros(100), 1.0, privagg.SystemRng())
    assert a1 != a2


def test_deterministic_rng_threads_and_fixed_base_table_agree() -> None:
    layout = Layout.from_arrays({"a": np.zeros(2000)})  # > 32 ciphertexts: table path
    pk, sk = _backend().keygen(DeterministicRng(3))
    s1 = _backend(workers=1).session(layout, pk, sk, max_clients=2)
    s2 = _backend(workers=2).session(layout, pk, sk, max_clients=2)
    v = np.random.default_rng(0).uniform(-1, 1, 2000)
    b1 = s1.client_codec.protect(v, 1.0, DeterministicRng(9))
    b2 = s2.client_codec.protect(v, 1.0, DeterministicRng(9))
    assert b1 == b2
    # same exponents through plain powmod (no table) give the same ciphertexts
    codec = s1.client_codec
    pts = codec.encode(v, 1.0, DeterministicRng(9))  # type: ignore[attr-defined]
    n_ct = len(pts)
    assert n_ct >= 32
    small = codec.encrypt(pts[:5], DeterministicRng(11))  # type: ignore[attr-defined]
    codec._table = None  # type: ignore[attr-defined]
    again = codec.encrypt(pts[:5], DeterministicRng(11))  # type: ignore[attr-defined]
    assert small == again
    agg = s2.combine_codec.combine([b1, b2])
    out = s2.holder().codec.recover(agg, 2)  # type: ignore[attr-defined]
    assert np.max(np.abs(out - 2 * v)) <= 2 * 2**-16 + 1e-12


def test_default_3072_bit_round() -> None:
    be = PaillierBackend(workers=1)  # the default: 3072 bits, ~128-bit security
    assert be.effective_key_bits == 3072
    layout = Layout.from_arrays({"w": np.zeros(200)})
    # keygen from a fixed seed: the same primes (and test time) on every run
    s = be.setup(layout, max_clients=2, rng=DeterministicRng(3072))
    w = FixedPointEncoder(1.0, 16).sum_bits(2)
    assert s.client_codec.params.slots.slots == (3072 - 65) // w  # type: ignore[attr-defined]
    vecs = {"a": np.linspace(-1, 1, 200), "b": np.full(200, 0.5)}
    _, rec = _round(s, vecs)
    assert rec is not None
    assert np.max(np.abs(rec.vector - (vecs["a"] + 0.5))) <= be.tolerance(
        n_clients=2, max_abs=1.0
    )


def test_explicit_2048_bit_round() -> None:
    be = privagg.get_backend("paillier", key_bits=2048, workers=2)  # ~112-bit, opt-in
    ups = [{"w": np.linspace(-1, 1, 300)}, {"w": np.linspace(1, -1, 300) * 0.5}]
    out = privagg.secure_sum(ups, backend=be, weights=[1.0, 0.5])
    ref = ups[0]["w"] + 0.5 * ups[1]["w"]
    assert np.max(np.abs(out["w"] - ref)) <= be.tolerance(n_clients=2, max_abs=1.0)


def _reachable(root: object) -> list[object]:
    """Instances reachable from ``root`` (not through modules, classes or functions)."""
    skip = (
        type,
        types.ModuleType,
        types.FunctionType,
        types.BuiltinFunctionType,
        types.MethodType,
    )
    seen: set[int] = set()
    out: list[object] = []
    stack = [root]
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(o, skip):
            continue
        seen.add(id(o))
        out.append(o)
        stack.extend(gc.get_referents(o))
    return out


def test_secret_key_reachable_only_from_the_holder() -> None:
    layout = Layout.from_arrays({"a": np.zeros(8)})
    s = _backend().setup(layout, max_clients=2)
    roles = [
        s.client("a", 0, np.zeros(8)),
        s.aggregator(0, ["a"]),
        s.client_codec,
        s.combine_codec,
    ]
    for role in roles:
        assert not any(
            isinstance(o, (SecretKey, _PrivateMaterial)) for o in _reachable(role)
        ), role
    assert any(isinstance(o, SecretKey) for o in _reachable(s.holder()))


@given(
    w=st.integers(2, 70),
    n_parts=st.integers(1, 6),
    data=st.data(),
)
def test_packing_sums_within_headroom_are_exact(
    w: int, n_parts: int, data: st.DataObject
) -> None:
    half = 1 << (w - 1)
    lo, hi = -min(half // n_parts, 1 << 62), min((half - 1) // n_parts, 1 << 62)
    nv = data.draw(st.integers(1, 60), label="nv")
    lay = SlotLayout.for_key(key_bits=TEST_BITS, slot_bits=w, n_values=nv)
    n = (1 << (TEST_BITS - 1)) + 3
    parts = [
        np.asarray(
            data.draw(st.lists(st.integers(lo, hi), min_size=nv, max_size=nv)),
            dtype=np.int64,
        )
        for _ in range(n_parts)
    ]
    packed = [lay.pack(p) for p in parts]
    totals = [
        (sum(col) % n + lay.offset_pattern) % n for col in zip(*packed, strict=True)
    ]
    assert [int(x) for x in lay.unpack(totals)] == [
        int(sum(int(p[i]) for p in parts)) for i in range(nv)
    ]


def test_streamed_codecs_keep_the_bytes_of_the_list_based_ones() -> None:
    """Issue #13: the block-wise client and aggregator write the same bytes as the
    list-based codecs they replaced (digests recorded with those, same seeds)."""
    import hashlib

    be = PaillierBackend._insecure_for_tests(512, workers=2)
    layout = Layout.from_arrays({"w": np.zeros(5000)})
    s = be.setup(layout, max_clients=3, rng=DeterministicRng(1))
    v = np.random.default_rng(0).uniform(-1, 1, 5000)
    b1 = s.client_codec.protect(v, 1.0, DeterministicRng(5))
    b2 = s.client_codec.protect(-v, 0.5, DeterministicRng(6))
    agg = s.combine_codec.combine([b1, b2])  # type: ignore[attr-defined]
    assert hashlib.sha256(b1).hexdigest()[:16] == "58c08f047971732b"
    assert hashlib.sha256(agg).hexdigest()[:16] == "c9e8d1cb71613fe0"
    out = s.holder().codec.recover(agg, 2)  # type: ignore[attr-defined]
    assert hashlib.sha256(out.tobytes()).hexdigest()[:16] == "39d04412f51b184e"
