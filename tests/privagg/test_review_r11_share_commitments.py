"""Review r11 (outside reviewer): SecAgg+ v5 committed shares (commit 05f42f3).

Parser attacks on the v5 share records and reveals: every malformed record or
reveal is a typed DeserializationError."""

from __future__ import annotations

import pytest

from privagg.backends.secagg import messages as sm
from privagg.errors import DeserializationError

PID = b"\x01" * 32


def _record() -> bytes:
    return sm.seal_shares(b"\x02" * 32, b"\x03" * 32, b"\x04" * (sm.SEALED_SIZE - 64))


@pytest.mark.parametrize("delta", [-1, 1, -(sm.SEALED_SIZE), 16])
def test_r11_open_sealed_refuses_wrong_sizes(delta: int) -> None:
    rec = _record()
    bad = rec[:delta] if delta < 0 else rec + b"\x00" * delta
    with pytest.raises(DeserializationError):
        sm.open_sealed(bad)
    assert sm.open_sealed(rec) == (b"\x02" * 32, b"\x03" * 32, rec[64:])


@pytest.mark.parametrize("cls", [sm.SharesMessage, sm.MaskRequest])
@pytest.mark.parametrize("delta", [-1, 1])
def test_r11_share_record_of_wrong_size_is_typed(cls: type, delta: int) -> None:
    rec = _record()
    bad = rec[:delta] if delta < 0 else rec + b"\x00"
    data = cls(PID, 1, "c1", (("c2", bad),)).to_bytes()
    with pytest.raises(DeserializationError):
        cls.from_bytes(data)
    ok = cls(PID, 1, "c1", (("c2", rec),)).to_bytes()
    assert cls.from_bytes(ok).ciphertexts == (("c2", rec),)


@pytest.mark.parametrize("delta", [-1, 1, -32])
def test_r11_reveal_of_wrong_size_is_typed(delta: int) -> None:
    rev = b"\x05" * sm.REVEAL_SIZE
    bad = rev[:delta] if delta < 0 else rev + b"\x00"
    data = sm.UnmaskShares(PID, 1, "c1", (("c2", sm._S, bad),)).to_bytes()
    with pytest.raises(DeserializationError):
        sm.UnmaskShares.from_bytes(data)
