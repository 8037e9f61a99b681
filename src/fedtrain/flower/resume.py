"""The ServerApp's checkpoint: resume a run after the ServerApp process died.

Run config key ``checkpoint-dir`` names a folder on the ServerApp's machine. The
checkpoint (written with :func:`fedtrain.checkpoint.save_checkpoint`: temporary file,
fsync, ``os.replace``; ``meta.json`` last, so a crash leaves the previous consistent
checkpoint) holds only public facts:

* the run's identity: backend, backend options, task, layout fingerprint, holder,
  rounds; a resumed run with another identity is refused
  (:class:`~fedtrain.flower.errors.FlowerConfigError`): delete the folder to start over;
* the session spec, including SecAgg+'s public setup seed, so that the resumed run
  has the same ``params_id`` and the nodes' registers (the holder's release register,
  the active SecAgg+ clients' round registers) keep binding its rounds;
* the next round id, the round in flight (if any), the completed rounds' records;
* the **release ledger**: one entry per round whose aggregate was, or may have been,
  released by the result holder, numbered 1, 2, ...;
* the task's state (e.g. the global LoRA adapter) as safetensors, if the task has
  ``state()`` / ``load_state()``.

**Rounds.** A round id is used once. Before the first request of round ``r`` goes
out, the checkpoint records ``r`` as in flight and the next id as ``r + 1``; after
``r`` is recovered and applied, it records ``r`` as completed. A ServerApp that dies
mid-round thus resumes at ``r + 1``, never re-running ``r``: its clients already joined
``(params_id, r)`` (an active SecAgg+ client refuses a second join from its round
register) and its holder may already have released it (the holder refuses a second
release from its release register). ``rounds`` counts completed rounds: the
abandoned round is made up by one more round id.

**Ledger.** An abandoned round is charged in the ledger as *possibly released* (the
ServerApp cannot know whether the holder released it before the crash): never a lost
release; a completed round is charged once and never re-run: never a double charge.
This release ledger counts releases; a task that keeps a privacy ledger (the
``fedtrain`` task under record-level DP, :class:`AccountingTask`) is told of the
abandoned round first and charges it too, unless its ledger already recorded it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from fedtrain.checkpoint import load_checkpoint, save_checkpoint
from fedtrain.errors import FedtrainError
from fedtrain.flower.errors import FlowerConfigError

__all__ = ["AccountingTask", "RunCheckpoint", "StatefulTask"]

FORMAT = "fedtrain-flower-serverapp-1"


@runtime_checkable
class StatefulTask(Protocol):
    """A server task whose state a checkpoint keeps (optional for a ServerTask)."""

    def state(self) -> dict[str, npt.NDArray[Any]]:
        """The task's state as named arrays."""
        ...

    def load_state(self, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
        """Restore the state :meth:`state` returned."""
        ...


@runtime_checkable
class AccountingTask(Protocol):
    """A server task that keeps a privacy ledger (optional for a ServerTask)."""

    def possibly_released(self, round_id: int) -> None:
        """Charge round ``round_id``, in flight when the ServerApp died, as released
        (unless the task's ledger already recorded it)."""
        ...


def _int(value: object) -> int:
    if type(value) is not int:  # not bool, not float
        raise ValueError(f"{value!r} is not an integer")
    return value


def _parse(meta: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The checkpoint's fields, checked for type and consistency (fail closed).

    Every round id in ``[first_round_id, next_round_id)`` was begun, so it is either
    in flight or charged in the ledger (exactly once); the completed rounds are the
    ledger's ``applied`` entries; the ledger is numbered 1, 2, ... A checkpoint that
    breaks this (edited, torn, or moving ``next_round_id`` back over a used round id)
    is refused: resuming it could re-run a round id or lose a release.
    """
    try:
        spec = meta["spec"]
        if not isinstance(spec, str):
            raise ValueError("spec is not a string")
        first = _int(meta["first_round_id"])
        nxt = _int(meta["next_round_id"])
        raw_in_flight = meta["in_flight"]
        in_flight = None if raw_in_flight is None else _int(raw_in_flight)
        rounds = meta["rounds"]
        releases = meta["releases"]
        if not isinstance(rounds, list) or not all(
            isinstance(r, dict) and type(r.get("round")) is int for r in rounds
        ):
            raise ValueError("rounds is not a list of round records")
        if not isinstance(releases, list) or not all(
            isinstance(e, dict)
            and set(e) == {"n", "round", "status", "contributors"}
            and type(e["n"]) is int
            and type(e["round"]) is int
            and e["status"] in ("applied", "possibly-released")
            for e in releases
        ):
            raise ValueError("releases is not a release ledger")
        if [e["n"] for e in releases] != list(range(1, len(releases) + 1)):
            raise ValueError("the ledger is not numbered 1, 2, ...")
        charged = [e["round"] for e in releases]
        if in_flight is not None:
            charged.append(in_flight)
        if sorted(charged) != list(range(first, nxt)):
            raise ValueError(
                "the ledger and the round in flight do not cover the used round ids "
                f"[{first}, {nxt}) exactly once"
            )
        applied = [e["round"] for e in releases if e["status"] == "applied"]
        if [r["round"] for r in rounds] != applied:
            raise ValueError("the completed rounds are not the ledger's applied ones")
        if in_flight is not None and in_flight != nxt - 1:
            raise ValueError("the round in flight is not the last round id used")
    except (KeyError, TypeError, ValueError) as exc:
        raise FlowerConfigError(
            f"checkpoint-dir {path}: inconsistent checkpoint ({exc}); refusing to "
            "resume from it"
        ) from exc
    return {
        "spec": spec,
        "first_round_id": first,
        "next_round_id": nxt,
        "rounds": rounds,
        "releases": releases,
        "in_flight": in_flight,
    }


@dataclass
class RunCheckpoint:
    """The ServerApp's resumable state (see the module doc).

    Attributes:
        folder: the checkpoint folder (run config ``checkpoint-dir``).
        identity: what makes a run the same run (compared on resume).
        spec: the session spec's JSON (with any public setup seed).
        first_round_id: the run's first round id.
        next_round_id: the round id the next round uses.
        rounds: the completed rounds' summary records, in order.
        releases: the release ledger.
        in_flight: the round id started but not completed, or None.
        resumed: True if this object was loaded from disk.
    """

    folder: Path
    identity: dict[str, Any]
    spec: str
    first_round_id: int
    next_round_id: int
    rounds: list[dict[str, Any]] = field(default_factory=list)
    releases: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int | None = None
    resumed: bool = False

    @classmethod
    def open(
        cls,
        folder: str | os.PathLike[str],
        identity: Mapping[str, Any],
        *,
        spec: str,
        first_round_id: int,
        task: object,
    ) -> RunCheckpoint:
        """The checkpoint in ``folder``, or a new one for this run.

        A loaded checkpoint whose round was in flight charges that round in the ledger
        as possibly released (and in the task's privacy ledger, for an
        :class:`AccountingTask`) and moves past it (saved before returning); the
        task's state is restored.

        Raises:
            FlowerConfigError: the folder holds another run's checkpoint, or an
                unreadable one.
        """
        path = Path(folder)
        try:
            loaded = load_checkpoint(path)
        except FedtrainError as exc:
            raise FlowerConfigError(f"checkpoint-dir {path}: {exc}") from exc
        if loaded is None:
            out = cls(path, dict(identity), spec, first_round_id, first_round_id)
            return out
        meta, arrays = loaded
        if meta.get("serverapp") != FORMAT:
            raise FlowerConfigError(
                f"checkpoint-dir {path}: not a ServerApp checkpoint ({FORMAT})"
            )
        if meta.get("identity") != dict(identity):
            raise FlowerConfigError(
                f"checkpoint-dir {path}: the checkpoint is of another run (backend, "
                f"options, task, layout, holder or rounds differ: "
                f"{meta.get('identity')} vs {dict(identity)}); use a new folder to "
                "start over"
            )
        out = cls(path, dict(identity), **_parse(meta, path), resumed=True)
        if isinstance(task, StatefulTask) and arrays:
            task.load_state(arrays)
        if out.in_flight is not None:
            if isinstance(task, AccountingTask):
                task.possibly_released(out.in_flight)
            out._charge(out.in_flight, None, "possibly-released")
            out.in_flight = None
            out._save(task)
        return out

    @property
    def completed(self) -> int:
        """Number of completed rounds."""
        return len(self.rounds)

    def _charge(
        self, round_id: int, contributors: list[str] | None, status: str
    ) -> None:
        if any(e["round"] == round_id for e in self.releases):
            raise FlowerConfigError(f"round {round_id} is charged twice")  # a bug
        self.releases.append(
            {
                "n": len(self.releases) + 1,
                "round": round_id,
                "status": status,
                "contributors": contributors,
            }
        )

    def begin(self, round_id: int, task: object) -> None:
        """Record ``round_id`` as in flight (before its first request is sent)."""
        if round_id != self.next_round_id or self.in_flight is not None:
            raise FlowerConfigError(f"round {round_id} started out of order")  # a bug
        self.in_flight = round_id
        self.next_round_id = round_id + 1
        self._save(task)

    def complete(self, record: Mapping[str, Any], task: object) -> None:
        """Record the in-flight round as released, applied and completed."""
        round_id = int(record["round"])
        if self.in_flight != round_id:
            raise FlowerConfigError(f"round {round_id} is not in flight")  # a bug
        self._charge(round_id, list(record["contributors"]), "applied")
        self.rounds.append(dict(record))
        self.in_flight = None
        self._save(task)

    def _save(self, task: object) -> None:
        arrays: dict[str, np.ndarray] = {}
        if isinstance(task, StatefulTask):
            arrays = {k: np.asarray(v) for k, v in task.state().items()}
        save_checkpoint(
            self.folder,
            round_=self.completed,
            arrays=arrays,
            meta={
                "serverapp": FORMAT,
                "identity": self.identity,
                "spec": self.spec,
                "first_round_id": self.first_round_id,
                "next_round_id": self.next_round_id,
                "in_flight": self.in_flight,
                "rounds": self.rounds,
                "releases": self.releases,
            },
        )
