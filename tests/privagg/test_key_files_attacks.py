"""Security review (issue #11), finding 9: secret files and material objects.

(a) ``read_secret_file`` stat-ed then read (TOCTOU), followed symbolic links and did not
    check the owner; ``write_secret_file`` must never write through a planted link.
(b) ``CkksMaterial`` pickled raw secrets and printed public blobs.
(c) Without ``memfd`` the CKKS secret key passed through an ordinary temporary file.

(``test_secret_file_attacks.py`` and ``test_ckks_material_attacks.py`` hold the first
tests of these fixes; this file adds the attacks around them.)
"""

from __future__ import annotations

import copy
import os
import pickle
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from privagg import keys as keys_module
from privagg.errors import ConfigurationError
from privagg.keys import read_secret_file, write_secret_file
from privagg.layout import Layout

SECRET = bytes(range(7, 71))


class _OsSpy:
    """``os`` as seen by ``privagg.keys``: no path may be stat-ed (every check must run
    on the open descriptor), and ``open`` may be intercepted. Patched into that module
    only, so pytest's own use of ``os`` is untouched."""

    def __init__(self, on_open: Callable[..., int] | None = None) -> None:
        self._on_open = on_open
        self.fstat_fds: list[int] = []

    def fstat(self, fd: int) -> os.stat_result:
        self.fstat_fds.append(fd)
        return os.fstat(fd)

    def __getattr__(self, name: str) -> Any:
        if name in ("stat", "lstat"):
            raise AssertionError(
                f"read_secret_file called os.{name} on a path (TOCTOU)"
            )
        if name == "open" and self._on_open is not None:
            return self._on_open
        return getattr(os, name)


@pytest.fixture
def alarm() -> Iterator[None]:
    """A blocking open fails the test after 5 s instead of hanging the suite."""
    if not hasattr(signal, "SIGALRM") or threading.current_thread() is not (
        threading.main_thread()
    ):
        pytest.skip("needs SIGALRM in the main thread")

    def boom(signum: int, frame: object) -> None:
        raise TimeoutError("read_secret_file blocked")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(5)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# -- (a) reading -----------------------------------------------------------------------------
def test_symlink_to_a_secret_file_is_refused(tmp_path: Path) -> None:
    real = write_secret_file(tmp_path / "real.key", SECRET)
    link = tmp_path / "link.key"
    link.symlink_to(real)
    with pytest.raises(ConfigurationError, match="symbolic link") as exc:
        read_secret_file(link)
    assert SECRET.hex() not in str(exc.value)


def test_dangling_symlink_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "link.key"
    link.symlink_to(tmp_path / "absent.key")
    with pytest.raises(ConfigurationError, match="symbolic link"):
        read_secret_file(link)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o610, 0o601, 0o644])
def test_group_or_other_permission_bits_are_refused(tmp_path: Path, mode: int) -> None:
    p = write_secret_file(tmp_path / "k.key", SECRET)
    os.chmod(p, mode)
    with pytest.raises(ConfigurationError, match="group/others"):
        read_secret_file(p)


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown"
)
@pytest.mark.parametrize("owner", [12345, 65534])
def test_file_owned_by_another_uid_is_refused(tmp_path: Path, owner: int) -> None:
    p = write_secret_file(tmp_path / "k.key", SECRET)
    os.chown(p, owner, os.getegid())
    assert stat.S_IMODE(p.stat().st_mode) == 0o600  # the mode alone would pass
    with pytest.raises(ConfigurationError, match="owned by uid"):
        read_secret_file(p)


def test_checks_run_on_the_descriptor_not_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Swap the path right after the open: what was checked is what is read."""
    p = write_secret_file(tmp_path / "k.key", SECRET)
    evil = tmp_path / "evil"
    evil.write_bytes(b"attacker")
    os.chmod(evil, 0o644)

    opened: list[int] = []

    def open_then_swap(path: Any, flags: int, *args: Any) -> int:
        fd = os.open(path, flags, *args)
        opened.append(fd)
        os.replace(evil, p)  # the race the old stat-then-read lost
        return fd

    spy = _OsSpy(open_then_swap)
    monkeypatch.setattr(keys_module, "os", spy)
    assert read_secret_file(p) == SECRET
    assert opened and spy.fstat_fds == opened  # checked: the descriptor it read
    monkeypatch.undo()
    with pytest.raises(ConfigurationError, match="group/others"):
        read_secret_file(p)  # the swapped-in file, read afresh, is refused


def test_fifo_without_a_writer_is_refused_without_blocking(
    tmp_path: Path, alarm: None
) -> None:
    f = tmp_path / "fifo.key"
    os.mkfifo(f, 0o600)
    with pytest.raises(ConfigurationError, match="regular file"):
        read_secret_file(f)


def test_device_is_refused(alarm: None) -> None:
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    with pytest.raises(ConfigurationError):
        read_secret_file("/dev/zero")


def test_size_bound_is_enforced_on_the_descriptor(tmp_path: Path) -> None:
    p = write_secret_file(tmp_path / "k.key", SECRET)
    assert read_secret_file(p, max_bytes=len(SECRET)) == SECRET
    with pytest.raises(ConfigurationError, match="max_bytes"):
        read_secret_file(p, max_bytes=len(SECRET) - 1)


# -- (a) writing -----------------------------------------------------------------------------
def test_write_replaces_a_planted_symlink_and_never_writes_its_target(
    tmp_path: Path,
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"do not touch")
    target = tmp_path / "k.key"
    target.symlink_to(victim)
    write_secret_file(target, SECRET)
    assert victim.read_bytes() == b"do not touch"
    assert not target.is_symlink()
    assert stat.S_IMODE(target.lstat().st_mode) == 0o600
    assert read_secret_file(target) == SECRET


def test_write_is_0600_whatever_the_umask_and_leaves_no_temp_file(
    tmp_path: Path,
) -> None:
    old = os.umask(0)
    try:
        p = write_secret_file(tmp_path / "new" / "k.key", SECRET)
        write_secret_file(p, SECRET[::-1])  # replace an existing key
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert stat.S_IMODE(p.parent.stat().st_mode) == 0o700  # created by the write
    assert sorted(x.name for x in p.parent.iterdir()) == ["k.key"]
    assert read_secret_file(p) == SECRET[::-1]


def test_write_fsyncs_the_file_and_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[bool] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    write_secret_file(tmp_path / "k.key", SECRET)
    assert synced == [False, True]


def test_failed_write_leaves_the_old_key_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = write_secret_file(tmp_path / "k.key", SECRET)

    def crash(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        write_secret_file(p, b"new key")
    monkeypatch.undo()
    assert read_secret_file(p) == SECRET
    assert [x.name for x in tmp_path.iterdir()] == ["k.key"]


# -- (b) CKKS dealt material -------------------------------------------------------------------
ckks = pytest.importorskip("privagg.backends.ckks")
sealio = pytest.importorskip("privagg.backends.ckks._sealio")


@pytest.fixture(scope="module")
def material() -> object:
    layout = Layout.from_arrays({"w": np.zeros(8)})
    return ckks.CkksBackend(preset="test-fast", threads=1).deal(
        layout, ["a", "b"], max_clients=2
    )


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickling_ckks_material_is_refused(material: object, protocol: int) -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(material, protocol=protocol)


def test_copying_ckks_material_is_refused(material: object) -> None:
    for fn in (copy.copy, copy.deepcopy):
        with pytest.raises(TypeError):
            fn(material)


def test_ckks_material_repr_shows_no_secret(material: object) -> None:
    holder: bytes = material.holder  # type: ignore[attr-defined]
    text = repr(material) + str(material) + f"{material}"
    assert "material hidden" in text and "holder=" not in text
    # no window of the holder's blob (which holds the secret key), in any encoding
    for i in range(0, len(holder) - 16, max(1, len(holder) // 64)):
        chunk = holder[i : i + 16]
        assert chunk.hex() not in text and repr(chunk)[2:-1] not in text
    # the public key's fingerprint only (the CkksPublicContext's), not its bytes
    pub = ckks.CkksPublicContext.from_bytes(material.aggregator)  # type: ignore[attr-defined]
    assert pub.fingerprint[:4].hex() in text
    assert len(repr(material)) < 120


def test_ckks_secret_objects_refuse_pickling(material: object) -> None:
    from privagg.keys import NoProtection

    sc = ckks.CkksSecretContext.from_bytes(
        material.holder,  # type: ignore[attr-defined]
        protection=NoProtection(),
    )
    for obj in (sc, sc.secret_key, sc.secret_key.unsafe_material()):
        with pytest.raises(TypeError):
            pickle.dumps(obj)
        with pytest.raises(TypeError):
            copy.deepcopy(obj)


# -- (c) the non-memfd CKKS path -----------------------------------------------------------------
def test_memfd_failure_falls_back_to_a_private_scratch_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """memfd_create refused (a seccomp filter, say): a 0600 file in a 0700 directory."""

    def refused(*args: object) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "memfd_create", refused, raising=False)
    with sealio._scratch_path() as path:
        p = Path(path)
        assert not path.startswith("/proc/self/fd/")
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
        assert stat.S_IMODE(p.parent.stat().st_mode) == 0o700
        assert p.stat().st_uid == os.geteuid()
        p.write_bytes(b"k" * 64)
        scratch_dir = p.parent
    assert not scratch_dir.exists()  # file and directory removed


def test_scratch_directory_is_removed_even_if_the_body_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(os, "memfd_create", raising=False)
    seen: list[Path] = []
    with pytest.raises(RuntimeError):
        with sealio._scratch_path() as path:
            seen.append(Path(path))
            Path(path).write_bytes(b"secret" * 10)
            raise RuntimeError("SEAL failed")
    assert not seen[0].exists() and not seen[0].parent.exists()


def test_secret_key_export_and_import_without_memfd(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The whole holder path (keygen, export, save, load, release) with the fallback."""
    from privagg.hazmat.ckks import raw_decrypt
    from privagg.keys import NoProtection

    monkeypatch.delattr(os, "memfd_create", raising=False)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    keys = ckks.keygen("test-fast")
    path = keys.save(tmp_path / "holder.key", protection=NoProtection())
    again = ckks.CkksSecretContext.load(path, protection=NoProtection())
    assert again.public.fingerprint == keys.public.fingerprint
    v = np.linspace(-0.5, 0.5, 16)
    out = raw_decrypt(again, keys.public.encrypt(v))
    assert np.max(np.abs(out - v)) < 1e-3
    assert list(scratch.iterdir()) == []  # no scratch directory left behind
