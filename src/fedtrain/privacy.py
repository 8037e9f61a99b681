"""Privacy accounting and the privacy ledger.

Epsilon always comes from privagg's accountants (``privagg.dp.epsilon``). Until that
function exists in the installed privagg, :func:`epsilon` falls back to Google's
``dp_accounting`` directly and :data:`ACCOUNTANT_SOURCE` says so.

What epsilon means:

* ``record``: DP-SGD inside each client. Each client k has its own
  (eps_k, delta) over its *records*, from the Poisson-subsampled Gaussian with
  rate q_k = batch / n_k and the number of local steps it has run in all rounds.
  The run reports ``max_k eps_k`` and every eps_k.
* ``client``: each sampled client's whole update is clipped to C and it adds a
  Gaussian share N(0, z^2 C^2 / m) (m = expected clients per round), so the sum
  carries N(0, z^2 C^2): DP over *clients* with rate q (client sampling rate) and
  one step per round.

The ledgers (:class:`PrivacyBook`, on top of :class:`privagg.dp.PrivacyLedger`) are
the source of truth: the budget is checked before a round trains, and an entry is
appended (atomically) when an aggregate is released, before the server applies it,
so a run killed after a release and resumed counts that release, and a round that
never released anything is not counted.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["ACCOUNTANT_SOURCE", "PrivacyBook", "atomic_write_bytes", "epsilon"]


def _source() -> str:
    try:
        import privagg.dp as pdp

        if callable(getattr(pdp, "epsilon", None)):
            return "privagg.dp.epsilon"
    except ImportError:  # pragma: no cover - privagg is a hard dependency
        pass
    return "dp_accounting (fallback: privagg.dp.epsilon not available)"


ACCOUNTANT_SOURCE = _source()


def epsilon(
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = "pld",
) -> float:
    """Epsilon of ``steps`` Poisson-subsampled Gaussian mechanisms.

    Args:
        noise_multiplier: z.
        sample_rate: q.
        steps: number of compositions (0 gives 0).
        delta: target delta.
        accountant: ``pld`` or ``rdp``.

    Returns:
        Epsilon.
    """
    if steps <= 0:
        return 0.0
    try:
        import privagg.dp as pdp

        fn = getattr(pdp, "epsilon", None)
    except ImportError:  # pragma: no cover
        fn = None
    if callable(fn):
        return float(
            fn(
                noise_multiplier=noise_multiplier,
                sample_rate=sample_rate,
                steps=steps,
                delta=delta,
                accountant=accountant,
            )
        )
    import dp_accounting

    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(
            sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier)
        ),
        steps,
    )
    if accountant == "rdp":
        acc: Any = dp_accounting.rdp.RdpAccountant()
    else:
        acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-3)
    acc.compose(event)
    return float(acc.get_epsilon(delta))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write a file atomically: temp file in the same folder, fsync, os.replace.

    Args:
        path: destination.
        data: content.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dfd = os.open(p.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _ledger_name(cid: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", cid)
    return f"client-{safe}-{hashlib.sha256(cid.encode()).hexdigest()[:8]}.json"


class PrivacyBook:
    """The run's privacy ledgers, kept by :class:`privagg.dp.PrivacyLedger`.

    ``record``: one ledger per client (its records' epsilon); each round it took
    part in composes ``steps`` x PoissonSampled(q_k, Gaussian(z)). ``client``: one
    ledger for the federation; each round composes PoissonSampled(q, Gaussian(z))
    under Poisson client sampling, or Gaussian(z) (no amplification claimed) under
    fixed-fraction sampling. ``none``: nothing is recorded and epsilon is infinite.

    Ledger entries are numbered by release (1, 2, ...) with the training round in
    the metadata, so a round that is re-run after a crash that followed its release
    is counted again (it was released again), never silently merged.

    Args:
        folder: where the ledger JSON files live (``None``: a private temp folder).
        level: privacy level.
        noise_multiplier: z.
        delta: delta.
        accountant: ``pld`` or ``rdp``.
        target_epsilon: budget (``None``: no budget, recorded as 1e9).
        client_sample_rate: q for client-level DP.
        poisson_clients: whether clients are Poisson-sampled.
    """

    NO_BUDGET = 1e9

    def __init__(
        self,
        folder: str | os.PathLike[str] | None,
        *,
        level: str,
        noise_multiplier: float,
        delta: float,
        accountant: str,
        target_epsilon: float | None,
        client_sample_rate: float,
        poisson_clients: bool,
    ) -> None:
        self.folder = (
            Path(folder)
            if folder is not None
            else Path(tempfile.mkdtemp(prefix="fedtrain-ledger-"))
        )
        self.folder.mkdir(parents=True, exist_ok=True)
        self.level = level
        self.z = noise_multiplier
        self.delta = delta
        self.accountant = accountant
        self.target = target_epsilon if target_epsilon is not None else self.NO_BUDGET
        self.q_clients = client_sample_rate
        self.poisson_clients = poisson_clients
        self._ledgers: dict[str, Any] = {}
        if level == "record":
            for f in sorted(self.folder.glob("client-*.json")):
                cid = json.loads(f.read_text(encoding="utf-8"))["records"][0][
                    "metadata"
                ]["client"]
                self._ledgers[cid] = self._open(f)
        elif level == "client":
            self._ledgers["*"] = self._open(self.folder / "federation.json")

    def _open(self, path: Path) -> Any:
        from privagg.dp import PrivacyLedger

        return PrivacyLedger(
            path,
            target_epsilon=self.target,
            delta=self.delta,
            accountant=self.accountant,
        )

    def _event(self, q: float) -> Any:
        from privagg.dp import GaussianEvent, PoissonSampledEvent

        g = GaussianEvent(self.z)
        return g if q >= 1.0 else PoissonSampledEvent(q, g)

    def _client_event(self) -> Any:
        return self._event(self.q_clients if self.poisson_clients else 1.0)

    def check(self, plan: Mapping[str, tuple[float, int]]) -> None:
        """Raise before a round whose releases would exceed the budget.

        Args:
            plan: ``record``: client id -> (q_k, local steps) of the sampled clients.

        Raises:
            privagg.BudgetExceededError: the round would exceed ``target_epsilon``.
        """
        if self.level == "client":
            self._ledgers["*"].check(self._client_event())
        elif self.level == "record":
            for cid, (q, steps) in plan.items():
                led = self._ledgers.get(cid)
                if led is None:
                    led = self._open(self.folder / _ledger_name(cid))
                    self._ledgers[cid] = led
                led.check(self._event(q), steps)

    def record(
        self,
        fl_round: int,
        plan: Mapping[str, tuple[float, int]],
        contributors: Sequence[str],
    ) -> None:
        """Record a released aggregate (called after recovery, before it is applied).

        Args:
            fl_round: the training round.
            plan: ``record``: client id -> (q_k, steps) for every client whose DP-SGD
                output went into protection this round.
            contributors: clients in the recovered sum.
        """
        meta = {"fl_round": fl_round, "contributors": list(contributors)}
        if self.level == "client":
            led = self._ledgers["*"]
            led.spend((led.last_round or 0) + 1, self._client_event(), meta)
        elif self.level == "record":
            for cid, (q, steps) in plan.items():
                led = self._ledgers.get(cid) or self._open(
                    self.folder / _ledger_name(cid)
                )
                self._ledgers[cid] = led
                led.spend(
                    (led.last_round or 0) + 1,
                    self._event(q),
                    {**meta, "client": cid, "sample_rate": q},
                    count=steps,
                )

    def releases(self) -> list[int]:
        """Training rounds of the recorded releases (federation ledger or union)."""
        out: set[int] = set()
        for led in self._ledgers.values():
            out |= {int(r["metadata"]["fl_round"]) for r in led.records}
        return sorted(out)

    def spent(self) -> dict[str, Any]:
        """Epsilon spent: ``{"epsilon": max, "per_client": {cid: eps}}``."""
        if self.level == "none":
            return {"epsilon": math.inf, "per_client": {}}
        if self.level == "client":
            return {"epsilon": float(self._ledgers["*"].epsilon), "per_client": {}}
        per = {
            cid: float(led.epsilon)
            for cid, led in sorted(self._ledgers.items())
            if led.records
        }
        return {"epsilon": max(per.values()) if per else 0.0, "per_client": per}
