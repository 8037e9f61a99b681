"""Fuzzing every parser of bytes a peer or a file controls, one harness per parser.

Each parser gets ``PRIVAGG_FUZZ_EXAMPLES`` hypothesis examples; each example is a seed
from which ``PRIVAGG_FUZZ_BATCH`` inputs are derived by mutating a corpus of valid
encodings (bit flips, byte edits, truncation, insertion, deletion, duplicated runs,
planted huge 32/64-bit length or count fields), half of them **re-sealed** in a valid
envelope so the payload parser itself runs. ``make hardening`` sets both high (``inputs
per parser = examples x batch``); CI keeps a few hundred per parser. The counts that
ran are recorded for ``docs/hardening.md``.

Contract checked for every input: the parser returns, or raises one of its documented
typed errors; nothing else escapes, and the Python heap it allocates stays within a
fixed multiple of the input size (a claimed size is checked before allocation).
"""

from __future__ import annotations

import os
import random
import struct
import tempfile
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import privagg
from privagg.envelope import Header, open_envelope, seal
from privagg.errors import (
    ConfigurationError,
    DeserializationError,
    MissingKeyError,
    ParameterMismatchError,
    PrivaggError,
)
from privagg.keys import NoProtection
from privagg.layout import Layout
from tests.hardening_counts import BATCH, count, fuzz_settings

pytestmark = pytest.mark.slow

HEAP_SLACK = 4 << 20


# -- mutation ----------------------------------------------------------------------------
def mutate_bytes(rnd: random.Random, data: bytes) -> bytes:
    """One mutated input from ``data`` (raw, or re-sealed around a mutated payload)."""
    reseal = rnd.random() < 0.5
    header: Header | None = None
    body = data
    if reseal:
        try:
            header, payload = open_envelope(data)
            body = bytes(payload)
        except DeserializationError:
            header = None
    b = bytearray(body)
    for _ in range(rnd.choice((1, 1, 1, 2, 3, 4))):
        op = rnd.randrange(8)
        i = rnd.randrange(len(b) + 1)
        if op == 0 and b:  # flip a bit
            b[i % len(b)] ^= 1 << rnd.randrange(8)
        elif op == 1 and b:  # set a byte
            b[i % len(b)] = rnd.randrange(256)
        elif op == 2:  # truncate
            del b[i:]
        elif op == 3:  # insert random bytes
            b[i:i] = rnd.randbytes(rnd.randrange(1, 17))
        elif op == 4:  # delete a run
            del b[i : i + rnd.randrange(1, 9)]
        elif op == 5:  # duplicate a run
            b[i:i] = b[i : i + rnd.randrange(1, 33)]
        elif op in (6, 7) and len(b) >= 8:  # plant a huge length or count
            j = min(i, len(b) - 8)
            big = rnd.choice((1 << 63, (1 << 64) - 1, 1 << 40, 1 << 31, (1 << 32) - 1))
            if op == 6:
                b[j : j + 8] = struct.pack(">Q", big % (1 << 64))
            else:
                b[j : j + 4] = struct.pack(">I", big % (1 << 32))
    if header is None:
        return bytes(b)
    if rnd.random() < 0.2:  # a header field too
        kind = (header.kind + rnd.randrange(1, 256)) % 256
        header = Header(header.scheme, kind, header.params_id, header.round_id)
    return seal(header, bytes(b))


@dataclass(frozen=True)
class Parser:
    """A parser under test: a corpus of valid inputs and its documented errors."""

    name: str
    corpus: Callable[[], list[bytes]]
    parse: Callable[[bytes], Any]
    allowed: tuple[type[BaseException], ...]
    heap_extra: int = 0  # a configured read limit the parser may use whole


_CACHE: dict[str, Any] = {}


def _cached(key: str, make: Callable[[], Any]) -> Any:
    if key not in _CACHE:
        _CACHE[key] = make()
    return _CACHE[key]


def _layouts() -> list[bytes]:
    return [
        Layout.from_arrays(
            {"w": np.zeros((3, 4)), "b": np.zeros(4, np.float32)}
        ).to_bytes(),
        Layout.from_arrays({"x": np.zeros(())}).to_bytes(),
    ]


def _ckks() -> dict[str, Any]:
    def make() -> dict[str, Any]:
        from privagg.backends.ckks import CkksBackend

        try:
            be = CkksBackend(preset="test-fast")
        except PrivaggError as exc:
            pytest.skip(f"ckks: {exc}")
        layout = Layout.from_arrays({"w": np.zeros(8)})
        material = be.deal(layout, ["a", "b"], max_clients=2)
        secret = be.keygen()
        session = be.session(layout, secret, max_clients=2)
        rid = session.next_round_id()
        client = session.client("a", rid, np.linspace(-1, 1, 8))
        agg = session.aggregator(rid, ["a"])
        req = agg.start()["a"]
        contribution = privagg.from_bytes(client.handle(req))
        return {
            "backend": be,
            "layout": layout,
            "public": material.aggregator,
            "holder": material.holder,
            "secret": secret,
            "body": contribution.body,
            "session": session,
        }

    return dict(_cached("ckks", make))


def _paillier() -> dict[str, Any]:
    def make() -> dict[str, Any]:
        from privagg.backends.paillier import PaillierBackend

        try:
            be = PaillierBackend._insecure_for_tests(key_bits=512, bound=1.0)
        except PrivaggError as exc:
            pytest.skip(f"paillier: {exc}")
        pk, sk = be.keygen()
        return {
            "backend": be,
            "public": pk.to_bytes(),
            "secret": sk.to_bytes(protection=NoProtection()),
        }

    return dict(_cached("paillier", make))


def _secagg() -> dict[str, Any]:
    def make() -> dict[str, Any]:
        from privagg.backends.secagg import SecAggBackend

        be = SecAggBackend(bound=1.0)
        layout = Layout.from_arrays({"w": np.zeros(6)})
        m = be.deal(layout, ["a", "b", "c"], max_clients=3)
        return {"backend": be, "layout": layout, "material": m}

    return dict(_cached("secagg", make))


def _additive() -> dict[str, Any]:
    """Own keys of the additive backend's key holders, the directory and its pin."""

    def make() -> dict[str, Any]:
        from privagg.distribution import (
            directory_fingerprint,
            key_holders,
            make_directory,
            own_key,
        )

        be = privagg.get_backend("additive", n_servers=3)
        keys = {p: own_key(be, r, p) for p, r in key_holders(be).items()}
        directory = make_directory(be, [k.public for k in keys.values()])
        return {
            "backend": be,
            "layout": Layout.from_arrays({"w": np.zeros(6)}),
            "keys": keys,
            "directory": directory,
            "pin": directory_fingerprint(directory),
        }

    return dict(_cached("additive", make))


def _additive_directory(data: bytes) -> Any:
    """A client loading a directory file against its pin."""
    a = _additive()
    return a["backend"].load_role(
        a["layout"], "client", "c0", data, max_clients=3, pinned=a["pin"]
    )


def _additive_own_key(data: bytes) -> Any:
    """A server loading its own key file against the genuine directory."""
    a = _additive()
    return a["backend"].load_role(
        a["layout"],
        "server",
        "server-1",
        a["directory"],
        max_clients=3,
        secret=data,
        pinned=a["pin"],
    )


def _additive_public_key(data: bytes) -> Any:
    """The operator building the directory with one public key file replaced."""
    from privagg.distribution import make_directory

    a = _additive()
    others = [k.public for p, k in a["keys"].items() if p != "server-1"]
    return make_directory(a["backend"], [data, *others])


def _ckks_public(data: bytes) -> Any:
    from privagg.backends.ckks import CkksPublicContext

    return CkksPublicContext.from_bytes(data)


def _ckks_secret(data: bytes) -> Any:
    from privagg.backends.ckks import CkksSecretContext

    return CkksSecretContext.from_bytes(data, protection=NoProtection())


def _ckks_update(data: bytes) -> Any:
    from privagg.backends.ckks import EncryptedUpdate

    return EncryptedUpdate.from_bytes(data, _ckks()["secret"].public)


def _ckks_role(role: str) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        c = _ckks()
        return c["backend"].load_role(
            c["layout"], role, "a" if role == "client" else None, data, max_clients=2
        )

    return parse


def _paillier_public(data: bytes) -> Any:
    from privagg.backends.paillier import PaillierPublicKey

    return PaillierPublicKey.from_bytes(data)


def _paillier_secret(data: bytes) -> Any:
    from privagg.backends.paillier import load_secret_key

    return load_secret_key(data)


def _secagg_role(role: str) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        s = _secagg()
        return s["backend"].load_role(
            s["layout"], role, "a" if role == "client" else None, data, max_clients=3
        )

    return parse


def _unwrap(data: bytes) -> Any:
    return NoProtection().unwrap(data)


_KEYDIR: dict[str, Path] = {}
KEY_FILE_LIMIT = 1 << 20  # read_secret_file(max_bytes=...) in the key-file parser


def _secret_file(data: bytes) -> Any:
    """The key-file path: write the bytes 0600, read them back, load the role."""
    if "d" not in _KEYDIR:  # one folder per process (not one per input)
        _KEYDIR["d"] = Path(tempfile.mkdtemp(prefix="privagg-fuzz-"))
    d = _KEYDIR["d"]
    path = d / "fuzz.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as fh:  # (no fsync: the reader is under test)
        fh.write(data)
    blob = privagg.read_secret_file(path, max_bytes=KEY_FILE_LIMIT)
    return _secagg_role("client")(blob)


PARSERS = [
    Parser("Layout.from_bytes", _layouts, Layout.from_bytes, (DeserializationError,)),
    Parser(
        "NoProtection().unwrap (exported secrets)",
        lambda: [_paillier()["secret"]],
        _unwrap,
        (DeserializationError,),
    ),
    Parser(
        "CkksPublicContext.from_bytes",
        lambda: [_ckks()["public"]],
        _ckks_public,
        (DeserializationError,),
    ),
    Parser(
        "CkksSecretContext.from_bytes",
        lambda: [_ckks()["holder"]],
        _ckks_secret,
        (DeserializationError, MissingKeyError, ParameterMismatchError),
    ),
    Parser(
        "EncryptedUpdate.from_bytes (CKKS)",
        lambda: [_ckks()["body"]],
        _ckks_update,
        (DeserializationError, ParameterMismatchError),
    ),
    Parser(
        "CkksBackend.load_role (aggregator material)",
        lambda: [_ckks()["public"]],
        _ckks_role("aggregator"),
        (DeserializationError, ParameterMismatchError),
    ),
    Parser(
        "CkksBackend.load_role (holder material)",
        lambda: [_ckks()["holder"]],
        _ckks_role("holder"),
        (DeserializationError, MissingKeyError, ParameterMismatchError),
    ),
    Parser(
        "PaillierPublicKey.from_bytes",
        lambda: [_paillier()["public"]],
        _paillier_public,
        (DeserializationError, ParameterMismatchError),
    ),
    Parser(
        "paillier.load_secret_key",
        lambda: [_paillier()["secret"]],
        _paillier_secret,
        (DeserializationError, ConfigurationError),
    ),
    Parser(
        "SecAggBackend.load_role (client material)",
        lambda: [_secagg()["material"].clients["a"]],
        _secagg_role("client"),
        (DeserializationError, ParameterMismatchError, ConfigurationError),
    ),
    Parser(
        "SecAggBackend.load_role (aggregator material)",
        lambda: [_secagg()["material"].aggregator],
        _secagg_role("aggregator"),
        (DeserializationError, ParameterMismatchError, ConfigurationError),
    ),
    Parser(
        "AdditiveBackend.load_role (pinned key directory)",
        lambda: [_additive()["directory"]],
        _additive_directory,
        (DeserializationError, ParameterMismatchError),
    ),
    Parser(
        "AdditiveBackend.load_role (a server's own key file)",
        lambda: [_additive()["keys"]["server-1"].secret],
        _additive_own_key,
        (DeserializationError, ParameterMismatchError),
    ),
    Parser(
        "make_directory (additive public key file)",
        lambda: [_additive()["keys"]["server-1"].public],
        _additive_public_key,
        (DeserializationError, ConfigurationError),
    ),
    Parser(
        "read_secret_file + load_role (key file)",
        lambda: [_secagg()["material"].clients["a"]],
        _secret_file,
        (DeserializationError, ParameterMismatchError, ConfigurationError),
        # read_secret_file reads through one buffer of up to max_bytes + 1 bytes
        heap_extra=KEY_FILE_LIMIT + 1,
    ),
]


def feed(
    parse: Callable[[bytes], Any],
    allowed: tuple[type[BaseException], ...],
    inputs: Iterable[bytes],
    heap_extra: int = 0,
) -> tuple[int, list[str]]:
    """Parse every input; return (inputs run, escapes as text). An escape is any
    exception not in ``allowed``, or a parse whose Python heap peak exceeds
    ``64 x len(input) + HEAP_SLACK + heap_extra`` (a claimed size allocated before it
    was checked; ``heap_extra``: a read limit the parser is configured with).
    """
    escapes: list[str] = []
    n = 0
    tracemalloc.start()
    try:
        for data in inputs:
            tracemalloc.reset_peak()
            base, _ = tracemalloc.get_traced_memory()
            try:
                parse(data)
            except allowed:
                pass
            except Exception as exc:  # an untyped (or undocumented) escape
                escapes.append(f"{type(exc).__name__}: {exc!s:.200} <- {data[:64]!r}")
            n += 1
            _, peak = tracemalloc.get_traced_memory()
            limit = 64 * len(data) + HEAP_SLACK + heap_extra
            if peak - base > limit:
                escapes.append(f"heap {peak - base} > {limit} for {len(data)} bytes")
    finally:
        tracemalloc.stop()
    return n, escapes


def huge_claims(valid: bytes, width: int) -> Iterator[bytes]:
    """``valid`` with each 4- and 8-byte window of the first ``width`` bytes of its
    payload (of the bytes themselves if not an envelope) set to a huge length or
    count (2**62, 2**64 - 1, 2**32 - 1), re-sealed in a valid envelope."""
    try:
        header: Header | None
        header, payload = open_envelope(valid)
        body = bytes(payload)
    except DeserializationError:
        header, body = None, valid
    for pos in range(min(len(body), width)):
        for fmt, big in ((">Q", 1 << 62), (">Q", (1 << 64) - 1), (">I", 2**32 - 1)):
            size = struct.calcsize(fmt)
            if pos + size > len(body):
                continue
            b = bytearray(body)
            b[pos : pos + size] = struct.pack(fmt, big)
            yield bytes(b) if header is None else seal(header, bytes(b))


_SANE: set[str] = set()

_FUZZ = fuzz_settings()


@pytest.mark.parametrize("parser", PARSERS, ids=[p.name for p in PARSERS])
@_FUZZ
@given(seed=st.integers(0, 2**64 - 1), data=st.data())
def test_fuzz_parser(parser: Parser, seed: int, data: st.DataObject) -> None:
    # The first input of each batch comes from hypothesis (structured, shrinkable).
    corpus = parser.corpus()
    if parser.name not in _SANE:  # the valid inputs parse: the fuzzing is not vacuous
        for valid in corpus:
            parser.parse(valid)
        _SANE.add(parser.name)
    base = data.draw(st.sampled_from(corpus), label="seed input")
    first = mutate_bytes(random.Random(data.draw(st.integers(0, 2**32))), base)
    rnd = random.Random(seed)
    inputs = [first] + [mutate_bytes(rnd, rnd.choice(corpus)) for _ in range(BATCH - 1)]
    n, escapes = feed(parser.parse, parser.allowed, inputs, parser.heap_extra)
    count("fuzz", parser.name, inputs=n, escapes=len(escapes))
    assert not escapes, escapes[:3]


@pytest.mark.parametrize("parser", PARSERS, ids=[p.name for p in PARSERS])
def test_fuzz_huge_claims_refused_before_allocation(parser: Parser) -> None:
    """Every 4- and 8-byte window of the first 512 bytes of every valid input
    (re-sealed) set to a huge length or count: refused (or harmlessly parsed) within
    the heap bound."""
    inputs = (x for valid in parser.corpus() for x in huge_claims(valid, 512))
    n, escapes = feed(parser.parse, parser.allowed, inputs, parser.heap_extra)
    count("fuzz", parser.name, inputs=n, huge_claims=n, escapes=len(escapes))
    assert n > 0
    assert not escapes, escapes[:5]
