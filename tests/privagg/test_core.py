"""Unit, known-answer and property tests of privagg's core: rng, layout, encoder, envelope, keys."""

from __future__ import annotations

import copy
import os
import pickle
import stat

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats

import privagg
from privagg import (
    ConfigurationError,
    DeserializationError,
    EncodingOverflowError,
    FixedPointEncoder,
    Layout,
    NoProtection,
    ParameterMismatchError,
    PasswordProtection,
    SecretBytes,
    SecretKey,
)
from privagg.envelope import (
    Header,
    PayloadReader,
    PayloadWriter,
    Scheme,
    open_envelope,
    seal,
)
from privagg.hazmat import (
    DeterministicRng,
    aes_ctr_keystream,
    from_ring,
    randbelow,
    to_ring,
    uniform01,
)


# -- randomness --------------------------------------------------------------------------
def test_aes_ctr_keystream_nist_sp800_38a_f51() -> None:
    # NIST SP 800-38A, F.5.1 CTR-AES128.Encrypt, block #1: keystream = plaintext XOR ciphertext
    key = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
    ctr = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
    pt = bytes.fromhex("6bc1bee22e409f96e93d7e117393172a")
    ct = bytes.fromhex("874d6191b620e3261bef6864990db6ce")
    ks = aes_ctr_keystream(key, 16, ctr)
    assert bytes(a ^ b for a, b in zip(ks, pt, strict=True)) == ct


def test_keystream_is_consistent_across_chunking() -> None:
    key = bytes(range(32))
    big = aes_ctr_keystream(key, (1 << 20) + 100)
    assert big[:1000] == aes_ctr_keystream(key, 1000)
    r1, r2 = DeterministicRng(7), DeterministicRng(7)
    assert r1.random_bytes(10) + r1.random_bytes(2_000_000) == r2.random_bytes(
        2_000_010
    )


def test_system_rng_bulk_and_small() -> None:
    rng = privagg.SystemRng()
    a, b = rng.random_bytes(32), rng.random_bytes(32)
    assert a != b and len(rng.random_bytes(1 << 20)) == 1 << 20


def test_deterministic_rng_refuses_pickle_and_hides_seed() -> None:
    r = DeterministicRng(b"\x01" * 32)
    with pytest.raises(TypeError):
        pickle.dumps(r)
    assert "01" not in repr(r)


@pytest.mark.parametrize("bound", [3, 10, 1000, (1 << 61) + 1])
def test_randbelow_in_range_and_uniform(bound: int) -> None:
    x = randbelow(DeterministicRng(bound), bound, 20000)
    assert int(x.max()) < bound
    if bound <= 1000:
        counts = np.bincount(x.astype(np.int64), minlength=bound)
        assert stats.chisquare(counts).pvalue > 1e-4


def test_uniform01_range_and_mean() -> None:
    u = uniform01(DeterministicRng(1), 100_000)
    assert u.min() >= 0 and u.max() < 1
    assert stats.kstest(u, "uniform").pvalue > 1e-4


# -- layout -------------------------------------------------------------------------------
float_arrays = hnp.arrays(
    dtype=st.sampled_from([np.float16, np.float32, np.float64]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
    elements=st.floats(-1e4, 1e4, allow_nan=False, width=16),
)


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8), float_arrays, min_size=1, max_size=5
    )
)
def test_layout_round_trip(arrays: dict[str, np.ndarray]) -> None:
    layout = Layout.from_arrays(arrays)
    vec = layout.flatten(arrays)
    assert vec.dtype == np.float64 and vec.shape == (layout.size,)
    back = layout.unflatten(vec)
    for k, v in arrays.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        np.testing.assert_array_equal(back[k], v)
    assert Layout.from_bytes(layout.to_bytes()) == layout
    # insertion order does not matter
    assert (
        Layout.from_arrays(dict(reversed(list(arrays.items())))).fingerprint
        == layout.fingerprint
    )


def test_layout_mismatch_and_bad_input() -> None:
    layout = Layout.from_arrays({"a": np.zeros((2, 3)), "b": np.zeros(())})
    with pytest.raises(ParameterMismatchError):
        layout.flatten({"a": np.zeros((3, 2)), "b": np.zeros(())})
    with pytest.raises(ParameterMismatchError):
        layout.flatten({"a": np.zeros((2, 3), dtype=np.float32), "b": np.zeros(())})
    with pytest.raises(ParameterMismatchError):
        layout.flatten({"a": np.zeros((2, 3))})
    with pytest.raises(ConfigurationError):
        layout.flatten({"a": np.full((2, 3), np.nan), "b": np.zeros(())})
    with pytest.raises(ParameterMismatchError):
        layout.unflatten(np.zeros(5))
    with pytest.raises(ConfigurationError):
        Layout.from_arrays({1: np.zeros(2)})  # type: ignore[dict-item]
    with pytest.raises(DeserializationError):
        Layout.from_bytes(layout.to_bytes()[:-1])
    assert layout.fingerprint != Layout.from_arrays({"a": np.zeros((2, 3))}).fingerprint


# -- encoder --------------------------------------------------------------------------------
def test_encoder_validates_parameters() -> None:
    for kwargs in (
        {"bound": 0.0},
        {"bound": float("inf")},
        {"bound": 1.0, "scale_bits": -1},
        {"bound": 1.0, "scale_bits": 53},
        {"bound": 2.0**20, "scale_bits": 45},
    ):
        with pytest.raises(ConfigurationError):
            FixedPointEncoder(**kwargs)  # type: ignore[arg-type]


def test_encoder_overflow_and_clip() -> None:
    enc = FixedPointEncoder(bound=1.0, scale_bits=8)
    with pytest.raises(EncodingOverflowError):
        enc.encode([0.5, 1.5])
    enc.encode([1.0, -1.0])  # exactly at the bound is fine
    clipped = FixedPointEncoder(bound=1.0, scale_bits=8, clip=True).encode(
        [0.5, 1.5, -3.0]
    )
    assert clipped.n_clipped == 2
    assert clipped.values.tolist()[1:] == [256, -256]
    with pytest.raises(ConfigurationError):
        enc.encode([np.nan])


def test_stochastic_rounding_is_unbiased() -> None:
    enc = FixedPointEncoder(bound=1.0, scale_bits=4)
    x = np.full(200_000, 0.3 / 16)  # 0.3 of one unit
    vals = enc.encode(x, DeterministicRng(3)).values
    assert set(np.unique(vals).tolist()) == {0, 1}
    # mean 0.3, sd of the mean ~ 0.001
    assert abs(vals.mean() - 0.3) < 0.005


@given(
    st.lists(st.floats(-1, 1, allow_nan=False), min_size=1, max_size=50),
    st.integers(0, 40),
)
def test_encode_error_below_one_unit(xs: list[float], bits: int) -> None:
    enc = FixedPointEncoder(bound=1.0, scale_bits=bits)
    vals = enc.encode(xs, DeterministicRng(bits)).values
    assert np.all(np.abs(enc.decode(vals) - np.asarray(xs)) < 2.0**-bits)


def test_capacity_boundary() -> None:
    enc = FixedPointEncoder(bound=1.0, scale_bits=10)
    bits = enc.sum_bits(100, max_weight=1.0)
    enc.check_capacity(bits, 100)
    with pytest.raises(EncodingOverflowError):
        enc.check_capacity(bits - 1, 100)
    # the guarantee: n worst-case values sum inside the signed ring
    worst = np.full(100, enc.max_abs_int + 1, dtype=np.int64).sum()
    assert worst < 2 ** (bits - 1)


@given(
    st.integers(1, 64).flatmap(
        lambda b: st.tuples(
            st.just(b),
            st.lists(
                st.integers(-(2 ** (b - 1)), 2 ** (b - 1) - 1), min_size=1, max_size=20
            ),
        )
    )
)
def test_ring_round_trip(case: tuple[int, list[int]]) -> None:
    bits, xs = case
    arr = np.asarray(xs, dtype=np.int64)
    assert from_ring(to_ring(arr, bits), bits).tolist() == xs


def test_ring_sum_wraps_correctly() -> None:
    bits = 20
    xs = np.array([-300_000, 200_000, 150_000], dtype=np.int64)
    acc = np.uint64(0)
    for r in to_ring(xs, bits):
        acc = (acc + r) & np.uint64((1 << bits) - 1)
    assert from_ring(np.array([acc]), bits)[0] == xs.sum()


# -- envelope --------------------------------------------------------------------------------
def test_envelope_round_trip_and_rejections() -> None:
    h = Header(Scheme.PLAIN, 7, b"\x11" * 32, 42)
    payload = (
        PayloadWriter()
        .u32(5)
        .text("hé")
        .array(np.arange(4.0))
        .int_big(2**300 + 1)
        .getvalue()
    )
    data = seal(h, payload)
    h2, p2 = open_envelope(data)
    assert h2 == h
    r = PayloadReader(p2)
    assert (r.u32(), r.text()) == (5, "hé")
    np.testing.assert_array_equal(r.array(), np.arange(4.0))
    assert r.int_big() == 2**300 + 1
    r.done()
    for bad in (
        data[:-1],
        data + b"\0",
        b"XXXX" + data[4:],
        data[:4] + b"\x00\x01" + data[6:],  # format 1 (FormatVersionError)
        data[:4] + b"\x00\x03" + data[6:],
    ):
        with pytest.raises(DeserializationError):
            open_envelope(bad)
    with pytest.raises(DeserializationError):
        privagg.from_bytes(data)  # kind 7 of PLAIN is not a registered message
    with pytest.raises(DeserializationError):
        PayloadReader(b"\x00\x00").u32()
    with pytest.raises(DeserializationError):
        open_envelope("not bytes")  # type: ignore[arg-type]


@given(st.binary(max_size=200))
def test_from_bytes_never_crashes_on_garbage(data: bytes) -> None:
    with pytest.raises(DeserializationError):
        privagg.from_bytes(data)


# -- secrets ---------------------------------------------------------------------------------
def test_secret_bytes_hygiene() -> None:
    s = SecretBytes(b"\xaa" * 32, label="seed")
    assert "aaaa" not in repr(s) and "aaaa" not in str(s)
    for op in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(TypeError):
            op(s)
    assert s == SecretBytes(b"\xaa" * 32) and s != SecretBytes(b"\xab" * 32)
    assert len(SecretBytes.random(16)) == 16


def test_secret_key_export_requires_protection(tmp_path: os.PathLike[str]) -> None:
    sk = SecretKey("demo", b"material", public_fingerprint=b"\x01" * 32, export=bytes)
    assert "material" not in repr(sk)
    with pytest.raises(TypeError):
        sk.to_bytes()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        pickle.dumps(sk)
    clear = sk.to_bytes(protection=NoProtection())
    assert NoProtection().unwrap(clear) == ("demo", b"\x01" * 32, b"material")
    prot = PasswordProtection("correct horse battery")
    sealed = sk.to_bytes(protection=prot)
    assert b"material" not in sealed
    assert prot.unwrap(sealed)[2] == b"material"
    with pytest.raises(DeserializationError):
        PasswordProtection("wrong password!").unwrap(sealed)
    with pytest.raises(DeserializationError):
        NoProtection().unwrap(sealed)
    path = privagg.write_secret_file(os.path.join(tmp_path, "k", "sk.bin"), sealed)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert privagg.read_secret_file(path) == sealed
    path.chmod(0o644)
    with pytest.raises(ConfigurationError):
        privagg.read_secret_file(path)


def test_errors_share_one_root() -> None:
    for name in (
        "ConfigurationError",
        "DeserializationError",
        "ParameterMismatchError",
        "EncodingOverflowError",
        "ProtocolError",
        "InsufficientParticipantsError",
        "BudgetExceededError",
        "UnsupportedError",
        "MissingKeyError",
    ):
        assert issubclass(getattr(privagg, name), privagg.PrivaggError)
    assert issubclass(privagg.ConfigurationError, ValueError)
    assert issubclass(privagg.EncodingOverflowError, OverflowError)


def test_layout_from_bytes_rejects_overflowing_shapes() -> None:
    # review finding: (2**32, 2**32) wrapped .size to 0 and (2**64-1,) to -1
    import struct

    for shape in ((1 << 32, 1 << 32), ((1 << 64) - 1,), ((1 << 40) + 1,)):
        data = struct.pack(">I", 1) + struct.pack(">H", 1) + b"w"
        data += struct.pack(">BB", 2, len(shape)) + struct.pack(
            f">{len(shape)}Q", *shape
        )
        with pytest.raises(DeserializationError):
            Layout.from_bytes(data)


def test_holder_refuses_replayed_round_and_small_aggregates() -> None:
    from privagg._oneshot import OneShotSession
    from privagg.errors import InsufficientParticipantsError, ProtocolError

    layout = Layout.from_arrays({"a": np.zeros(3)})
    session = privagg.get_backend("plain").setup(layout, max_clients=3)
    ups = {"x": {"a": np.ones(3)}, "y": {"a": np.ones(3)}}
    agg = session.aggregator(5, list(ups))
    reqs = agg.start()
    agg.receive(
        {
            c: session.client(c, 5, layout.flatten(u)).handle(reqs[c])
            for c, u in ups.items()
        }
    )
    holder = session.holder()
    assert holder is session.holder()
    holder.recover(agg.result())
    with pytest.raises(ProtocolError):
        holder.recover(agg.result())
    assert isinstance(session, OneShotSession)
    strict = OneShotSession(
        "plain",
        session.scheme,
        layout,
        session.params_id,
        session.client_codec,
        session.combine_codec,
        session.recover_codec,
        min_contributions=2,
    )
    agg = strict.aggregator(6, ["x"])
    req = agg.start()["x"]
    with pytest.raises(InsufficientParticipantsError):
        agg.receive({"x": strict.client("x", 6, layout.flatten(ups["x"])).handle(req)})
