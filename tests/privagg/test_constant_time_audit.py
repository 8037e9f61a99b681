"""Constant-time comparison of MACs, digests, tags and fingerprints (issue #13 audit).

A static scan of ``src/``: every ``==`` / ``!=`` whose operand names a digest, a
fingerprint, a MAC, a tag, a signature or a ``params_id`` is a finding, unless it
compares a length or a constant. The findings that remain are listed in ``ACCEPTED``
by their source text (not by file and line: modules may move) with why each is not a
secret-dependent comparison; a new one fails this test, so it is either written with
``hmac.compare_digest`` or argued here.
"""

from __future__ import annotations

import ast
import hmac
import re
from collections import Counter
from pathlib import Path

import pytest

from privagg import envelope
from privagg.envelope import Header, Scheme, open_envelope, seal
from privagg.errors import DeserializationError

SRC = Path(__file__).resolve().parents[2] / "src"
_NAMES = re.compile(
    r"digest|fingerprint|(^|[^a-z])mac([^a-z]|$)|(^|_)tag($|_)|signature|params_id|_fp\b"
    r"|(^|[^a-z])fp($|[^a-z])",
    re.IGNORECASE,
)

#: source text of a comparison -> (how many there may be, why it is acceptable)
ACCEPTED: dict[str, tuple[int, str]] = {
    "ctx.fingerprint != header.params_id": (
        1,
        "ckks: public-context fingerprint vs the envelope's public params_id",
    ),
    "update.key_fingerprint != self.public.fingerprint": (
        1,
        "ckks: public-key fingerprints carried in a ciphertext header",
    ),
    "update.key_fingerprint != secret.public.fingerprint": (
        1,
        "ckks (hazmat raw_decrypt): public-key fingerprints of a ciphertext and a key",
    ),
    "fp != public.fingerprint": (1, "ckks: public fingerprint of a loaded secret"),
    "other.key_fingerprint != self.key_fingerprint": (
        1,
        "ckks: two ciphertexts' public-key fingerprints",
    ),
    "secret_key.public_fingerprint != public_key.fingerprint": (
        1,
        "paillier: public fingerprints of a key pair",
    ),
    "sec['public_fingerprint'] != pub.get('public_fingerprint', pub['params_id'])": (
        1,
        "cli inspect: public fingerprints printed to the operator",
    ),
    "sec['public_fingerprint'] != pub['public_fingerprint']": (
        1,
        "cli inspect: public fingerprints printed to the operator",
    ),
    "fp == claimed": (1, "cli inspect: a public identity-key fingerprint"),
    "state['session'] != session_digest": (
        1,
        "flower client: digest of the public session spec and layout, in local state",
    ),
    "_digest(replayed) != state[f'dig.{i}']": (
        1,
        "flower client: digest of the client's own earlier reply, in local state",
    ),
    "hit[0] == digest": (1, "fedtrain models: a feature-cache key (no secret)"),
    "r.text() != _SK_TAG": (1, "paillier: a constant format tag, not a MAC"),
    "r.text() != _PK_TAG": (1, "paillier: a constant format tag, not a MAC"),
    "PayloadReader(data).text() != _PAILLIER_PK_TAG": (
        1,
        "cli inspect: a constant format tag, not a MAC",
    ),
    "stage == SecAggKind.SIGNATURE": (1, "secagg: a protocol stage number"),
}


def _is_trivial(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) or (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("len", "type", "isinstance")
    )


def _findings() -> Counter[str]:
    found: Counter[str] = Counter()
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Compare):
                continue
            if not any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
                continue
            operands = [node.left, *node.comparators]
            if any(_is_trivial(o) for o in operands):
                continue
            if any(_NAMES.search(ast.unparse(o)) for o in operands):
                found[ast.unparse(node).replace('"', "'")] += 1
    return found


def test_constant_time_audit_no_new_findings() -> None:
    found = _findings()
    new = {k: n for k, n in found.items() if n > ACCEPTED.get(k, (0, ""))[0]}
    assert not new, f"compare these with hmac.compare_digest or argue them: {new}"


def test_constant_time_audit_owned_modules_clean() -> None:
    """keys.py, envelope.py and messages.py have no such comparison at all."""
    found = _findings()
    for name in ("keys.py", "envelope.py", "messages.py"):
        text = (SRC / "privagg" / name).read_text(encoding="utf-8")
        assert not [k for k in found if k in text], name


def test_envelope_digest_checked_with_compare_digest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(envelope.hmac, "compare_digest", spy)
    msg = seal(Header(Scheme.CORE, 9, bytes(32), 1), b"payload")
    open_envelope(msg)
    assert len(calls) == 1 and len(calls[0][0]) == 16
    bad = msg[:-1] + bytes([msg[-1] ^ 1])
    with pytest.raises(DeserializationError):
        open_envelope(bad)
    assert len(calls) == 2
