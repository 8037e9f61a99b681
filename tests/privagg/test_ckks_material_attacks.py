"""Security review (issue #11), finding 9 (CKKS): dealt material pickled raw secrets, and
the non-Linux path wrote the secret key to a temporary file."""

from __future__ import annotations

import copy
import os
import pickle
import stat
from pathlib import Path

import numpy as np
import pytest

from privagg.layout import Layout

ckks = pytest.importorskip("privagg.backends.ckks")
sealio = pytest.importorskip("privagg.backends.ckks._sealio")


def test_dealt_material_refuses_pickling_and_copying() -> None:
    layout = Layout.from_arrays({"w": np.zeros(8)})
    m = ckks.CkksBackend(threads=1).deal(layout, ["a", "b"], max_clients=2)
    for fn in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(TypeError):
            fn(m)
    assert m.holder.hex()[:64] not in repr(m)


def test_fallback_scratch_file_is_private_and_wiped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Force the non-Linux path: a 0600 file in a 0700 directory, zeroed and removed."""
    monkeypatch.delattr(os, "memfd_create", raising=False)
    seen: dict[str, object] = {}
    with sealio._scratch_path() as path:
        p = Path(path)
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
        assert stat.S_IMODE(p.parent.stat().st_mode) == 0o700
        p.write_bytes(b"secret key bytes" * 8)
        seen["path"] = p
        real_wipe = sealio._wipe

        def spy(q: str) -> None:
            real_wipe(q)
            seen["after_wipe"] = Path(q).read_bytes()

        monkeypatch.setattr(sealio, "_wipe", spy)
    assert seen["after_wipe"] == bytes(128)
    assert not Path(str(seen["path"])).exists()


def test_secret_context_round_trips_through_the_fallback_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(os, "memfd_create", raising=False)
    keys = ckks.keygen("compact")
    from privagg.keys import NoProtection

    blob = keys.to_bytes(protection=NoProtection())
    again = ckks.CkksSecretContext.from_bytes(blob, protection=NoProtection())
    assert again.public.to_bytes() == keys.public.to_bytes()
