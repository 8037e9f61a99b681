"""Outside review of issue #16 item 5 (AES-128-CTR masks under HKDF mask keys, envelope
format 2 with a BLAKE3 digest): each attack tried is a test here.

* key/counter reuse: across a whole round (with a dropout) and across rounds, every mask
  seed is used by exactly the parties that must use it, with signs that cancel, and no
  two uses share a mask key (SecAgg+ pairwise vs self masks, additive servers' seeds);
* domain separation of the derivations that feed the mask PRG (pair seeds bind the
  round, the session, the unordered pair; the mask label is used by nothing else);
* the keystream of a long vector is one CTR stream: the block-wise passes continue it
  (no restart per block) and the counter carries past 32 bits;
* the envelope digest is corruption detection only: re-sealing tampered bytes with a
  correct BLAKE3 digest gains a malicious relay nothing; ``seal`` refuses to write bytes
  labelled with a format they are not in;
* ``encode_to_ring``'s rounding coins come from the injected Rng, are unbiased and never
  wrap at the bound.

The mask known answers are recomputed here from the specification with the RFC 5869
HKDF of ``tests/vectors/masking/make_masks_v2.py`` (standard-library HMAC) and
``cryptography``'s AES-128 in ECB mode (the counter blocks written out by hand),
independently of ``privagg``'s CTR code paths.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
from blake3 import blake3
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from privagg import Layout, run_round
from privagg.backends import _ringcode
from privagg.backends._primitives import MASK_PRG_INFO, mask_key
from privagg.backends._ringcode import BLOCK, add_masks, centred, encode_to_ring
from privagg.backends.additive import AdditiveBackend
from privagg.backends.secagg import SecAggBackend
from privagg.backends.secagg import _context as sa_ctx
from privagg.backends.secagg.messages import (
    AdvertiseMessage,
    SecAggKind,
    ShareKeysRequest,
)
from privagg.encoding import FixedPointEncoder
from privagg.envelope import FORMAT_VERSION, Header, Scheme, open_envelope, seal
from privagg.errors import DeserializationError, ProtocolError
from privagg.hazmat import DeterministicRng


# -- an independent model of the mask PRG ----------------------------------------------------
def _load_generator() -> Any:
    """``make_masks_v2.py``: imports nothing from privagg (stdlib HKDF, RFC 5869)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "vectors" / "masking" / "make_masks_v2.py"
    spec = importlib.util.spec_from_file_location("make_masks_v2", path)
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    return gen


_hkdf = _load_generator().hkdf_sha256


def _ctr_by_ecb(key: bytes, nbytes: int, first_block: int = 0) -> bytes:
    """AES-CTR keystream from ECB over explicit 128-bit big-endian counters."""
    nblocks = -(-nbytes // 16)
    ctrs = b"".join(
        ((first_block + i) % (1 << 128)).to_bytes(16, "big") for i in range(nblocks)
    )
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return (ecb.update(ctrs) + ecb.finalize())[:nbytes]


def _model_mask(seed: bytes, size: int, dtype: Any) -> np.ndarray:
    key = _hkdf(seed, b"", b"privagg/mask-prg/v1/aes-128-ctr", 16)
    dt = np.dtype(dtype)
    return np.frombuffer(
        _ctr_by_ecb(key, size * dt.itemsize), dtype=dt.newbyteorder("<")
    ).astype(dt)


# -- keystream continuity and counter width ---------------------------------------------------
@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_long_mask_is_one_ctr_stream_across_blocks(dtype: Any) -> None:
    """A vector longer than BLOCK: the blocked passes continue one keystream (a restart
    per block would reuse key and counter, i.e. repeat the mask every BLOCK words)."""
    size = 2 * BLOCK + 3
    seed = hashlib.sha256(b"review/long-mask").digest()
    want = _model_mask(seed, size, dtype)
    acc = np.zeros(size, dtype)
    add_masks(acc, [(seed, 1)])
    assert np.array_equal(acc, want)
    assert not np.array_equal(acc[:BLOCK], acc[BLOCK : 2 * BLOCK])
    # the client's fused encode-and-mask pass adds the very same words
    enc = FixedPointEncoder(bound=1.0, scale_bits=16)
    x = np.linspace(-1, 1, size)

    def encode(masks: Sequence[tuple[bytes, int]]) -> np.ndarray:
        return encode_to_ring(
            enc,
            x,
            1.0,
            value_bound=1.0,
            clip=False,
            rng=DeterministicRng(5),
            dtype=dtype,
            masks=masks,
        )

    assert np.array_equal(encode([(seed, 1)]) - encode([]), want)
    assert np.array_equal(encode([]) - encode([(seed, -1)]), want)


def test_ctr_counter_carries_past_32_bits() -> None:
    """The CTR implementation under the masks increments the whole 128-bit block: at
    2**32 blocks (a 64 GiB mask) the keystream does not wrap back to block 0."""
    key = mask_key(bytes(32))
    for first in (2**32 - 1, 2**64 - 1, 2**96 - 1):
        enc = Cipher(
            algorithms.AES128(key), modes.CTR(first.to_bytes(16, "big"))
        ).encryptor()
        got = enc.update(bytes(48))
        assert got == _ctr_by_ecb(key, 48, first)
        assert got[16:32] != _ctr_by_ecb(key, 16, 0)


# -- key reuse over whole rounds --------------------------------------------------------------
@pytest.fixture
def mask_uses(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[bytes, int]]]:
    """Every (seed, sign) any role expands into a mask, in order."""
    uses: list[tuple[bytes, int]] = []
    real = _ringcode._mask_streams

    def record(seeds: Sequence[tuple[bytes, int]]) -> Any:
        uses.extend((bytes(s), int(g)) for s, g in seeds)
        return real(seeds)

    monkeypatch.setattr(_ringcode, "_mask_streams", record)
    yield uses


def _net(uses: list[tuple[bytes, int]]) -> Counter[bytes]:
    net: Counter[bytes] = Counter()
    for seed, sign in uses:
        net[seed] += 1 if sign >= 0 else -1
    return net


@pytest.mark.parametrize("active", [False, True])
def test_secagg_mask_seeds_cancel_and_never_repeat(
    active: bool, mask_uses: list[tuple[bytes, int]]
) -> None:
    """Over two SecAgg+ rounds (one with a client dropped after sharing its keys): each
    mask seed nets to zero over the clients' uploads and the server's removal, a pair
    seed is used by its two clients with opposite signs, a self-mask seed by its owner
    once, no seed or mask key is used in both rounds or for two purposes."""
    n, size = 6, 40
    ids = [f"c{i}" for i in range(n)]
    s = SecAggBackend(active=active).setup(
        Layout.from_arrays({"w": np.zeros(size)}), max_clients=n
    )
    ups = {c: {"w": np.full(size, 0.1 * (i + 1))} for i, c in enumerate(ids)}
    seen: list[set[bytes]] = []
    for drop in ({2: ["c3"]}, None):
        del mask_uses[:]
        res = run_round(s, ups, dropouts=drop)
        survivors = [c for c in ids if drop is None or c not in drop[2]]
        want = sum(0.1 * (ids.index(c) + 1) for c in survivors)
        assert np.allclose(res.aggregate["w"], want, atol=1e-3)
        net = _net(mask_uses)
        assert all(v == 0 for v in net.values()), "a mask is not removed exactly"
        uses = Counter(seed for seed, _ in mask_uses)
        # self masks: one upload (+) and one removal (-); pair masks of two survivors: two
        # uploads (+ and -); pair masks with the dropped client: an upload and a removal
        assert set(uses.values()) == {2}
        seeds = set(uses)
        keys = {mask_key(x) for x in seeds}
        assert len(keys) == len(seeds)
        seen.append(keys)
    assert not seen[0] & seen[1]


def test_additive_mask_seeds_are_per_client_per_server_per_round(
    mask_uses: list[tuple[bytes, int]],
) -> None:
    n_servers, ids = 3, ["a", "b", "c", "d"]
    s = AdditiveBackend(n_servers=n_servers).setup(
        Layout.from_arrays({"w": np.zeros(16)}), max_clients=4
    )
    ups = {c: {"w": np.full(16, 0.25)} for c in ids}
    seen: list[set[bytes]] = []
    for _ in range(2):
        del mask_uses[:]
        res = run_round(s, ups)
        assert np.allclose(res.aggregate["w"], 1.0, atol=1e-3)
        assert all(v == 0 for v in _net(mask_uses).values())
        seeds = {seed for seed, _ in mask_uses}
        assert len(seeds) == len(ids) * (n_servers - 1)  # server 0 gets the share
        assert len({mask_key(x) for x in seeds}) == len(seeds)
        seen.append(seeds)
    assert not seen[0] & seen[1]


# -- domain separation ------------------------------------------------------------------------
def test_pair_seeds_bind_round_session_and_the_unordered_pair() -> None:
    layout = Layout.from_arrays({"w": np.zeros(4)})
    cfg = SecAggBackend().setup(layout, max_clients=3)._cfg
    other = SecAggBackend().setup(layout, max_clients=3)._cfg
    assert cfg.params_id != other.params_id
    shared = hashlib.sha256(b"review/shared").digest()
    base = sa_ctx._pair_seed(cfg, 7, shared, "alice", "bob")
    assert base == sa_ctx._pair_seed(cfg, 7, shared, "bob", "alice")  # both ends agree
    variants = [
        sa_ctx._pair_seed(cfg, 8, shared, "alice", "bob"),
        sa_ctx._pair_seed(other, 7, shared, "alice", "bob"),
        sa_ctx._pair_seed(cfg, 7, shared, "alice", "carol"),
        # length-prefixed ids: moving a character between the ids is another pair
        sa_ctx._pair_seed(cfg, 7, shared, "alic", "ebob"),
        sa_ctx._pair_seed(cfg, 7, shared, "ab", "c"),
        sa_ctx._pair_seed(cfg, 7, shared, "a", "bc"),
    ]
    assert len({base, *variants}) == len(variants) + 1
    # the same ECDH secret also keys the share encryption: another label, another key
    share_key, _ = sa_ctx._share_key(cfg, 7, shared, "alice", "bob", bytes(32))
    assert share_key != base and mask_key(base) not in (share_key[:16], share_key[16:])


def test_mask_label_is_used_by_no_other_derivation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every HKDF call of a SecAgg+ and an additive round: the mask label appears only
    in mask-key derivations (16-byte output from a 32-byte seed), and no other info
    starts with it."""
    from privagg.backends import _primitives

    infos: list[tuple[bytes, int]] = []
    real = _primitives.HKDF

    class Recording:
        def __init__(self, *, algorithm: Any, length: int, salt: Any, info: Any):
            infos.append((bytes(info), length))
            self._h = real(algorithm=algorithm, length=length, salt=salt, info=info)

        def derive(self, key: bytes) -> bytes:
            return self._h.derive(key)

    monkeypatch.setattr(_primitives, "HKDF", Recording)
    layout = Layout.from_arrays({"w": np.zeros(8)})
    ups = {c: {"w": np.zeros(8)} for c in ("a", "b", "c")}
    run_round(SecAggBackend(active=True).setup(layout, max_clients=3), ups)
    run_round(AdditiveBackend(n_servers=2).setup(layout, max_clients=3), ups)
    mask = [(i, n) for i, n in infos if i.startswith(MASK_PRG_INFO)]
    others = [i for i, _ in infos if not i.startswith(MASK_PRG_INFO)]
    assert mask and others
    assert all(i == MASK_PRG_INFO and n == 16 for i, n in mask)
    assert not any(MASK_PRG_INFO.startswith(i) for i in others)


# -- the envelope digest is not authentication ------------------------------------------------
def test_seal_refuses_to_label_bytes_with_another_format() -> None:
    """``Header.version`` is public: sealing a header of format 1 wrote a BLAKE3 digest
    under a format-1 label (bytes no privagg reads as what they claim to be)."""
    for version in (1, 3):
        with pytest.raises(ValueError, match="format"):
            seal(Header(Scheme.CORE, 1, bytes(32), 0, version), b"x")
    env = seal(Header(Scheme.CORE, 1, bytes(32), 0, FORMAT_VERSION), b"x")
    assert open_envelope(env)[0].version == FORMAT_VERSION


def test_resealed_key_substitution_is_refused_by_active_clients() -> None:
    """A malicious server swaps a client's advertised keys for its own and re-seals the
    relayed key list with a valid digest: the signatures, not the digest, refuse it."""
    n, size = 4, 8
    ids = [f"c{i}" for i in range(n)]
    s = SecAggBackend(active=True).setup(
        Layout.from_arrays({"w": np.zeros(size)}), max_clients=n
    )
    clients = {c: s.client(c, 0, np.zeros(size)) for c in ids}
    agg = s.aggregator(0, ids)
    reps = {c: clients[c].handle(r) for c, r in agg.start().items()}
    victim = "c0"
    req = ShareKeysRequest.from_bytes(agg.receive(reps)[victim])
    # every other client's keys replaced by the server's own (it knows their secrets)
    forged_keys = tuple(
        k
        if k.party == victim
        else AdvertiseMessage(
            k.params_id,
            k.round_id,
            k.party,
            hashlib.sha256(b"evil-c" + k.party.encode()).digest(),
            hashlib.sha256(b"evil-s" + k.party.encode()).digest(),
            k.signature,
            k.b_commit,
        )
        for k in req.keys
    )
    forged = ShareKeysRequest(req.params_id, req.round_id, victim, forged_keys)
    env = forged.to_bytes()  # sealed with a correct BLAKE3 digest
    assert env[-16:] == blake3(env[:-16]).digest(16)
    assert open_envelope(env)[0].kind == SecAggKind.SHARE_KEYS
    with pytest.raises(ProtocolError, match="signature"):
        clients[victim].handle(env)


def test_resealed_additive_seed_ciphertext_is_refused() -> None:
    """A flipped bit in a client's encrypted seed, re-sealed with a valid digest: the
    server's AES-GCM refuses it (the digest was never what protected it)."""
    from privagg.backends.additive import ClientShares, ServerRequest

    ids = ["a", "b", "c"]
    s = AdditiveBackend(n_servers=2).setup(
        Layout.from_arrays({"w": np.zeros(8)}), max_clients=3
    )
    agg = s.aggregator(0, ids)
    reqs = agg.start()
    reps = {c: s.client(c, 0, np.zeros(8)).handle(reqs[c]) for c in ids}
    out = agg.receive(reps)
    (sid, sreq), *_ = out.items()
    parsed = ServerRequest.from_bytes(sreq)
    cid, epk, ct = parsed.entries[0]
    bad = bytes([ct[0] ^ 1]) + ct[1:]
    forged = ServerRequest(
        parsed.params_id,
        parsed.round_id,
        parsed.party,
        ((cid, epk, bad), *parsed.entries[1:]),
    ).to_bytes()
    assert open_envelope(forged)  # a valid envelope
    server = s.servers(0)[sid]
    with pytest.raises(DeserializationError):
        server.handle(forged)
    assert ClientShares.from_bytes(reps[cid]).party == cid


# -- encode_to_ring's rounding ----------------------------------------------------------------
class _Counting:
    def __init__(self, seed: int) -> None:
        self.inner, self.drawn = DeterministicRng(seed), 0

    def random_bytes(self, n: int) -> bytes:
        self.drawn += n
        return self.inner.random_bytes(n)


def test_rounding_coins_come_from_the_injected_rng_and_are_unbiased() -> None:
    enc = FixedPointEncoder(bound=4.0, scale_bits=2)  # one unit = 0.25
    x = np.full(200_000, 0.3 * 0.25 + 1.0)  # y = 4.3 units: 4 or 5, P[5] = 0.3
    r1, r2 = _Counting(9), _Counting(9)
    kw: dict[str, Any] = {"value_bound": 4.0, "clip": False, "dtype": np.uint32}
    a = encode_to_ring(enc, x, 1.0, rng=r1, **kw)
    b = encode_to_ring(enc, x, 1.0, rng=r2, **kw)
    assert r1.drawn == 32 and np.array_equal(a, b)  # one fresh coin key, from rng
    c = encode_to_ring(enc, x, 1.0, rng=DeterministicRng(10), **kw)
    assert not np.array_equal(a, c)
    v = centred(a).astype(np.int64)
    assert set(np.unique(v)) == {4, 5}
    p = float(np.mean(v == 5))
    assert abs(p - 0.3) < 5 * np.sqrt(0.3 * 0.7 / x.size)


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_rounding_never_wraps_at_the_bound(dtype: Any) -> None:
    """Values at +-bound, with the largest weight, land on +-ceil(bound * scale) at
    most: no wrap past the signed range of the ring word."""
    bits = 20 if dtype is np.uint32 else 40
    enc = FixedPointEncoder(bound=2.0, scale_bits=bits)
    top = 2.0 * 2**bits
    x = np.array([2.0, -2.0, 2.0 - 2**-bits / 3, -(2.0 - 2**-bits / 3)] * 1000)
    w = encode_to_ring(
        enc,
        x,
        1.0,
        value_bound=2.0,
        clip=False,
        rng=DeterministicRng(3),
        dtype=dtype,
    )
    v = centred(w).astype(np.float64)
    assert np.all(np.abs(v) <= top)
    assert np.all(np.abs(v - x * 2**bits) < 1)


# -- downgrade -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["secagg", "additive"])
def test_a_peer_on_the_exact_v2_params_is_refused(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The params_id a v2 peer computes (tag ``secagg/v2`` / ``additive/v2``, no mask
    PRG field), from the same setup randomness: its request is another session's,
    refused before decoding, whether sealed in format 2 or (as v2 did) format 1."""
    from privagg.backends import _masking
    from privagg.errors import FormatVersionError, ParameterMismatchError

    # both backends build their params_id in the ring-masking core (#14)
    module = _masking
    layout = Layout.from_arrays({"w": np.zeros(8)})

    def make() -> Any:
        if name == "secagg":
            return SecAggBackend().setup(layout, max_clients=3, rng=DeterministicRng(1))
        return AdditiveBackend(n_servers=2).setup(
            layout, max_clients=3, rng=DeterministicRng(1)
        )

    new = make()
    real = module.fingerprint

    def v2_fingerprint(tag: bytes, *rest: bytes) -> bytes:
        if tag == {"secagg": b"secagg/v5", "additive": b"additive/v3"}[name]:
            return real(f"{name}/v2".encode(), *rest[1:])
        return real(tag, *rest)

    monkeypatch.setattr(module, "fingerprint", v2_fingerprint)
    old = make()
    monkeypatch.undo()
    assert old.params_id != new.params_id
    reqs = old.aggregator(0, ["a", "b", "c"]).start()
    with pytest.raises(ParameterMismatchError):
        new.client("a", 0, np.zeros(8)).handle(reqs["a"])
    head = bytearray(reqs["b"][:-16])
    head[4:6] = b"\x00\x01"
    as_v1 = bytes(head) + hashlib.blake2b(bytes(head), digest_size=16).digest()
    with pytest.raises(FormatVersionError):
        new.client("b", 0, np.zeros(8)).handle(as_v1)


@pytest.mark.parametrize("bound", [2.0**31 - 2.5, 2.0**31 - 1.5, 2.0**31 - 0.5])
def test_the_ring_a_session_picks_never_wraps_at_its_bound(bound: float) -> None:
    """Right at the 32-bit ring's edge: ``encode_to_ring`` itself wraps a value that
    rounds up to 2**31 in a 32-bit ring, so the session's capacity check must move such
    bounds to the 64-bit ring; every value it accepts then decodes within one unit."""
    from privagg.backends._masking import RingOptions

    enc, bits = RingOptions(bound, 0, False).size_ring(4, 1, 1.0, None)
    assert bits == (32 if bound < 2.0**31 - 2 else 64)
    x = np.array([bound, -bound, bound - 0.25, 0.5 - bound] * 500)
    w = encode_to_ring(
        enc,
        x,
        1.0,
        value_bound=bound,
        clip=False,
        rng=DeterministicRng(4),
        dtype=np.uint32 if bits == 32 else np.uint64,
    )
    v = centred(w)
    assert all(abs(int(a) - b) < 1 for a, b in zip(v, x, strict=True))
