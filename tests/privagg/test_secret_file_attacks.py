"""Security review (issue #11), finding 9: key files were stat-ed then read (TOCTOU),
symbolic links were followed and the owner was not checked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from privagg.errors import ConfigurationError
from privagg.keys import read_secret_file, write_secret_file

SECRET = b"\x13\x37" * 16


def test_round_trip_is_0600(tmp_path: Path) -> None:
    p = write_secret_file(tmp_path / "k.key", SECRET)
    assert p.stat().st_mode & 0o777 == 0o600
    assert read_secret_file(p) == SECRET


def test_symlink_to_a_key_file_is_refused(tmp_path: Path) -> None:
    real = write_secret_file(tmp_path / "real.key", SECRET)
    link = tmp_path / "link.key"
    link.symlink_to(real)
    with pytest.raises(ConfigurationError, match="symbolic link"):
        read_secret_file(link)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o660])
def test_group_or_other_access_is_refused(tmp_path: Path, mode: int) -> None:
    p = write_secret_file(tmp_path / "k.key", SECRET)
    os.chmod(p, mode)
    with pytest.raises(ConfigurationError, match="group/others"):
        read_secret_file(p)


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown"
)
def test_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    p = write_secret_file(tmp_path / "k.key", SECRET)
    os.chown(p, 12345, 12345)
    with pytest.raises(ConfigurationError, match="owned by uid"):
        read_secret_file(p)


def test_directory_and_fifo_are_refused(tmp_path: Path) -> None:
    d = tmp_path / "dir.key"
    d.mkdir(mode=0o700)
    with pytest.raises(ConfigurationError):
        read_secret_file(d)
    f = tmp_path / "fifo.key"
    os.mkfifo(f, 0o600)
    # O_RDONLY on a FIFO without a writer would block: open is refused earlier only if
    # non-blocking; a FIFO must not be read as a key, so the check happens on fstat.
    fd = os.open(f, os.O_RDWR)  # keep a writer so the reader's open does not block
    try:
        with pytest.raises(ConfigurationError, match="regular file"):
            read_secret_file(f)
    finally:
        os.close(fd)


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    p = write_secret_file(tmp_path / "k.key", SECRET * 100)
    with pytest.raises(ConfigurationError, match="max_bytes"):
        read_secret_file(p, max_bytes=64)


def test_missing_file_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        read_secret_file(tmp_path / "absent.key")
