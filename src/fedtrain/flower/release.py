"""The result holder's release register: one release per round, across processes.

privagg's holder objects refuse to recover a round twice, but only in memory, and
Flower starts a fresh ClientApp process for every Message. The register makes the rule
hold on the holder's machine: a file beside the holder's key (by default
``<holder key file>.released``) lists every ``(params_id, round id)`` the holder has
released. :meth:`ReleaseRegister.release` runs the recovery only for a pair that is not
listed, and returns its result only after the pair is durably recorded.

* **Atomic and durable.** The file is rewritten whole: a temporary file in the same
  folder, mode 0600, fsynced, ``os.replace``-d over the old one, then the folder is
  fsynced (``privagg.write_secret_file`` plus the folder sync), so a crash leaves the
  old or the new register, never a torn one.
* **Exclusive.** An advisory ``flock`` on ``<register>.lock`` serialises the
  check-recover-record sequence between processes on the machine (two RECOVER messages
  delivered at once cannot both pass the check).
* **Fail closed.** A register that cannot be read or parsed, or that group/others can
  read or write (it must be 0600 like the key), raises
  :class:`~fedtrain.flower.errors.ReleaseRegisterError` and nothing is released.
* **Record after success, before release.** A recovery that fails (a malformed or
  mismatched aggregate) records nothing, so garbage cannot burn a round id; a crash
  after recording and before the reply loses that release (the safe direction).

Format: JSON ``{"format": "fedtrain-release-register/v1", "released": {params_id hex:
[round ids, ascending]}}``. Everything in it is public (parameter fingerprints and round
ids). No pickle.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn, TypeVar

import privagg
from fedtrain.flower.errors import AlreadyReleasedError, ReleaseRegisterError

__all__ = ["ReleaseRegister", "register_path_for"]

_FORMAT = "fedtrain-release-register/v1"
_SUFFIX = ".released"
_T = TypeVar("_T")


def register_path_for(key_file: str | os.PathLike[str]) -> Path:
    """The default register path of a holder key file: ``<key_file>.released``."""
    p = Path(key_file)
    return p.with_name(p.name + _SUFFIX)


class ReleaseRegister:
    """The ``(params_id, round id)`` pairs a result holder has released, on disk.

    Args:
        path: the register file (created on the first release; its folder must exist).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)

    @property
    def path(self) -> Path:
        """The register file."""
        return self._path

    def is_released(self, params_id: bytes, round_id: int) -> bool:
        """True if ``(params_id, round_id)`` was released (reads the file, locked)."""
        with self._locked():
            return round_id in self._load().get(params_id.hex(), set())

    def release(self, params_id: bytes, round_id: int, recover: Callable[[], _T]) -> _T:
        """Run ``recover`` for a pair never released before, and record the release.

        Args:
            params_id: the aggregate's parameter fingerprint.
            round_id: the aggregate's round id.
            recover: the recovery (decryption); called at most once, under the lock.

        Returns:
            What ``recover`` returned, once the pair is durably recorded.

        Raises:
            AlreadyReleasedError: the pair was released before (by any process).
            ReleaseRegisterError: the register is unreadable or malformed.
            Exception: whatever ``recover`` raises (nothing is recorded then).
        """
        if not isinstance(round_id, int) or isinstance(round_id, bool) or round_id < 0:
            raise privagg.ProtocolError(f"bad round id {round_id!r}")
        key = params_id.hex()
        with self._locked():
            released = self._load()
            if round_id in released.get(key, set()):
                raise AlreadyReleasedError(
                    f"round {round_id} was already released by this result holder "
                    "(one release per round)"
                )
            out = recover()
            released.setdefault(key, set()).add(round_id)
            self._store(released)
            return out

    # -- file handling -----------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock = self._path.with_name(self._path.name + ".lock")
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise ReleaseRegisterError(
                f"cannot open the release register lock {str(lock)!r}"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor drops the lock

    def _load(self) -> dict[str, set[int]]:
        if not self._path.exists():
            return {}
        try:
            data = json.loads(privagg.read_secret_file(self._path).decode("utf-8"))
        except privagg.ConfigurationError as exc:  # group/other bits set: not 0600
            raise ReleaseRegisterError(str(exc)) from exc
        except (OSError, ValueError, RecursionError) as exc:
            raise ReleaseRegisterError(
                f"the release register {str(self._path)!r} is unreadable"
            ) from exc
        if not isinstance(data, dict):
            data = {}
        released = data.get("released")
        if data.get("format") != _FORMAT or not isinstance(released, dict):
            raise ReleaseRegisterError(
                f"the release register {str(self._path)!r} is malformed"
            )
        out: dict[str, set[int]] = {}
        for key, rounds in released.items():
            ok = (
                isinstance(key, str)
                and len(key) == 64
                and all(c in "0123456789abcdef" for c in key)
                and isinstance(rounds, list)
                and all(
                    isinstance(r, int) and not isinstance(r, bool) and r >= 0
                    for r in rounds
                )
            )
            if not ok:
                raise ReleaseRegisterError(
                    f"the release register {str(self._path)!r} is malformed"
                )
            out[key] = set(rounds)
        return out

    def _store(self, released: dict[str, set[int]]) -> None:
        text = json.dumps(
            {
                "format": _FORMAT,
                "released": {k: sorted(v) for k, v in sorted(released.items())},
            },
            sort_keys=True,
        )
        privagg.write_secret_file(self._path, text.encode("utf-8"))
        folder = os.open(self._path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)  # make the rename itself durable
        finally:
            os.close(folder)

    def __repr__(self) -> str:
        return f"ReleaseRegister({str(self._path)!r})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("a release register is bound to its machine: not picklable")
