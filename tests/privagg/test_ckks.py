"""CKKS backend: the contract suite (two presets) plus CKKS-specific checks."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import tenseal.sealapi as seal
from hypothesis import given, settings
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
)
from privagg.backends._ckks_params import HE_STANDARD_MAX_BITS, PRESETS, CkksParams
from privagg.backends.ckks import (
    CkksBackend,
    CkksPublicContext,
    CkksSecretContext,
    EncryptedUpdate,
    keygen,
)
from privagg.backends.ckks._bits import _pack, _unpack
from privagg.backends.ckks.backend import _RecoverCodec
from privagg.envelope import PayloadReader, PayloadWriter
from privagg.hazmat import DeterministicRng
from privagg.hazmat.ckks import raw_decrypt
from privagg.messages import Contribution
from privagg.protocols import Session
from tests.privagg.contract.backend_contract import BackendContract


class TestCkksSecureContract(BackendContract):
    """The contract on the default preset ("compact" has its own hypothesis tests below;
    one contract subclass per function keeps hypothesis' executor check happy)."""

    max_clients = 4

    def make_backend(self) -> CkksBackend:
        return CkksBackend(threads=1)

    def secrets(self, session: Session) -> list[object]:
        return [session.ckks_keys.secret_key]  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def keys() -> CkksSecretContext:
    return keygen("compact")


@pytest.fixture(scope="module")
def other_keys() -> CkksSecretContext:
    return keygen("compact")


# -- parameters ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_meet_he_standard_128_bit(name: str) -> None:
    p = PRESETS[name]
    assert p.total_bits <= HE_STANDARD_MAX_BITS[p.poly_modulus_degree]
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(p.poly_modulus_degree)
    parms.set_coeff_modulus(
        seal.CoeffModulus.Create(p.poly_modulus_degree, p.coeff_mod_bit_sizes)
    )
    ctx = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
    assert ctx.parameters_set()


@pytest.mark.parametrize(
    "options",
    [
        {"poly_modulus_degree": 3000},
        {
            "poly_modulus_degree": 4096,
            "data_bits": (60, 40),
            "special_bits": 20,
        },  # 120 > 109
        {"data_bits": (61, 60)},
        {"data_bits": (19, 60)},
        {"data_bits": ()},
        {"data_bits": "60"},
        {"preset": "compact", "data_bits": (60, 30), "special_bits": None},
        {
            "preset": "compact",
            "scale_bits": 58,
        },  # TenSEAL would say "scale out of bounds"
        {"preset": "compact", "scale_bits": 70},
        {"scale_bits": 10},
        {"value_bound": float("nan")},
        {"value_bound": 0.0},
        {"value_bound": 2.0**60},
        {"flood_bits": -1},
        {"flood_bits": 1.5},
        {"threads": 0},
        {"preset": "nope"},
    ],
)
def test_bad_custom_parameters_raise_configuration_error(options: dict) -> None:
    with pytest.raises(ConfigurationError):
        CkksBackend(**options)


def test_custom_path_accepts_valid_parameters() -> None:
    be = CkksBackend(
        preset="compact",
        poly_modulus_degree=8192,
        data_bits=(60, 50),
        special_bits=30,
        scale_bits=60,
        value_bound=100.0,
        flood_bits=8,
    )
    assert be.params.total_bits == 140
    ups = [{"x": np.linspace(-100, 100, 50)} for _ in range(2)]
    out = privagg.secure_sum(ups, backend=be)
    assert np.max(np.abs(out["x"] - 2 * ups[0]["x"])) <= be.tolerance(
        n_clients=2, max_abs=100
    )


def test_registry_builds_ckks_and_rejects_unknown_options() -> None:
    assert isinstance(privagg.get_backend("ckks", preset="compact"), CkksBackend)
    with pytest.raises(ConfigurationError):
        privagg.get_backend("ckks", bogus=1)


def test_setup_refuses_sums_that_could_wrap() -> None:
    be = CkksBackend(preset="compact")
    layout = Layout.from_arrays({"x": np.zeros(3)})
    with pytest.raises(ConfigurationError, match="do not fit"):
        be.setup(layout, max_clients=10**6)
    with pytest.raises(ConfigurationError):
        be.setup(layout, max_clients=0)
    with pytest.raises(ConfigurationError):
        be.setup(layout, max_clients=2, max_weight=float("inf"))


def test_params_bytes_round_trip() -> None:
    for p in PRESETS.values():
        assert CkksParams.from_bytes(p.to_bytes()) == p


# -- keys ---------------------------------------------------------------------------------
def test_secret_context_decrypt_is_a_deprecated_raw_decrypt(
    keys: CkksSecretContext,
) -> None:
    """``CkksSecretContext.decrypt`` (unflooded) is deprecated for hazmat's raw_decrypt."""
    upd = keys.public.encrypt(np.full(10, 0.5))
    with pytest.warns(DeprecationWarning, match="raw_decrypt"):
        old = keys.decrypt(upd)
    assert np.array_equal(old, raw_decrypt(keys, upd))
    assert not hasattr(keys, "raw_decrypt")  # only behind privagg.hazmat


def test_public_context_cannot_decrypt(keys: CkksSecretContext) -> None:
    pub = CkksPublicContext.from_bytes(keys.public.to_bytes())
    upd = pub.encrypt(np.ones(10))
    assert not pub.has_secret_key
    with pytest.raises(MissingKeyError):
        pub.decrypt(upd)
    with pytest.raises(MissingKeyError):
        pub.seal_state().decrypt_words(upd.words, upd.size)
    with pytest.raises(MissingKeyError):
        _RecoverCodec(pub, 10, 1, privagg.SystemRng())  # type: ignore[arg-type]
    with pytest.raises(MissingKeyError):
        CkksSecretContext.from_bytes(pub.to_bytes(), protection=NoProtection())
    # The key holders' context decrypts the same ciphertext.
    assert np.allclose(raw_decrypt(keys, upd), 1.0, atol=1e-6)


def test_public_context_holds_only_parameters_and_public_key(
    keys: CkksSecretContext,
) -> None:
    data = keys.public.to_bytes()
    _, payload = privagg.envelope.open_envelope(data)
    r = PayloadReader(payload)
    assert CkksParams.from_bytes(r.blob()) == keys.params
    pk_blob = r.blob()
    r.done()
    state = keys.public.seal_state()
    from privagg.backends.ckks._sealio import _seal_load

    pk = seal.PublicKey()
    _seal_load(pk, state.context, pk_blob)  # the one key inside is a public key
    exported = keys.secret_key.to_bytes(protection=NoProtection())
    raw_sk = NoProtection().unwrap(exported)[2]
    assert raw_sk[100:164] not in data
    assert "secret" not in repr(keys.public).lower()


def test_secret_context_refuses_pickle_and_hides_key(keys: CkksSecretContext) -> None:
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(keys)
    with pytest.raises(TypeError):
        pickle.dumps(keys.secret_key)
    raw = NoProtection().unwrap(keys.secret_key.to_bytes(protection=NoProtection()))[2]
    assert raw[64:96].hex() not in repr(keys) + str(keys)
    # the public context pickles (it is public)
    assert (
        pickle.loads(pickle.dumps(keys.public)).fingerprint == keys.public.fingerprint
    )


def test_secret_context_saved_0600_and_reloads(
    tmp_path, keys: CkksSecretContext
) -> None:
    path = keys.save(tmp_path / "ckks.key", protection=NoProtection())
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = CkksSecretContext.load(path, protection=NoProtection())
    upd = keys.public.encrypt(np.full(7, 0.25))
    assert np.allclose(raw_decrypt(loaded, upd), 0.25, atol=1e-6)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigurationError):
        CkksSecretContext.load(path, protection=NoProtection())


def test_password_protected_export(keys: CkksSecretContext) -> None:
    blob = keys.to_bytes(protection=PasswordProtection("correct horse battery"))
    with pytest.raises(DeserializationError):
        CkksSecretContext.from_bytes(
            blob, protection=PasswordProtection("wrong password!")
        )
    again = CkksSecretContext.from_bytes(
        blob, protection=PasswordProtection("correct horse battery")
    )
    assert again.public.fingerprint == keys.public.fingerprint


def test_secret_of_other_key_rejected(
    keys: CkksSecretContext, other_keys: CkksSecretContext
) -> None:
    mixed = (
        PayloadWriter()
        .blob(keys.public.to_bytes())
        .blob(other_keys.secret_key.to_bytes(protection=NoProtection()))
        .getvalue()
    )
    with pytest.raises(ParameterMismatchError):
        CkksSecretContext.from_bytes(mixed, protection=NoProtection())


# -- packing --------------------------------------------------------------------------------
@settings(max_examples=25)
@given(
    bits=st.integers(20, 60),
    rows=st.integers(1, 4),
    groups=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
)
def test_bit_packing_round_trips(bits: int, rows: int, groups: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    w = rng.integers(0, 2**bits, size=(rows, 8 * groups), dtype=np.uint64)
    p = _pack(w, bits)
    assert p.shape == (rows, groups * bits)
    assert (_unpack(p, bits, 8 * groups) == w).all()


@pytest.mark.parametrize("extra", [-4095, -1, 0, 1, 3 * 4096 + 5 - 4096])
def test_packing_uses_every_slot(keys: CkksSecretContext, extra: int) -> None:
    size = 4096 + extra
    x = np.linspace(-1, 1, size)
    upd = keys.public.encrypt(x)
    assert upd.n_ciphertexts == -(-size // 4096)
    body = upd.to_bytes()
    assert len(body) <= 15 * upd.n_ciphertexts * 4096 + 64
    back = EncryptedUpdate.from_bytes(body, keys.public)
    assert np.max(np.abs(raw_decrypt(keys, back) - x)) < 1e-6


def test_bytes_per_value_targets() -> None:
    for name, limit in (("compact", 16.0), ("secure", 22.5), ("secure-large", 32.0)):
        k = keygen(name)
        n = 4 * k.params.poly_modulus_degree
        body = k.public.encrypt(np.zeros(n)).to_bytes()
        assert len(body) / n <= limit, name


def test_compressible_primes_fall_back_to_slow_path() -> None:
    # 40-bit primes: SEAL's zstd compresses the words; SEAL's own zstd reads them.
    be = CkksBackend(preset="compact", data_bits=(40,), scale_bits=20, value_bound=1.0)
    ups = [{"x": np.linspace(-1, 1, 100)} for _ in range(3)]
    out = privagg.secure_sum(ups, backend=be)
    assert np.max(np.abs(out["x"] - 3 * ups[0]["x"])) <= be.tolerance(
        n_clients=3, max_abs=1
    )


# -- precision --------------------------------------------------------------------------------
def test_noise_model_matches_measurement(keys: CkksSecretContext) -> None:
    xs = [np.random.default_rng(i).uniform(-1, 1, 3 * 4096) for i in range(4)]
    acc = keys.public.encrypt(xs[0])
    for x in xs[1:]:
        acc = acc + keys.public.encrypt(x)
    err = raw_decrypt(keys, acc) - np.sum(xs, axis=0)
    ratio = float(np.std(err)) / keys.params.noise_std(4)
    assert 0.7 < ratio < 1.3, ratio


@settings(max_examples=15)
@given(
    n=st.integers(1, 10),
    size=st.integers(1, 300),
    magnitude=st.sampled_from([1e-6, 1e-3, 1.0, 16.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_error_within_declared_bound(
    n: int, size: int, magnitude: float, seed: int
) -> None:
    be = CkksBackend(preset="compact", threads=1)
    rng = np.random.default_rng(seed)
    ups = [{"x": rng.uniform(-magnitude, magnitude, size)} for _ in range(n)]
    w = rng.uniform(0, 1, n).tolist()
    out = privagg.secure_sum(ups, backend=be, weights=w)
    ref = sum(wi * u["x"] for wi, u in zip(w, ups, strict=True))
    assert np.max(np.abs(out["x"] - ref)) <= be.tolerance(
        n_clients=n, max_abs=magnitude
    )


def test_target_ten_clients_magnitude_one_within_1e6() -> None:
    for name in ("compact", "secure", "secure-large"):
        be = CkksBackend(preset=name, threads=1)
        assert be.tolerance(n_clients=10, max_abs=1.0) <= 1e-6
        rng = np.random.default_rng(0)
        ups = [{"x": rng.uniform(-1, 1, 20000).astype(np.float32)} for _ in range(10)]
        layout = Layout.from_arrays(ups[0])
        session = be.setup(layout, max_clients=10)
        res = privagg.run_round(session, {f"c{i}": u for i, u in enumerate(ups)})
        ref = np.sum([u["x"].astype(np.float64) for u in ups], axis=0)
        assert np.max(np.abs(res.vector - ref)) <= 1e-6, name


def test_release_floods_and_rounds(keys: CkksSecretContext) -> None:
    x = np.linspace(-1, 1, 500)
    upd = keys.public.encrypt(x)
    a, b = keys.release(upd), keys.release(upd)
    grid = keys.params.release_grid(1)
    assert np.allclose(a / grid, np.round(a / grid))
    assert not np.array_equal(a, b)  # fresh flooding noise each release
    tol = keys.params.tolerance(1, 1.0)
    assert np.max(np.abs(a - x)) <= tol and np.max(np.abs(b - x)) <= tol


# -- bad input ----------------------------------------------------------------------------------
def _body(keys: CkksSecretContext, x: np.ndarray) -> bytes:
    return keys.public.encrypt(x).to_bytes()


def test_non_finite_and_out_of_bound_values(keys: CkksSecretContext) -> None:
    with pytest.raises(ConfigurationError):
        keys.public.encrypt(np.array([0.0, np.nan]))
    with pytest.raises(ConfigurationError):
        keys.public.encrypt(np.array([np.inf]))
    with pytest.raises(EncodingOverflowError):
        keys.public.encrypt(np.array([17.0]))
    be = CkksBackend(preset="compact")
    with pytest.raises(EncodingOverflowError):
        privagg.secure_sum([{"x": np.full(3, 100.0)}], backend=be)


def test_other_key_ciphertexts_refused(
    keys: CkksSecretContext, other_keys: CkksSecretContext
) -> None:
    a = keys.public.encrypt(np.ones(5))
    b = other_keys.public.encrypt(np.ones(5))
    with pytest.raises(ParameterMismatchError):
        _ = a + b
    with pytest.raises(ParameterMismatchError):
        raw_decrypt(keys, b)
    with pytest.raises(ParameterMismatchError):
        _ = a + keys.public.encrypt(np.ones(6))


def test_aggregate_counts_and_refuses_mixed_sets(keys: CkksSecretContext) -> None:
    be = CkksBackend(preset="compact", threads=1)
    layout = Layout.from_arrays({"x": np.zeros(10)})
    session = be.setup(layout, max_clients=3, keys=keys)
    combine = session.combine_codec
    bodies = [_body(keys, np.full(10, 0.5)) for _ in range(3)]
    agg = EncryptedUpdate.from_bytes(combine.combine(bodies), keys)
    assert agg.count == 3
    assert np.allclose(raw_decrypt(keys, agg), 1.5, atol=1e-6)
    # an aggregate of aggregates keeps counting (EncryptedUpdate arithmetic) ...
    agg2 = agg + EncryptedUpdate.from_bytes(bodies[0], keys)
    assert agg2.count == 4
    # ... but the aggregator's combine takes client contributions only (count 1 each)
    with pytest.raises(DeserializationError, match="count 1"):
        combine.combine([agg.to_bytes(), bodies[0]])
    # a body of another size / parameter set
    with pytest.raises(DeserializationError):
        combine.combine([bodies[0], _body(keys, np.zeros(11))])
    secure = keygen("secure")
    with pytest.raises(DeserializationError):
        combine.combine([bodies[0], secure.public.encrypt(np.zeros(10)).to_bytes()])
    # the holder refuses a count that disagrees with the contributor list
    recover = session.recover_codec()
    with pytest.raises(DeserializationError):
        recover.recover(combine.combine(bodies), 2)
    with pytest.raises(ParameterMismatchError):
        be.setup(layout, max_clients=3, keys=secure)


def _with_count(body: bytes, count: int, size: int) -> bytes:
    w = PayloadWriter().u8(1).u64(count).u64(size)
    return w.blob(PayloadReader(body[17:]).blob()).getvalue()


@pytest.mark.parametrize("count", [0, 2, 3, 2**20, 2**40, 2**40 + 1, 2**64 - 1])
def test_client_contribution_must_have_count_one(
    keys: CkksSecretContext, count: int
) -> None:
    """Review finding: a client could set its body's count to anything in [1, 2**40],
    making combine raise or the holder refuse the round (availability)."""
    be = CkksBackend(preset="compact", threads=1)
    layout = Layout.from_arrays({"x": np.zeros(10)})
    session = be.setup(layout, max_clients=3, keys=keys)
    good = [_body(keys, np.full(10, 0.25)) for _ in range(2)]
    evil = _with_count(_body(keys, np.full(10, 0.25)), count, 10)
    with pytest.raises(DeserializationError):
        session.combine_codec.combine([good[0], evil, good[1]])
    if 1 <= count <= 2**40:  # well formed otherwise: the position is named
        with pytest.raises(DeserializationError, match=r"#1 of 3.*count 1"):
            session.combine_codec.combine([good[0], evil, good[1]])
    # through the roles: the aggregator refuses the round, naming no wrong sum
    agg = session.aggregator(7, ["a", "b", "c"])
    reqs = agg.start()
    replies = {
        cid: session.client(cid, 7, np.full(10, 0.25)).handle(r)
        for cid, r in reqs.items()
    }
    msg = Contribution.from_bytes(replies["b"])
    replies["b"] = Contribution(
        msg.scheme,
        msg.params_id,
        msg.round_id,
        msg.client_id,
        _with_count(msg.body, count, 10),
    ).to_bytes()
    with pytest.raises(DeserializationError):
        agg.receive(replies)
    # honest contributions (count 1) still combine, and the aggregate counts them
    out = EncryptedUpdate.from_bytes(session.combine_codec.combine(good), keys)
    assert out.count == 2


def test_params_id_binds_max_clients_max_weight_and_noise(
    keys: CkksSecretContext,
) -> None:
    """Review finding: params_id covered only the key and the layout."""
    be = CkksBackend(preset="compact", threads=1)
    layout = Layout.from_arrays({"x": np.zeros(5)})

    def pid(**kw: object) -> bytes:
        kw.setdefault("max_clients", 3)
        return be.setup(layout, keys=keys, **kw).params_id  # type: ignore[arg-type]

    ids = [
        pid(),
        pid(max_clients=4),
        pid(max_weight=2.0),
        pid(noise=_ConstNoise()),
        pid(noise=_ScaledNoise(0.5)),
        pid(noise=_ScaledNoise(0.25)),
    ]
    assert len(set(ids)) == len(ids)
    assert pid() == pid() and pid(noise=_ScaledNoise(0.5)) == pid(
        noise=_ScaledNoise(0.5)
    )
    # parties with different settings no longer interoperate silently
    s3, s4 = (
        be.setup(layout, max_clients=3, keys=keys),
        be.setup(layout, max_clients=4, keys=keys),
    )
    reply = s3.client("a", 0, np.zeros(5)).handle(s3.aggregator(0, ["a"]).start()["a"])
    agg = s4.aggregator(0, ["a"])
    agg.start()
    with pytest.raises(ParameterMismatchError):
        agg.receive({"a": reply})
    with pytest.raises(ParameterMismatchError):
        s4.client("a", 0, np.zeros(5)).handle(s3.aggregator(0, ["a"]).start()["a"])


def test_secure_preset_error_is_float64_dominated(keys: CkksSecretContext) -> None:
    """Review finding: the secure preset's *unflooded* error is ~2e-16 (float64
    encode/decode), far above the RLWE model (~1e-21); the tolerance's float64 term
    covers it. (Releases flood before decoding, so this error is post-processing of
    the flooded value there: test_flooding_dominates_float64_error_at_every_magnitude.)"""
    secure = keygen("secure")
    p = secure.params
    x = np.random.default_rng(0).uniform(-1, 1, 2 * p.poly_modulus_degree)
    e = raw_decrypt(secure, secure.public.encrypt(x)) - x
    assert np.max(np.abs(e)) > 100 * p.noise_std(1)  # the RLWE model alone misses it
    float_term = 2.0**-45 * 1 * 1.0
    assert np.max(np.abs(e)) < float_term / 10  # the float64 term covers it with room


@pytest.mark.parametrize("cut", [0, 1, 9, 17, 100, -1])
def test_truncated_bodies_rejected(keys: CkksSecretContext, cut: int) -> None:
    body = _body(keys, np.ones(10))
    with pytest.raises(DeserializationError):
        EncryptedUpdate.from_bytes(body[:cut], keys.public)


def test_tampered_bodies_rejected_or_typed(keys: CkksSecretContext) -> None:
    body = bytearray(_body(keys, np.ones(10)))
    # words >= q (all ones) are rejected
    bad = bytes(body[:25]) + b"\xff" * (len(body) - 25)
    with pytest.raises(DeserializationError):
        EncryptedUpdate.from_bytes(bad, keys.public)
    for pos in (0, 1, 9, 17):
        t = bytearray(body)
        t[pos] ^= 0x01
        with pytest.raises(DeserializationError):
            EncryptedUpdate.from_bytes(bytes(t), keys.public, size=10)
    with pytest.raises(DeserializationError):
        CkksPublicContext.from_bytes(b"junk" * 20)


# -- threads --------------------------------------------------------------------------------
def test_process_pool_matches_inline(
    keys: CkksSecretContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    import privagg.backends.ckks._pool as ckks_mod

    monkeypatch.setattr(ckks_mod, "_POOL_MIN_PER_WORKER", 4)
    assert ckks_mod._n_workers(2, 40) == 2 and ckks_mod._n_workers(1, 40) == 1
    x = np.random.default_rng(3).uniform(-1, 1, 40 * 4096 + 17)
    layout = Layout.from_arrays({"x": x})
    outs = []
    for threads in (1, 2):
        be = CkksBackend(preset="compact", threads=threads)
        session = be.setup(layout, max_clients=2, keys=keys)
        res = privagg.run_round(session, {"a": {"x": x}, "b": {"x": x}})
        outs.append(res.vector)
    tol = CkksBackend(preset="compact").tolerance(n_clients=2, max_abs=1.0)
    for o in outs:
        assert np.max(np.abs(o - 2 * x)) <= tol


@pytest.mark.parametrize("shape", [(1,), (0,), (2, 0)])
def test_tiny_and_empty_updates(
    keys: CkksSecretContext, shape: tuple[int, ...]
) -> None:
    be = CkksBackend(preset="compact", threads=1)
    ups = [{"x": np.full(shape, 0.5)}, {"x": np.full(shape, 0.25)}]
    session = be.setup(Layout.from_arrays(ups[0]), max_clients=2, keys=keys)
    res = privagg.run_round(session, {"a": ups[0], "b": ups[1]})
    assert res.aggregate["x"].shape == shape
    assert np.all(
        np.abs(res.aggregate["x"] - 0.75) <= be.tolerance(n_clients=2, max_abs=1)
    )


class _ConstNoise:
    """A stand-in NoiseShare adding a known offset (tests the plumbing, not DP)."""

    def sample_encoded(self, n: int, *, scale: float, rng: privagg.Rng) -> np.ndarray:
        raise AssertionError("CKKS is a float backend")

    def sample_real(self, n: int, *, rng: privagg.Rng) -> np.ndarray:
        return np.full(n, 0.125)

    def headroom(self, n_clients: int) -> float:
        return 0.125 * n_clients


class _ScaledNoise(_ConstNoise):
    """A stand-in with a ``stddev`` attribute (like privagg.dp's shares)."""

    def __init__(self, stddev: float) -> None:
        self.stddev = stddev

    def headroom(self, n_clients: int) -> float:
        return 0.125 * n_clients  # same headroom for every stddev: only stddev differs


def test_dp_noise_is_added_before_encryption(keys: CkksSecretContext) -> None:
    be = CkksBackend(preset="compact", threads=1)
    layout = Layout.from_arrays({"x": np.zeros(5)})
    session = be.setup(layout, max_clients=3, noise=_ConstNoise(), keys=keys)
    ups = {f"c{i}": {"x": np.full(5, 0.5)} for i in range(3)}
    res = privagg.run_round(session, ups)
    tol = be.tolerance(n_clients=3, max_abs=1.0)
    assert np.all(np.abs(res.vector - 3 * (0.5 + 0.125)) <= tol)
    # 5770 clients fit the modulus without noise but not with the noise headroom
    be.setup(layout, max_clients=5770, keys=keys)
    with pytest.raises(ConfigurationError):
        be.setup(layout, max_clients=5770, noise=_ConstNoise(), keys=keys)


def test_sums_beyond_the_modulus_are_refused_not_wrapped(
    keys: CkksSecretContext,
) -> None:
    be = CkksBackend(preset="compact", threads=1)
    layout = Layout.from_arrays({"x": np.zeros(4)})
    session = be.setup(layout, max_clients=2, keys=keys)
    body = _body(keys, np.full(4, 16.0))
    combine = session.combine_codec
    # 16 * 2**13 = 2**17 > 2**16.5 of headroom: more contributions than the modulus holds
    many = PayloadWriter().u8(1).u64(2**13).u64(4)
    many = many.blob(PayloadReader(body[17:]).blob()).getvalue()
    # the aggregator refuses it earlier: a client contribution must have count 1
    with pytest.raises(DeserializationError):
        combine.combine([many])
    with pytest.raises(EncodingOverflowError):
        session.recover_codec().recover(many, 2**13)
    upd = keys.public.encrypt(np.full(4, 16.0))
    upd.count = 2**13
    with pytest.raises(EncodingOverflowError):
        _ = upd + upd


# -- per-role sessions (deployment across processes) ---------------------------------------
def _round(
    client_session: Session,
    agg_session: Session,
    updates: dict[str, np.ndarray],
    weights: dict[str, float],
    round_id: int = 0,
) -> bytes:
    agg = agg_session.aggregator(round_id, sorted(updates))
    reqs = agg.start()
    replies = {
        cid: client_session.client(
            cid, round_id, updates[cid], weight=weights[cid]
        ).handle(r)
        for cid, r in reqs.items()
    }
    agg.receive(replies)
    return agg.result()


def test_public_only_session_cannot_recover(keys: CkksSecretContext) -> None:
    be = CkksBackend(preset="compact", threads=1)
    layout = Layout.from_arrays({"x": np.zeros(5)})
    public = be.session(layout, keys.public, max_clients=3)
    with pytest.raises(MissingKeyError):
        public.holder()
    assert not hasattr(public, "ckks_keys")
    with pytest.raises(ConfigurationError):
        be.session(layout, b"not a context", max_clients=3)  # type: ignore[arg-type]
    with pytest.raises(ParameterMismatchError):
        CkksBackend(preset="secure", threads=1).session(
            layout, keys.public, max_clients=3
        )


def test_sessions_built_separately_interoperate(keys: CkksSecretContext) -> None:
    """Clients, aggregator and holder each build their session from their own context
    (the public one from its serialized bytes, as another process would)."""
    be = CkksBackend(preset="compact", threads=1)
    layout = Layout.from_arrays({"a": np.zeros((2, 3)), "b": np.zeros(4)})
    kw = {"max_clients": 3, "max_weight": 1.0}
    pub = CkksPublicContext.from_bytes(keys.public.to_bytes())
    client_s = be.session(layout, pub, **kw)
    agg_s = be.session(
        layout, CkksPublicContext.from_bytes(keys.public.to_bytes()), **kw
    )
    holder_s = be.session(layout, keys, **kw)
    assert client_s.params_id == agg_s.params_id == holder_s.params_id
    # the same params_id as the single-process setup with these keys
    assert be.setup(layout, keys=keys, **kw).params_id == holder_s.params_id
    rng = np.random.default_rng(3)
    updates = {f"c{i}": rng.uniform(-1, 1, layout.size) for i in range(3)}
    weights = {"c0": 0.25, "c1": 0.5, "c2": 1.0}
    result = _round(client_s, agg_s, updates, weights)
    with pytest.raises(MissingKeyError):
        agg_s.holder()
    rec = holder_s.holder().recover(result)
    want = sum(weights[c] * updates[c] for c in updates)
    tol = be.tolerance(n_clients=3, max_abs=1.0)
    np.testing.assert_allclose(rec.vector, want, rtol=0, atol=tol)
    assert tuple(rec.contributors) == ("c0", "c1", "c2")
    # other options or another key: another params_id, messages refused
    assert be.session(layout, pub, max_clients=4).params_id != agg_s.params_id
    other = keygen("compact")
    assert be.session(layout, other.public, **kw).params_id != agg_s.params_id
    with pytest.raises(ParameterMismatchError):
        _round(be.session(layout, other.public, **kw), agg_s, updates, weights, 1)


def test_combine_refuses_more_bodies_than_max_clients(keys: CkksSecretContext) -> None:
    be = CkksBackend(preset="compact", threads=1)
    layout = Layout.from_arrays({"x": np.zeros(4)})
    session = be.session(layout, keys.public, max_clients=2)
    bodies = [_body(keys, np.full(4, 0.5)) for _ in range(3)]
    with pytest.raises(EncodingOverflowError, match="max_clients=2"):
        session.combine_codec.combine(bodies)
    assert session.combine_codec.combine(bodies[:2])
    holder = be.session(layout, keys, max_clients=2)
    with pytest.raises(EncodingOverflowError, match="max_clients=2"):
        holder.recover_codec().recover(b"", 3)


def test_deal_and_load_role() -> None:
    be = CkksBackend(preset="test-fast", threads=1)
    layout = Layout.from_arrays({"x": np.zeros(6)})
    kw = {"max_clients": 2, "max_weight": 1.0}
    dealt = be.deal(layout, ["p0", "p1"], **kw)
    assert "holder=" not in repr(dealt)  # the secret blob is never printed
    assert dealt.clients["p0"] == dealt.clients["p1"] == dealt.aggregator
    # the public blob holds no secret key; the holder's does
    with pytest.raises(MissingKeyError):
        CkksSecretContext.from_bytes(dealt.aggregator, protection=NoProtection())
    agg = be.load_role(layout, "aggregator", None, dealt.aggregator, **kw)
    c0 = be.load_role(layout, "client", "p0", dealt.clients["p0"], **kw)
    holder = be.load_role(layout, "holder", None, dealt.holder, **kw)
    assert agg.params_id == c0.params_id == holder.params_id
    with pytest.raises(MissingKeyError):
        agg.holder()
    with pytest.raises(MissingKeyError):
        c0.holder()
    updates = {"p0": np.full(6, 0.5), "p1": np.full(6, -0.25)}
    rec = holder.holder().recover(_round(c0, agg, updates, {"p0": 1.0, "p1": 0.5}))
    tol = be.tolerance(n_clients=2, max_abs=1.0)
    np.testing.assert_allclose(rec.vector, np.full(6, 0.375), rtol=0, atol=tol)
    # the aggregator and clients never load the holder's secret material
    with pytest.raises(DeserializationError, match="public context"):
        be.load_role(layout, "aggregator", None, dealt.holder, **kw)
    with pytest.raises(DeserializationError):
        be.load_role(layout, "client", "p0", dealt.holder, **kw)
    with pytest.raises(MissingKeyError):
        be.load_role(layout, "holder", None, dealt.aggregator, **kw)
    with pytest.raises(ConfigurationError):
        be.load_role(layout, "client", None, dealt.aggregator, **kw)
    with pytest.raises(ConfigurationError):
        be.load_role(layout, "dealer", None, dealt.aggregator, **kw)
    with pytest.raises(ParameterMismatchError):  # material of another preset
        CkksBackend(preset="compact", threads=1).load_role(
            layout, "aggregator", None, dealt.aggregator, **kw
        )
    with pytest.raises(ConfigurationError):
        be.deal(layout, [], **kw)
    with pytest.raises(ConfigurationError):
        be.deal(layout, ["p0", "p0"], **kw)
    # an explicit protection round-trips; the holder needs the same one to load
    pw = PasswordProtection(b"correct horse battery staple")
    sealed = be.deal(layout, ["p0"], **kw, protection=pw)
    assert be.load_role(layout, "holder", None, sealed.holder, **kw, protection=pw)
    with pytest.raises(privagg.PrivaggError):
        be.load_role(layout, "holder", None, sealed.holder, **kw)


# -- coefficient-domain flooding ----------------------------------------------------------------
@pytest.fixture(scope="module")
def secure_keys() -> CkksSecretContext:
    return keygen("secure")


@pytest.fixture(scope="module")
def large_keys() -> CkksSecretContext:
    return keygen("secure-large")


class _CountingRng:
    """Wraps a DeterministicRng and counts the bytes drawn from it."""

    def __init__(self, seed: int) -> None:
        self.inner = DeterministicRng(seed)
        self.drawn = 0

    def random_bytes(self, n: int) -> bytes:
        self.drawn += n
        return self.inner.random_bytes(n)


def _predicted_release_std(p: CkksParams, count: int) -> float:
    """Flooding + RLWE noise + uniform rounding to the release grid."""
    g = p.release_grid(count)
    return float(
        np.sqrt(p.flood_std(count) ** 2 + p.noise_std(count) ** 2 + g * g / 12)
    )


@pytest.mark.parametrize("preset", ["secure", "secure-large"])
def test_coefficient_noise_model_matches_zero_message(
    preset: str, secure_keys: CkksSecretContext, large_keys: CkksSecretContext
) -> None:
    """With m = 0 the decoded values are exactly the decryption noise (no float64
    rounding of a large message): its std matches coeff_noise_std * sqrt(N/2) / scale."""
    k = secure_keys if preset == "secure" else large_keys
    p = k.params
    z = raw_decrypt(k, k.public.encrypt(np.zeros(8 * p.poly_modulus_degree)))
    ratio = float(np.std(z)) / p.noise_std(1)
    assert 0.95 < ratio < 1.05, ratio
    assert p.noise_std(1) == pytest.approx(p.coeff_noise_std(1) * p.slot_factor)


@pytest.mark.parametrize("preset", ["secure", "secure-large"])
@pytest.mark.parametrize("count", [1, 3])
def test_released_error_std_matches_predicted_flood_std(
    preset: str,
    count: int,
    secure_keys: CkksSecretContext,
    large_keys: CkksSecretContext,
) -> None:
    """The flooding is integer noise of std 2**flood_bits * coeff_noise_std added to
    the coefficients; in a released value it has std coeff std * sqrt(N/2) / scale."""
    k = secure_keys if preset == "secure" else large_keys
    p = k.params
    n = p.poly_modulus_degree
    xs = [np.random.default_rng(i).uniform(-1, 1, 8 * n) for i in range(count)]
    acc = k.public.encrypt(xs[0])
    for x in xs[1:]:
        acc = acc + k.public.encrypt(x)
    assert acc.count == count
    err = k.release(acc, DeterministicRng(count)) - np.sum(xs, axis=0)
    predicted = _predicted_release_std(p, count)
    assert p.flood_std(count) == pytest.approx(
        p.flood_coeff_std(count) * np.sqrt(n / 2) / p.scale
    )
    ratio = float(np.std(err)) / predicted
    assert 0.97 < ratio < 1.03, ratio  # ~65k samples: the estimate is within ~0.3%
    assert abs(float(np.mean(err))) < 5 * predicted / np.sqrt(err.size)
    assert np.max(np.abs(err)) <= p.tolerance(count, 1.0)


@pytest.mark.parametrize("preset", ["secure", "secure-large"])
def test_flooding_dominates_float64_error_at_every_magnitude(
    preset: str, secure_keys: CkksSecretContext, large_keys: CkksSecretContext
) -> None:
    """Review finding: flooding in the slot domain after decoding had a real margin of
    only ~2**22.5 over the float64 encode/decode error (which grows with |x|). Flooded
    in the coefficient domain, the released error is the flooding at any magnitude."""
    k = secure_keys if preset == "secure" else large_keys
    p = k.params
    n = p.poly_modulus_degree
    predicted = _predicted_release_std(p, 1)
    for magnitude in (1e-3, 1.0, p.value_bound):
        x = np.random.default_rng(1).uniform(-magnitude, magnitude, 4 * n)
        upd = k.public.encrypt(x)
        raw = float(np.std(raw_decrypt(k, upd) - x))
        assert raw < predicted / 1000  # the unflooded (float64) error is far below
        ratio = float(np.std(k.release(upd, DeterministicRng(2)) - x)) / predicted
        assert 0.95 < ratio < 1.05, (magnitude, ratio)


def test_zero_flood_is_exactly_the_plain_decryption(
    secure_keys: CkksSecretContext, keys: CkksSecretContext
) -> None:
    """The (f, 1) flooding ciphertext minus NTT(1) in c1 adds exactly f: with f = 0 the
    decryption is bit-identical to the unflooded one."""
    for k in (secure_keys, keys):
        n = k.params.poly_modulus_degree
        upd = k.public.encrypt(np.random.default_rng(5).uniform(-1, 1, 2 * n + 3))
        st_ = k.seal_state()
        zero = np.zeros((upd.n_ciphertexts, n), dtype=np.int64)
        a = st_.decrypt_words(upd.words, upd.size)
        b = st_.decrypt_words(upd.words, upd.size, zero)
        assert np.array_equal(a, b)
        # a constant polynomial c evaluates to c at every root: it shifts the real
        # part of every slot (even positions) by c / scale, the imaginary part by 0
        one = zero.copy()
        one[:, 0] = 2**40
        d = st_.decrypt_words(upd.words, upd.size, one) - a
        shift = 2.0**40 / k.params.scale
        assert np.allclose(d[0::2], shift, rtol=1e-3, atol=0)
        assert np.max(np.abs(d[1::2])) < 1e-3 * shift


def test_release_is_deterministic_under_deterministic_rng(
    keys: CkksSecretContext, secure_keys: CkksSecretContext
) -> None:
    for k in (keys, secure_keys):
        upd = k.public.encrypt(np.linspace(-1, 1, 1000))
        a = k.release(upd, DeterministicRng(11))
        b = k.release(upd, DeterministicRng(11))
        c = k.release(upd, DeterministicRng(12))
        assert np.array_equal(a, b)
        assert not np.array_equal(a, c)


def test_flooding_draws_from_the_injected_rng(secure_keys: CkksSecretContext) -> None:
    k = secure_keys
    n = k.params.poly_modulus_degree
    upd = k.public.encrypt(np.zeros(3 * n))
    rng = _CountingRng(3)
    k.release(upd, rng)  # type: ignore[arg-type]
    assert rng.drawn == 8 * 3 * n  # one 64-bit uniform per flooded coefficient
    layout = Layout.from_arrays({"x": np.zeros(10)})
    be = CkksBackend(threads=1)
    outs = []
    for _ in range(2):
        session = be.setup(layout, max_clients=2, keys=k, rng=DeterministicRng(9))
        res = privagg.run_round(
            session, {"a": {"x": np.ones(10)}, "b": {"x": np.ones(10)}}
        )
        outs.append(res.vector)
    assert np.array_equal(outs[0], outs[1])  # same seed, same flooding
    assert np.max(np.abs(outs[0] - 2)) <= be.tolerance(n_clients=2, max_abs=1.0)


def test_pool_decryption_floods_like_inline(
    keys: CkksSecretContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flooding noise is drawn in the holder's process and handed to the workers:
    the same ciphertext and seed give the same release with or without workers."""
    import privagg.backends.ckks._pool as ckks_mod

    monkeypatch.setattr(ckks_mod, "_POOL_MIN_PER_WORKER", 4)
    x = np.random.default_rng(4).uniform(-1, 1, 12 * 4096 + 5)
    body = keys.public.encrypt(x).to_bytes()
    outs = [
        _RecoverCodec(keys, x.size, threads, DeterministicRng(1)).recover(body, 1)
        for threads in (1, 2)
    ]
    assert np.array_equal(outs[0], outs[1])
    assert np.max(np.abs(outs[0] - x)) <= keys.params.tolerance(1, 1.0)


def test_aggregator_public_context_cannot_flood_or_decrypt(
    secure_keys: CkksSecretContext,
) -> None:
    pub = CkksPublicContext.from_bytes(secure_keys.public.to_bytes())
    upd = pub.encrypt(np.ones(10))
    st_ = pub.seal_state()
    assert st_.decryptor is None and st_.evaluator is None
    flood = np.zeros((1, pub.params.poly_modulus_degree), dtype=np.int64)
    with pytest.raises(MissingKeyError):
        st_.decrypt_words(upd.words, upd.size, flood)
    with pytest.raises(MissingKeyError):
        pub.decrypt(upd)
    assert not hasattr(pub, "release")
    be = CkksBackend(threads=1)
    agg = be.session(Layout.from_arrays({"x": np.ones(10)}), pub, max_clients=2)
    with pytest.raises(MissingKeyError):
        agg.holder()


@settings(max_examples=8, deadline=None)
@given(
    n=st.integers(1, 10),
    size=st.integers(1, 300),
    magnitude=st.sampled_from([1e-6, 1.0, 8.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_secure_error_within_declared_bound(
    n: int, size: int, magnitude: float, seed: int
) -> None:
    be = CkksBackend(preset="secure", threads=1)
    rng = np.random.default_rng(seed)
    ups = [{"x": rng.uniform(-magnitude, magnitude, size)} for _ in range(n)]
    w = rng.uniform(0, 1, n).tolist()
    out = privagg.secure_sum(ups, backend=be, weights=w)
    ref = sum(wi * u["x"] for wi, u in zip(w, ups, strict=True))
    assert np.max(np.abs(out["x"] - ref)) <= be.tolerance(
        n_clients=n, max_abs=magnitude
    )


@pytest.mark.parametrize("preset", ["secure", "secure-large"])
def test_provably_flooded_presets(preset: str) -> None:
    """flood_bits = 40 over the coefficient noise, 128-bit HE Standard modulus, <= 1e-6
    error for 10 clients of magnitude <= 1, <= 32 bytes/value, 10 clients fit."""
    p = PRESETS[preset]
    assert p.flood_bits == 40 and p.special_bits is not None
    assert p.total_bits <= HE_STANDARD_MAX_BITS[p.poly_modulus_degree]
    assert p.tolerance(10, 1.0) <= 1e-6
    assert 2 * sum(p.data_bits) / 8 <= 32
    assert p.max_sum(10 * p.value_bound, 10)


@pytest.mark.parametrize(
    "options",
    [
        {"data_bits": (60, 30)},  # 110 > 109 bits (default preset, N=4096)
        {"scale_bits": 86},  # within 4 bits of the modulus
        {"preset": "compact", "scale_bits": 57, "value_bound": 1e-6},
        {"preset": "compact", "flood_bits": 60},  # the flooding itself would wrap
        {"special_bits": 19},
    ],
)
def test_custom_parameters_rejected_before_seal(options: dict) -> None:
    with pytest.raises(ConfigurationError) as info:
        CkksBackend(**options)
    assert "out of bounds" not in str(info.value)


def test_zstd_and_word_by_word_readers_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """29-bit primes compress: SEAL's own zstd decompresses them (fast path); the
    word-by-word fallback must read the same words."""
    import privagg.backends.ckks._sealio as ckks_io
    import privagg.backends.ckks._sealwrap as ckks_wrap

    k = keygen("secure")
    x = np.random.default_rng(0).uniform(-1, 1, 100)
    st_ = k.public.seal_state()
    pt = seal.Plaintext()
    st_.encoder.encode((x[0::2] + 1j * x[1::2]).tolist(), k.params.scale, pt)
    ct = seal.Ciphertext(st_.context)
    st_.encryptor.encrypt(pt, ct)
    with ckks_io._scratch_path() as path:
        fast = np.array(st_._ct_words(ct, path))
        monkeypatch.setattr(ckks_wrap, "_ZSTD", None)
        slow = st_._ct_words(ct, path)
    assert np.array_equal(fast, slow)


# -- malformed ciphertexts and sampling limits (crypto review) ----------------------------------
def _key_extraction_update(
    keys: CkksSecretContext, x: np.ndarray, t_bits: int
) -> EncryptedUpdate:
    """An honest encryption whose c1 gets the constant T = 2**t_bits added: it
    decrypts to m + e + T*s (NTT of a constant is that constant in every slot)."""
    honest = keys.public.encrypt(x)
    st = keys.seal_state()
    words = honest.words.copy()
    for j, q in enumerate(st.moduli):
        t = np.uint64(pow(2, t_bits, q))
        c1 = words[:, 1, j, :]
        words[:, 1, j, :] = ((c1.astype(object) + int(t)) % q).astype(np.uint64)
    return EncryptedUpdate(honest.key_fingerprint, st, honest.count, honest.size, words)


def test_key_extraction_ciphertext_is_refused_not_released(
    secure_keys: CkksSecretContext,
) -> None:
    """A client submitting c1 + T (T = 2**85) would publish T*s; the holder refuses."""
    x = np.linspace(-1, 1, 300)
    bad = _key_extraction_update(secure_keys, x, 85)
    with pytest.raises(privagg.EncodingOverflowError, match="malformed"):
        secure_keys.release(bad)
    # the honest ciphertext still releases
    ok = secure_keys.release(secure_keys.public.encrypt(x))
    assert np.max(np.abs(ok - x)) <= secure_keys.params.tolerance(1, 1.0)


def test_key_extraction_refused_through_the_session(
    secure_keys: CkksSecretContext,
) -> None:
    """The crafted body passes the aggregator (it is well formed: count 1, words
    below q) but the holder's recovery refuses it instead of publishing T*s."""
    be = CkksBackend(preset="secure", threads=1)
    layout = Layout.from_arrays({"x": np.zeros(50)})
    session = be.setup(layout, max_clients=2, keys=secure_keys)
    good = _body(secure_keys, np.full(50, 0.25))
    evil = _key_extraction_update(secure_keys, np.full(50, 0.25), 85).to_bytes()
    total = session.combine_codec.combine([good, evil])
    with pytest.raises(privagg.EncodingOverflowError, match="malformed"):
        session.recover_codec().recover(total, 2)
    ok = session.combine_codec.combine([good, _body(secure_keys, np.full(50, 0.25))])
    out = session.recover_codec().recover(ok, 2)
    assert np.max(np.abs(out - 0.5)) <= secure_keys.params.tolerance(2, 1.0)


def test_flood_sampling_limit_is_enforced() -> None:
    """8.57 sigma must stay below 2**52: beyond that float64 draws would be even."""
    from privagg.backends._ckks_params import GAUSSIAN_TAIL, PRESETS

    p = PRESETS["secure-large"]
    n_ok = 100
    assert p.flood_exact(n_ok)
    # contributions at which exact sampling ends for secure-large
    n_bad = int((2.0**52 / GAUSSIAN_TAIL / p.flood_coeff_std(1)) ** 2) + 1
    assert not p.flood_exact(n_bad)
    assert not p.max_sum(1.0, n_bad)
    with pytest.raises(privagg.ConfigurationError, match="exact"):
        p.check_headroom(1.0, n_bad)
    with pytest.raises(privagg.ConfigurationError):
        CkksBackend(preset="secure", flood_bits=60, threads=1).setup(
            privagg.Layout.from_arrays({"w": np.zeros(4)}), max_clients=2
        )


def test_release_checks_the_count(secure_keys: CkksSecretContext) -> None:
    upd = secure_keys.public.encrypt(np.zeros(10))
    forged = EncryptedUpdate(
        upd.key_fingerprint, secure_keys.seal_state(), 2**40, upd.size, upd.words
    )
    with pytest.raises(privagg.EncodingOverflowError):
        secure_keys.release(forged)


def test_unflooded_release_is_refused() -> None:
    keys = keygen(PRESETS["compact"].with_options(flood_bits=None))
    upd = keys.public.encrypt(np.zeros(8))
    with pytest.raises(ConfigurationError, match="unflooded"):
        keys.release(upd)
    assert np.max(np.abs(raw_decrypt(keys, upd))) < 1e-6  # hazmat path, holders only
