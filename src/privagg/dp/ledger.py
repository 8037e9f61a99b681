"""A persistent privacy ledger for training runs.

:class:`PrivacyLedger` records every release (round, event, count, metadata) in a JSON
file and keeps an accountant in sync with it. Before a round touches any data, call
:meth:`PrivacyLedger.check` (or :meth:`PrivacyLedger.spend` directly): if composing
the round's event would push epsilon above the budget, :class:`BudgetExceededError` is
raised *before* anything is recorded, so the caller can stop without releasing.

Persistence is atomic: the whole ledger is written to a temporary file in the same
directory, flushed and ``fsync``-ed, then moved over the old file with
``os.replace`` (and the directory is ``fsync``-ed), so a crash leaves either the old or
the new ledger, never a torn one. Reloading replays the recorded events and
reproduces the same epsilon. A file with a different ``format_version``, accountant,
accountant configuration or budget is refused. No pickle anywhere.

The ledger assumes a single writer; run one training driver per ledger file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from privagg.dp.accountants import Accountant, make_accountant
from privagg.dp.events import Event, event_from_dict
from privagg.errors import (
    BudgetExceededError,
    ConfigurationError,
    DeserializationError,
    UnsupportedEventError,
)

__all__ = ["LEDGER_FORMAT_VERSION", "PrivacyLedger"]

LEDGER_FORMAT_VERSION = 1


def _atomic_write(path: Path, text: str) -> None:
    directory = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dir_fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(dir_fd)


class PrivacyLedger:
    """Budget-enforcing, persistent record of DP releases.

    Args:
        path: the JSON file (created on first :meth:`spend` if absent).
        target_epsilon: the epsilon budget, ``> 0``.
        delta: the delta at which epsilon is measured, in ``(0, 1)``.
        accountant: accountant name, ``"rdp"`` (default, supports every event) or
            ``"pld"``.
        accountant_kwargs: extra constructor arguments for the accountant.

    Raises:
        ConfigurationError: bad budget or accountant.
        DeserializationError: the existing file is malformed or was written with a
            different format version, accountant, configuration or budget.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        target_epsilon: float,
        delta: float,
        accountant: str = "rdp",
        accountant_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if (
            isinstance(target_epsilon, bool)
            or not isinstance(target_epsilon, (int, float))
            or not math.isfinite(target_epsilon)
            or target_epsilon <= 0
        ):
            raise ConfigurationError(
                f"target_epsilon must be finite and > 0, got {target_epsilon!r}"
            )
        if (
            isinstance(delta, bool)
            or not isinstance(delta, (int, float))
            or not 0 < delta < 1
        ):
            raise ConfigurationError(f"delta must be in (0, 1), got {delta!r}")
        self._path = Path(path)
        self._target = float(target_epsilon)
        self._delta = float(delta)
        self._name = accountant
        self._kwargs = dict(accountant_kwargs or {})
        self._acct: Accountant = make_accountant(accountant, **self._kwargs)
        self._records: list[dict[str, Any]] = []
        if self._path.exists():
            self._load()

    # -- properties --------------------------------------------------------------
    @property
    def path(self) -> Path:
        """The ledger file."""
        return self._path

    @property
    def target_epsilon(self) -> float:
        """The epsilon budget."""
        return self._target

    @property
    def delta(self) -> float:
        """The delta at which epsilon is measured."""
        return self._delta

    @property
    def epsilon(self) -> float:
        """Epsilon spent so far."""
        return self._acct.epsilon(self._delta)

    @property
    def remaining(self) -> float:
        """Budget left (``target_epsilon - epsilon``, at least 0)."""
        return max(0.0, self._target - self.epsilon)

    @property
    def records(self) -> tuple[dict[str, Any], ...]:
        """Copies of the recorded releases, oldest first."""
        return tuple(json.loads(json.dumps(r)) for r in self._records)

    @property
    def last_round(self) -> int | None:
        """The most recent recorded round, or None."""
        return self._records[-1]["round"] if self._records else None

    # -- core --------------------------------------------------------------------
    def check(self, event: Event, count: int = 1) -> float:
        """Epsilon after hypothetically composing ``event``; nothing is recorded.

        Args:
            event: the round's event.
            count: repetitions.

        Returns:
            The epsilon the ledger would reach.

        Raises:
            BudgetExceededError: it would exceed ``target_epsilon``.
            UnsupportedEventError: the accountant cannot analyse the event.
        """
        eps = self._acct.copy().compose(event, count).epsilon(self._delta)
        if not eps <= self._target:
            raise BudgetExceededError(
                f"releasing would raise epsilon to {eps:.6g} > target_epsilon "
                f"{self._target:g} (delta={self._delta:g}); spent so far {self.epsilon:.6g}"
            )
        return eps

    def spend(
        self,
        round: int,
        event: Event,
        metadata: Mapping[str, Any] | None = None,
        *,
        count: int = 1,
    ) -> float:
        """Record a release, after checking the budget; persist atomically.

        Args:
            round: round number, an integer greater than the last recorded round.
            event: the release's event.
            metadata: JSON-serialisable details (mechanism parameters, client count...).
            count: repetitions of ``event`` in this round.

        Returns:
            Epsilon after this release.

        Raises:
            BudgetExceededError: over budget; nothing recorded.
            ConfigurationError: bad round number or non-JSON metadata; nothing recorded.
            UnsupportedEventError: the accountant cannot analyse the event.
        """
        if isinstance(round, bool) or not isinstance(round, int) or round < 0:
            raise ConfigurationError(f"round must be an integer >= 0, got {round!r}")
        last = self.last_round
        if last is not None and round <= last:
            raise ConfigurationError(
                f"round must be > last recorded round {last}, got {round}"
            )
        try:
            meta = json.loads(json.dumps(dict(metadata or {}), allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(
                f"metadata must be JSON-serialisable: {exc}"
            ) from exc
        trial = self._acct.copy().compose(event, count)
        eps = trial.epsilon(self._delta)
        if not eps <= self._target:
            raise BudgetExceededError(
                f"round {round} would raise epsilon to {eps:.6g} > target_epsilon "
                f"{self._target:g} (delta={self._delta:g}); spent so far {self.epsilon:.6g}"
            )
        record = {
            "round": round,
            "event": event.to_dict(),
            "count": count,
            "metadata": meta,
            "epsilon_after": eps,
            "unix_time": time.time(),
        }
        records = [*self._records, record]
        _atomic_write(self._path, self._serialise(records))
        self._records = records
        self._acct = trial
        return eps

    # -- persistence -------------------------------------------------------------
    def _serialise(self, records: list[dict[str, Any]]) -> str:
        state = self._acct.state_dict()
        doc = {
            "format_version": LEDGER_FORMAT_VERSION,
            "accountant": self._name,
            "accountant_config": state["config"],
            "target_epsilon": self._target,
            "delta": self._delta,
            "records": records,
        }
        return json.dumps(doc, indent=1, sort_keys=True, allow_nan=False) + "\n"

    def _load(self) -> None:
        try:
            doc = json.loads(self._path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise DeserializationError(
                f"cannot read privacy ledger {self._path}: {exc}"
            ) from exc
        if not isinstance(doc, dict):
            raise DeserializationError("privacy ledger must be a JSON object")
        if doc.get("format_version") != LEDGER_FORMAT_VERSION:
            raise DeserializationError(
                f"privacy ledger format_version {doc.get('format_version')!r} is not "
                f"{LEDGER_FORMAT_VERSION}"
            )
        if doc.get("accountant") != self._name:
            raise DeserializationError(
                f"privacy ledger was kept with accountant {doc.get('accountant')!r}, "
                f"not {self._name!r}"
            )
        if doc.get("accountant_config") != self._acct.state_dict()["config"]:
            raise DeserializationError(
                "privacy ledger accountant configuration differs"
            )
        if doc.get("target_epsilon") != self._target or doc.get("delta") != self._delta:
            raise DeserializationError(
                f"privacy ledger budget (epsilon={doc.get('target_epsilon')!r}, "
                f"delta={doc.get('delta')!r}) differs from ({self._target!r}, {self._delta!r})"
            )
        records = doc.get("records")
        if not isinstance(records, list):
            raise DeserializationError("privacy ledger has no records list")
        acct = make_accountant(self._name, **self._kwargs)
        last: int | None = None
        for rec in records:
            if not isinstance(rec, dict):
                raise DeserializationError("malformed ledger record")
            rnd, cnt = rec.get("round"), rec.get("count")
            if (
                isinstance(rnd, bool)
                or not isinstance(rnd, int)
                or (last is not None and rnd <= last)
            ):
                raise DeserializationError("ledger rounds must be increasing integers")
            if isinstance(cnt, bool) or not isinstance(cnt, int) or cnt < 1:
                raise DeserializationError("ledger counts must be positive integers")
            try:
                acct.compose(event_from_dict(rec.get("event")), cnt)  # type: ignore[arg-type]
            except UnsupportedEventError as exc:
                raise DeserializationError(
                    f"ledger holds an unsupported event: {exc}"
                ) from exc
            last = rnd
        self._acct = acct
        self._records = records

    def __repr__(self) -> str:
        return (
            f"PrivacyLedger({str(self._path)!r}, epsilon={self.epsilon:.4g}/"
            f"{self._target:g}, delta={self._delta:g}, rounds={len(self._records)})"
        )
