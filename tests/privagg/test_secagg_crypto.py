"""SecAgg+ building blocks: Shamir sharing, mask PRG vectors, and statistical uniformity of
what the server sees (one masked upload; any t - 1 shares)."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import secrets as pysecrets
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from privagg import DeserializationError, Layout
from privagg._rng import SystemRng, aes_ctr_keystream
from privagg.backends import _shamir
from privagg.backends import secagg as sa
from privagg.backends._primitives import (
    MASK_PRG_INFO,
    MaskExpander,
    ecdh,
    hkdf,
    mask_key,
    x25519_public,
)
from privagg.backends._ringcode import add_masks
from privagg.backends.secagg import SecAggBackend
from privagg.backends.secagg import messages as sa_msg
from privagg.errors import ConfigurationError, ProtocolError
from privagg.hazmat import DeterministicRng

_DIR = Path(__file__).parents[1] / "vectors" / "masking"
VECTORS = json.loads((_DIR / "masks_v1.json").read_text())  # x25519, HKDF, Shamir
MASKS = json.loads((_DIR / "masks_v2.json").read_text())  # the v3 mask PRG
P_MIN = (
    1e-6  # p-value below which a uniformity test fails (false alarm rate 1e-6 per test)
)


# -- known answers ------------------------------------------------------------------------------
def test_aes256_ctr_matches_nist_sp800_38a() -> None:
    key = bytes.fromhex(
        "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4"
    )
    ctr = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
    pt = bytes.fromhex("6bc1bee22e409f96e93d7e117393172a")
    ks = aes_ctr_keystream(key, 16, ctr)
    assert (
        bytes(a ^ b for a, b in zip(ks, pt, strict=True)).hex()
        == "601ec313775789a5b7a7f504bbf3d228"
    )


def test_x25519_matches_rfc7748() -> None:
    a = bytes.fromhex(
        "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
    )
    b = bytes.fromhex(
        "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"
    )
    assert (
        x25519_public(a).hex()
        == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    )
    assert (
        x25519_public(b).hex()
        == "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    )
    want = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    assert ecdh(a, x25519_public(b)).hex() == ecdh(b, x25519_public(a)).hex() == want


def test_aes128_ctr_matches_nist_sp800_38a() -> None:
    """The mask PRG's cipher: NIST SP 800-38A F.5.1 (CTR-AES128.Encrypt)."""
    key = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
    ctr = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
    pt = bytes.fromhex(
        "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
    )
    ks = aes_ctr_keystream(key, 32, ctr)
    assert (
        bytes(a ^ b for a, b in zip(ks, pt, strict=True)).hex()
        == "874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff"
    )


def test_mask_vector_file_is_what_its_independent_generator_computes() -> None:
    """``masks_v2.json`` is reproduced by ``make_masks_v2.py``, which imports nothing from
    privagg (stdlib HKDF, ``cryptography`` AES-128-CTR)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_masks_v2", _DIR / "make_masks_v2.py"
    )
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    src = (_DIR / "make_masks_v2.py").read_text(encoding="utf-8")
    assert not re.search(r"^\s*(from|import)\s+privagg", src, re.M)
    assert gen.vectors() == MASKS
    assert MASKS["info"].encode() == MASK_PRG_INFO


@pytest.mark.parametrize(
    "vec", MASKS["masks"], ids=lambda v: f"{v['dtype']}x{v['size']}"
)
def test_mask_vectors(vec: dict[str, object]) -> None:
    dt = np.dtype(str(vec["dtype"]))
    size = int(vec["size"])  # type: ignore[call-overload]
    seed = bytes.fromhex(str(vec["seed"]))
    assert mask_key(seed).hex() == vec["mask_key"]
    m = MaskExpander(size, dt.type).mask(seed)
    assert [int(w) for w in m[:4]] == vec["first_words"]
    raw = m.astype(dt.newbyteorder("<")).tobytes()
    assert hashlib.sha256(raw).hexdigest() == vec["sha256"]
    assert raw == aes_ctr_keystream(mask_key(seed), size * dt.itemsize)
    # the fused client pass and the server's blocked removal use the same masks
    acc = np.zeros(size, dt)
    add_masks(acc, [(seed, 1)])
    assert np.array_equal(acc, m)
    exp = MaskExpander(size, dt.type)
    exp.add(acc, seed, 1)
    exp.add(acc, seed, -1)
    assert np.array_equal(acc, m)


def test_mask_key_is_128_bits_domain_separated_and_not_the_seed() -> None:
    seed = bytes(range(32))
    key = mask_key(seed)
    assert len(key) == 16
    assert key not in (seed[:16], seed[16:])
    # another label (any other HKDF use in privagg) gives an unrelated key
    assert hkdf(seed, salt=b"", info=b"privagg/other", length=16) != key
    # the mask is not the old (v1) AES-256-CTR keystream of the seed
    assert MaskExpander(8, np.uint32).mask(seed).tobytes() != aes_ctr_keystream(
        seed, 32
    )
    with pytest.raises(ProtocolError):
        mask_key(seed[:16])


def test_x25519_hkdf_and_shamir_regression_vectors() -> None:
    v = VECTORS["x25519"]
    a, b = bytes.fromhex(v["a_private"]), bytes.fromhex(v["b_private"])
    assert x25519_public(a).hex() == v["a_public"]
    assert x25519_public(b).hex() == v["b_public"]
    shared = ecdh(a, bytes.fromhex(v["b_public"]))
    assert shared.hex() == v["shared"]
    assert (
        hkdf(
            shared,
            salt=bytes.fromhex(v["hkdf_salt"]),
            info=bytes.fromhex(v["hkdf_info"]),
        ).hex()
        == v["hkdf_out"]
    )
    s = VECTORS["shamir"]
    assert int(s["prime"], 16) == _shamir.PRIME
    got = _shamir.share(
        bytes.fromhex(s["secret"]),
        [1, 2, 3, 4, 5],
        s["threshold"],
        DeterministicRng(s["rng_seed"]),
    )
    assert {str(x): hex(y) for x, y in got.items()} == s["shares"]


# -- Shamir ---------------------------------------------------------------------------------------
def _is_probable_prime(n: int, rounds: int = 40) -> bool:
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for _ in range(rounds):
        a = pysecrets.randbelow(n - 3) + 2
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def test_field_is_prime_and_holds_every_32_byte_secret() -> None:
    assert _is_probable_prime(_shamir.PRIME)
    assert _shamir.PRIME > 2**256
    assert not any(_is_probable_prime(2**256 + c, 8) for c in range(1, 297, 2))


@pytest.mark.parametrize("t,n", [(1, 3), (2, 4), (3, 5), (4, 7)])
def test_every_threshold_subset_reconstructs(t: int, n: int) -> None:
    rng = SystemRng()
    for secret in (bytes(32), b"\xff" * 32, rng.random_bytes(32)):
        xs = list(range(1, n + 1))
        sh = _shamir.share(secret, xs, t, rng)
        for sub in itertools.combinations(xs, t):
            assert _shamir.reconstruct({x: sh[x] for x in sub}, t) == secret
        if t > 1:
            with pytest.raises(ConfigurationError):
                _shamir.reconstruct({x: sh[x] for x in xs[: t - 1]}, t)
            wrong = {x: sh[x] for x in xs[:t]}
            wrong[xs[0]] = (wrong[xs[0]] + 1) % _shamir.PRIME
            try:
                assert _shamir.reconstruct(wrong, t) != secret
            except DeserializationError:
                pass


def test_share_encoding_is_canonical() -> None:
    assert (
        _shamir.decode_share(_shamir.encode_share(_shamir.PRIME - 1))
        == _shamir.PRIME - 1
    )
    with pytest.raises(DeserializationError):
        _shamir.decode_share(_shamir.PRIME.to_bytes(33, "big"))
    with pytest.raises(DeserializationError):
        _shamir.decode_share(b"\x00" * 32)
    with pytest.raises(ConfigurationError):
        _shamir.share(b"short", [1, 2], 2, SystemRng())
    with pytest.raises(ConfigurationError):
        _shamir.share(bytes(32), [1, 1], 2, SystemRng())


def _uniform_p_values(u: np.ndarray) -> list[float]:
    """KS test of floats on [0, 1) and a 64-bin chi-square."""
    ks = stats.kstest(u, "uniform").pvalue
    counts = np.bincount(np.minimum((u * 64).astype(int), 63), minlength=64)
    chi = stats.chisquare(counts).pvalue
    return [float(ks), float(chi)]


@pytest.mark.parametrize("secret", [bytes(32), b"\xff" * 32])
def test_any_t_minus_1_shares_are_uniform(secret: bytes) -> None:
    """For t = 3 of 5 holders: every pair of shares is (jointly) uniform, whatever the secret."""
    rng = SystemRng()
    trials = 2000
    samples = np.array(
        [
            [
                v
                for _, v in sorted(
                    _shamir.share(secret, [1, 2, 3, 4, 5], 3, rng).items()
                )
            ]
            for _ in range(trials)
        ],
        dtype=object,
    )
    p = float(_shamir.PRIME)
    for i, j in itertools.combinations(range(5), 2):
        ui = np.array([float(v) / p for v in samples[:, i]])
        uj = np.array([float(v) / p for v in samples[:, j]])
        pv = _uniform_p_values(ui) + _uniform_p_values(uj)
        grid = np.bincount(
            np.minimum((ui * 8).astype(int), 7) * 8
            + np.minimum((uj * 8).astype(int), 7),
            minlength=64,
        )
        pv.append(float(stats.chisquare(grid).pvalue))  # joint uniformity of the pair
        assert min(pv) > P_MIN, (i, j, pv)


# -- what the server sees -----------------------------------------------------------------------------
def _masked_upload(x: np.ndarray, active: bool) -> np.ndarray:
    n = 5
    be = SecAggBackend(active=active)
    s = be.setup(Layout.from_arrays({"w": x}), max_clients=n)
    ids = [f"c{i}" for i in range(n)]
    clients = {c: s.client(c, 0, x) for c in ids}
    agg = s.aggregator(0, ids)
    reqs = agg.start()
    while True:
        reps = {c: clients[c].handle(r) for c, r in reqs.items()}
        kind = sa_msg._wire.peek_header(reps["c0"]).kind
        if kind == sa.SecAggKind.MASKED:
            return sa.MaskedInput.from_bytes(reps["c0"]).masked
        reqs = agg.receive(reps)


@pytest.mark.parametrize("value,active", [(0.0, True), (0.999, False), (-0.5, True)])
def test_one_masked_upload_is_uniform(value: float, active: bool) -> None:
    x = np.full(20000, value)
    y = _masked_upload(x, active)
    assert y.dtype == np.uint32
    u = y.astype(np.float64) / 2.0**32
    pv = _uniform_p_values(u)
    low = np.bincount((y & np.uint32(0xFF)).astype(np.int64), minlength=256)
    pv.append(float(stats.chisquare(low).pvalue))
    assert min(pv) > P_MIN, pv
    # and two uploads of the same input are unrelated
    y2 = _masked_upload(x, active)
    assert abs(stats.pearsonr(y.astype(float), y2.astype(float)).statistic) < 0.05


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_mask_prg_words_are_uniform_in_the_ring(
    dtype: type[np.unsignedinteger],
) -> None:
    """The v3 mask PRG (AES-128-CTR under HKDF mask keys): the words of one mask are
    uniform over the whole ring (top bits, low byte), and masks of related seeds (one
    bit apart) are unrelated."""
    seed = SystemRng().random_bytes(32)
    m = MaskExpander(40000, dtype).mask(seed)
    top = (m >> np.array(np.iinfo(dtype).bits - 8, dtype=dtype)).astype(np.int64)
    low = (m & np.array(0xFF, dtype=dtype)).astype(np.int64)
    pv = _uniform_p_values(m.astype(np.float64) / 2.0 ** np.iinfo(dtype).bits)
    pv.append(float(stats.chisquare(np.bincount(top, minlength=256)).pvalue))
    pv.append(float(stats.chisquare(np.bincount(low, minlength=256)).pvalue))
    assert min(pv) > P_MIN, pv
    other = MaskExpander(40000, dtype).mask(bytes([seed[0] ^ 1]) + seed[1:])
    corr = stats.pearsonr(m.astype(float), other.astype(float)).statistic
    assert abs(corr) < 0.05


def test_one_additive_share_is_uniform() -> None:
    """What server 0 sees of a client (its share, the encoding minus the v3 mask
    expansions of the other servers' seeds) is uniform, whatever the update."""
    from privagg.backends.additive import AdditiveBackend, ClientShares

    x = np.full(20000, 0.25)
    s = AdditiveBackend(n_servers=2).setup(Layout.from_arrays({"w": x}), max_clients=3)
    req = s.aggregator(0, ["a", "b", "c"]).start()["a"]
    y = ClientShares.from_bytes(s.client("a", 0, x).handle(req)).share0
    assert y.dtype == np.uint32
    pv = _uniform_p_values(y.astype(np.float64) / 2.0**32)
    low = np.bincount((y & np.uint32(0xFF)).astype(np.int64), minlength=256)
    pv.append(float(stats.chisquare(low).pvalue))
    assert min(pv) > P_MIN, pv
