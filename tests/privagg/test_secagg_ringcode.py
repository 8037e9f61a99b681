"""The fused encode + mask pass of ``_ringcode`` (shared by SecAgg+ and additive), and the
holders' digest-once result check."""

from __future__ import annotations

import numpy as np
import pytest

import privagg
from privagg import DeserializationError, Layout, ParameterMismatchError, ProtocolError
from privagg._rng import SystemRng, aes_ctr_keystream
from privagg.backends._primitives import MaskExpander
from privagg.backends._ringcode import BLOCK, add_masks, centred, encode_to_ring
from privagg.backends.additive import AdditiveBackend
from privagg.backends.secagg import SecAggBackend
from privagg.encoding import FixedPointEncoder, from_ring, to_ring
from privagg.errors import ConfigurationError, EncodingOverflowError
from privagg.hazmat import DeterministicRng

SIZES = [0, 1, 7, BLOCK - 1, BLOCK, 2 * BLOCK + 5]


def _seeds(k: int) -> list[tuple[bytes, int]]:
    rng = DeterministicRng(99)
    return [(rng.random_bytes(32), 1 if i % 3 else -1) for i in range(k)]


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
@pytest.mark.parametrize("size", SIZES)
def test_fused_masks_equal_encode_then_add(
    dtype: type[np.unsignedinteger], size: int
) -> None:
    enc = FixedPointEncoder(1.0, 16)
    x = np.random.default_rng(size).uniform(-1, 1, size)
    seeds = _seeds(4)
    kw = {"value_bound": 1.0, "clip": False, "dtype": dtype}
    fused = encode_to_ring(enc, x, 0.5, rng=DeterministicRng(7), masks=seeds, **kw)  # type: ignore[arg-type]
    plain = encode_to_ring(enc, x, 0.5, rng=DeterministicRng(7), **kw)  # type: ignore[arg-type]
    ref = plain.copy()
    add_masks(ref, seeds)
    assert fused.dtype == np.dtype(dtype) and np.array_equal(fused, ref)
    # and add_masks is the MaskExpander definition of the masks
    exp = MaskExpander(size, dtype)
    want = plain.copy()
    for seed, sign in seeds:
        exp.add(want, seed, sign)
    assert np.array_equal(fused, want)
    # removing the masks gives back the encoding, within one unit of weight * x * 2**16
    add_masks(fused, [(s, -g) for s, g in seeds])
    assert np.array_equal(fused, plain)
    assert np.all(np.abs(centred(plain) - 0.5 * x * 2**16) < 1)


def test_rounding_words_are_aes_ctr_under_a_key_from_the_rng() -> None:
    """The rounding words are the AES-256-CTR keystream of the next 32 bytes of the Rng
    (one key per encoding: the Rng is asked for 32 bytes only, whatever the size)."""
    n = 2 * BLOCK + 3
    enc = FixedPointEncoder(1.0, 16)
    x = np.random.default_rng(3).uniform(-1, 1, n)
    rng = DeterministicRng(11)
    got = encode_to_ring(
        enc, x, 1.0, value_bound=1.0, clip=False, rng=rng, dtype=np.uint64
    )
    key = DeterministicRng(11).random_bytes(32)
    words = np.frombuffer(aes_ctr_keystream(key, 4 * n), "<u4") * 2.0**-32
    y = x * 2.0**16
    want = np.floor(y) + (words < y - np.floor(y))
    assert np.array_equal(centred(got), want.astype(np.int64))
    assert rng.random_bytes(16) == DeterministicRng(11).random_bytes(48)[-16:]
    # fresh randomness per call with the OS CSPRNG
    a = encode_to_ring(
        enc, x, 1.0, value_bound=1.0, clip=False, rng=SystemRng(), dtype=np.uint32
    )
    b = encode_to_ring(
        enc, x, 1.0, value_bound=1.0, clip=False, rng=SystemRng(), dtype=np.uint32
    )
    assert not np.array_equal(a, b)
    assert np.all(np.abs(centred(a) - y) < 1) and np.all(np.abs(centred(b) - y) < 1)


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_wide_values_reduce_mod_ring(dtype: type[np.unsignedinteger]) -> None:
    """Values wider than the ring's signed half take the int64 path and wrap mod 2**bits."""
    enc = FixedPointEncoder(2.0**40, 16)  # max_abs_int = 2**56
    ints = np.array(
        [0, 1, -1, 2**31, -(2**31) - 5, 2**55, -(2**50) + 3], dtype=np.int64
    )
    x = ints.astype(np.float64) * 2.0**-16  # exact grid values: the rounding is exact
    got = encode_to_ring(
        enc,
        x,
        1.0,
        value_bound=2.0**40,
        clip=False,
        rng=DeterministicRng(1),
        dtype=dtype,
    )
    bits = 8 * np.dtype(dtype).itemsize
    assert np.array_equal(got.astype(np.uint64), to_ring(ints, bits))


def test_heavy_weight_takes_the_wide_path() -> None:
    """The direct int32 path is chosen from the actual ``weight * value_bound``, not from
    the encoder's contract: a weight beyond it still wraps mod 2**32 exactly."""
    enc = FixedPointEncoder(1.0, 16)
    ints = np.array([0, 3, -7, 2**10], dtype=np.int64)
    x = ints.astype(np.float64) * 2.0**-16
    got = encode_to_ring(
        enc,
        x,
        2.0**22,
        value_bound=1.0,
        clip=False,
        rng=DeterministicRng(2),
        dtype=np.uint32,
    )
    assert np.array_equal(got.astype(np.uint64), to_ring(ints * 2**22, 32))


def test_encode_errors_and_clip_with_masks() -> None:
    enc = FixedPointEncoder(1.0, 16)
    kw = {
        "value_bound": 1.0,
        "rng": DeterministicRng(0),
        "dtype": np.uint32,
        "masks": _seeds(2),
    }
    x = np.zeros(BLOCK + 10)
    x[BLOCK + 3] = 1.5
    with pytest.raises(EncodingOverflowError):
        encode_to_ring(enc, x, 1.0, clip=False, **kw)  # type: ignore[arg-type]
    x[BLOCK + 3] = np.nan
    with pytest.raises(ConfigurationError):
        encode_to_ring(enc, x, 1.0, clip=True, **kw)  # type: ignore[arg-type]
    x[BLOCK + 3] = 1.5
    got = encode_to_ring(enc, x, 1.0, clip=True, **kw)  # type: ignore[arg-type]
    add_masks(got, [(s, -g) for s, g in _seeds(2)])
    assert centred(got)[BLOCK + 3] == 2**16 and not centred(got)[:BLOCK].any()


@pytest.mark.parametrize("bits", [32, 64])
def test_centred_matches_from_ring(bits: int) -> None:
    dt = np.uint32 if bits == 32 else np.uint64
    w = np.frombuffer(DeterministicRng(4).random_bytes(8 * 1000), dt)
    w = np.concatenate(
        [w, np.array([0, 1, 2 ** (bits - 1) - 1, 2 ** (bits - 1), 2**bits - 1], dt)]
    )
    assert np.array_equal(
        centred(w).astype(np.int64), from_ring(w.astype(np.uint64), bits)
    )
    with pytest.raises(ConfigurationError):
        centred(np.zeros(3, np.uint16))


# -- holders: the result's digest is checked once, errors unchanged ---------------------------------
def _result(backend: object, n: int = 3) -> tuple[object, bytes]:
    ups = {f"c{i}": {"w": np.full(5, 0.25 * i)} for i in range(n)}
    s = backend.setup(Layout.from_arrays(ups["c0"]), max_clients=n)  # type: ignore[attr-defined]
    agg = s.aggregator(0, list(ups))
    parties = {
        **{c: s.client(c, 0, s.layout.flatten(u)) for c, u in ups.items()},
        **s.servers(0),
    }
    out = agg.start()
    while not agg.done:
        out = agg.receive({p: parties[p].handle(r) for p, r in out.items()})
    return s, agg.result()


@pytest.mark.parametrize(
    "backend",
    [SecAggBackend(), AdditiveBackend(n_servers=3)],
    ids=["secagg", "additive"],
)
def test_holder_checks_result_digest_once_and_keeps_errors(backend: object) -> None:
    s, res = _result(backend)
    rec = s.holder().recover(res)  # type: ignore[attr-defined]
    assert np.allclose(rec.vector, 0.75, atol=1e-4)
    for pos in (
        7,
        8,
        60,
        len(res) // 2,
        len(res) - 1,
    ):  # kind, params_id, payload, digest
        bad = bytearray(res)
        bad[pos] ^= 1
        with pytest.raises(DeserializationError):
            s.holder().recover(bytes(bad))  # type: ignore[attr-defined]
    with pytest.raises(DeserializationError):
        s.holder().recover(res[:-1])  # type: ignore[attr-defined]
    other, _ = _result(backend)
    with pytest.raises(ParameterMismatchError):
        other.holder().recover(res)  # type: ignore[attr-defined]
    foreign = privagg.envelope.seal(
        privagg.envelope.Header(privagg.envelope.Scheme.PLAIN, 1, bytes(32), 0), b""
    )
    with pytest.raises(ProtocolError):
        s.holder().recover(foreign)  # type: ignore[attr-defined]
