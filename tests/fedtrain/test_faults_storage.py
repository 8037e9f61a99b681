"""Disk full and crashes while a checkpoint, a privacy ledger, a key file or the release
register is written.

A failing writer is injected at every I/O step of each writer, at each of its calls:

* ``mkstemp``: the temporary file cannot be created (``ENOSPC``);
* ``write``: the write stores half of the bytes, then fails with ``ENOSPC``;
* ``fsync``: the flush to disk fails (``ENOSPC``; also the folder sync after the
  rename);
* ``replace``: the rename over the old file fails (``ENOSPC``).

Each runs in two modes: **disk full** (the ``OSError`` is raised in this process and
must propagate, with the writer's own state unchanged) and **crash** (a forked child
dies with ``os._exit`` at that very point, with no clean-up: the parent then inspects
what is on disk). Afterwards the old file or the new one must be there, whole and
readable, never a torn or missing one; the in-memory ledger must not count a release
that is not on disk; the release register must never hand out a result it did not
record; and a retry must succeed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.hardening_counts import count

import privagg
from fedtrain.checkpoint import load_checkpoint, save_checkpoint
from fedtrain.flower.errors import AlreadyReleasedError
from fedtrain.flower.release import ReleaseRegister
from privagg.dp import GaussianEvent, PrivacyLedger

pytestmark = pytest.mark.slow

POINTS = ("mkstemp", "write", "fsync", "replace")
MODES = ("disk_full", "crash")
CRASH_CODE = 86


class _Trigger:
    """Fails the ``nth`` call of one I/O step (counting from 1)."""

    def __init__(self, point: str, nth: int, mode: str) -> None:
        self.point, self.nth, self.mode = point, nth, mode
        self.calls = 0
        self.fired = False

    def __call__(self) -> None:
        self.calls += 1
        if self.calls == self.nth:
            self.fired = True
            if self.mode == "crash":
                os._exit(CRASH_CODE)  # the process dies here: no clean-up runs
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _HalfWriter:
    """A file object whose ``write`` stores half of the bytes, then fails."""

    def __init__(self, fh: Any, trigger: _Trigger) -> None:
        self._fh, self._trigger = fh, trigger

    def write(self, data: Any) -> int:
        if self._trigger.calls + 1 == self._trigger.nth:
            self._fh.write(data[: len(data) // 2])
            self._fh.flush()
        self._trigger()  # counts the call; fails the nth one
        return int(self._fh.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)

    def __enter__(self) -> _HalfWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()


@contextlib.contextmanager
def failing_io(
    monkeypatch: pytest.MonkeyPatch, trigger: _Trigger
) -> Iterator[_Trigger]:
    """Patch ``trigger.point`` (process-wide: every writer uses the ``os`` module)."""
    with monkeypatch.context() as m:
        if trigger.point == "mkstemp":
            real_mkstemp = tempfile.mkstemp

            def mkstemp(*a: Any, **k: Any) -> Any:
                trigger()
                return real_mkstemp(*a, **k)

            m.setattr(tempfile, "mkstemp", mkstemp)
        elif trigger.point == "write":
            real_fdopen = os.fdopen

            def fdopen(*a: Any, **k: Any) -> Any:
                return _HalfWriter(real_fdopen(*a, **k), trigger)

            m.setattr(os, "fdopen", fdopen)
        elif trigger.point == "fsync":
            real_fsync = os.fsync

            def fsync(fd: int) -> None:
                trigger()
                real_fsync(fd)

            m.setattr(os, "fsync", fsync)
        elif trigger.point == "replace":
            real_replace = os.replace

            def replace(*a: Any, **k: Any) -> None:
                trigger()
                real_replace(*a, **k)

            m.setattr(os, "replace", replace)
        yield trigger


def _inject(
    monkeypatch: pytest.MonkeyPatch,
    point: str,
    nth: int,
    mode: str,
    write: Callable[[], Any],
) -> tuple[bool, BaseException | None]:
    """Run ``write`` with the fault; return (fired, the exception it raised)."""
    if mode == "disk_full":
        with failing_io(monkeypatch, _Trigger(point, nth, mode)) as trig:
            try:
                write()
            except OSError as exc:
                assert trig.fired and exc.errno == errno.ENOSPC, exc
                return True, exc
        return trig.fired, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            with failing_io(monkeypatch, _Trigger(point, nth, mode)):
                write()
        except BaseException:
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, CRASH_CODE), f"the writer failed otherwise in the child: {code}"
    return code == CRASH_CODE, None


def _matrix() -> list[tuple[str, int, str]]:
    return [(p, n, m) for p in POINTS for n in (1, 2, 3) for m in MODES]


def _record(row: str, fired: bool, aborted: bool) -> None:
    """Count one injected fault that passed its checks (a clean abort, or a write
    that still completed, when the failing step was a best-effort folder sync)."""
    if fired:
        count(
            "faults", row, injected=1, ok=1, **{"aborted" if aborted else "correct": 1}
        )


# -- checkpoint ------------------------------------------------------------------------
def _arrays(r: int) -> dict[str, np.ndarray]:
    return {
        "global.x": np.full((3, 4), float(r), np.float32),
        "opt.m": np.arange(r + 1.0),
    }


@pytest.mark.parametrize(("point", "nth", "mode"), _matrix())
def test_fault_checkpoint_write(
    point: str, nth: int, mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_checkpoint(tmp_path, round_=1, arrays=_arrays(1), meta={"history": [1]})
    fired, _ = _inject(
        monkeypatch,
        point,
        nth,
        mode,
        lambda: save_checkpoint(
            tmp_path, round_=2, arrays=_arrays(2), meta={"history": [1, 2]}
        ),
    )
    loaded = load_checkpoint(tmp_path)
    assert loaded is not None, "the checkpoint was lost"
    meta, arrays = loaded
    r = meta["round"]
    assert r in (1, 2) and meta["history"] == list(range(1, r + 1))
    for k, v in _arrays(r).items():  # whole and consistent with its meta
        np.testing.assert_array_equal(arrays[k], v)
    # meta.json is renamed last: a fault at any earlier step (the first three calls
    # of each step all come before it) leaves round 1; no fault, round 2
    assert r == (1 if fired else 2)
    save_checkpoint(tmp_path, round_=2, arrays=_arrays(2), meta={"history": [1, 2]})
    meta, _ = load_checkpoint(tmp_path)  # type: ignore[misc]
    assert meta["round"] == 2
    _record(f"fedtrain checkpoint / {mode.replace('_', ' ')}", fired, True)


# -- privacy ledger ----------------------------------------------------------------------
def _ledger(path: Path) -> PrivacyLedger:
    return PrivacyLedger(path, target_epsilon=100.0, delta=1e-5)


@pytest.mark.parametrize(("point", "nth", "mode"), _matrix())
def test_fault_privacy_ledger_write(
    point: str, nth: int, mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ledger.json"
    led = _ledger(path)
    led.spend(1, GaussianEvent(2.0))
    eps1 = led.epsilon
    fired, exc = _inject(
        monkeypatch, point, nth, mode, lambda: led.spend(2, GaussianEvent(2.0))
    )
    if exc is not None:
        # the release was not recorded: the object must not count it either
        assert [r["round"] for r in led.records] == [1]
        assert led.epsilon == eps1
    on_disk = _ledger(path)  # reloads and replays: a torn file would raise
    rounds = [r["round"] for r in on_disk.records]
    assert rounds in ([1], [1, 2]), rounds
    if mode == "disk_full" and exc is None:
        assert rounds == [1, 2]
    if rounds == [1]:
        assert on_disk.epsilon == pytest.approx(eps1)
        on_disk.spend(2, GaussianEvent(2.0))  # the retry succeeds
    assert [r["round"] for r in _ledger(path).records] == [1, 2]
    _record(
        f"privacy ledger / {mode.replace('_', ' ')}",
        fired,
        exc is not None or mode == "crash",
    )


# -- key file ------------------------------------------------------------------------------
@pytest.mark.parametrize(("point", "nth", "mode"), _matrix())
def test_fault_key_file_write(
    point: str, nth: int, mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "holder.key"
    old, new = b"old-key-" * 64, b"new-key-" * 64
    privagg.write_secret_file(path, old)
    fired, exc = _inject(
        monkeypatch, point, nth, mode, lambda: privagg.write_secret_file(path, new)
    )
    got = privagg.read_secret_file(path)  # also checks the mode is still 0600
    assert got in (old, new), "a torn key file"
    if exc is not None:
        assert got == old
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    if mode == "disk_full":
        assert not leftovers
    for p in leftovers:  # a crash may leave a temporary file: owner-only, like the key
        assert p.stat().st_mode & 0o077 == 0
    privagg.write_secret_file(path, new)
    assert privagg.read_secret_file(path) == new
    _record(
        f"key file / {mode.replace('_', ' ')}",
        fired,
        exc is not None or mode == "crash",
    )


# -- release register ------------------------------------------------------------------
@pytest.mark.parametrize(("point", "nth", "mode"), _matrix())
def test_fault_release_register_write(
    point: str, nth: int, mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = ReleaseRegister(tmp_path / "holder.key.released")
    pid = bytes(range(32))
    assert reg.release(pid, 1, lambda: "sum-1") == "sum-1"
    handed: list[str] = []

    def release() -> None:
        handed.append(reg.release(pid, 2, lambda: "sum-2"))

    fired, exc = _inject(monkeypatch, point, nth, mode, release)
    if exc is not None:
        assert handed == [], "a result was handed out although it was not recorded"
    assert reg.is_released(pid, 1)
    if reg.is_released(pid, 2):
        with pytest.raises(AlreadyReleasedError):  # at most once, also after a crash
            reg.release(pid, 2, lambda: "again")
    else:
        assert reg.release(pid, 2, lambda: "sum-2") == "sum-2"
    _record(
        f"release register / {mode.replace('_', ' ')}",
        fired,
        exc is not None or mode == "crash",
    )


def test_fault_matrix_storage_covers_every_step() -> None:
    """Every step of every writer is reached by some call number (not vacuous)."""
    seen: dict[str, int] = {}
    with pytest.MonkeyPatch.context() as mp, tempfile.TemporaryDirectory() as top:
        for point in POINTS:
            d = Path(top) / point
            trig = _Trigger(point, 10**9, "disk_full")
            with failing_io(mp, trig):
                save_checkpoint(d, round_=1, arrays=_arrays(1), meta={})
                _ledger(Path(d) / "l.json").spend(1, GaussianEvent(2.0))
                privagg.write_secret_file(Path(d) / "k.key", b"k" * 32)
            seen[point] = trig.calls
    assert all(n >= 3 for n in seen.values()), seen
