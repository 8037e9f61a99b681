"""Privacy accounting and the privacy ledger.

Epsilon always comes from privagg's accountants (``privagg.dp.epsilon``). Until that
function exists in the installed privagg, :func:`epsilon` falls back to Google's
``dp_accounting`` directly and :data:`ACCOUNTANT_SOURCE` says so.

What epsilon means:

* ``record``: DP-SGD inside each client. Each client k has its own
  (eps_k, delta) over its *records*, from the Poisson-subsampled Gaussian with
  rate q_k = batch / n_k and the number of local steps it has run in all rounds.
  The run reports ``max_k eps_k`` and every eps_k.
* ``client``: each contributing client's whole update is clipped to C; it adds its
  share of distributed noise after privagg has fixed-point encoded it (discrete
  Gaussian for the integer backends ``secagg``/``additive``/``paillier``, float
  Gaussian for ``ckks``/``plain``), each share sized for the guaranteed minimum
  ``m_min`` of contributors (std ``z C / sqrt(m_min)``); the holder refuses a sum of
  fewer than ``m_min`` contributions. Each release is recorded with the mechanism
  for the noise actually summed: ``n`` contributors give ``Gaussian(s sqrt(n) / C)``
  (float backends) or the distributed discrete Gaussian event with ``n`` shares,
  discretisation-inflated sensitivity and the layout's dimension (integer backends,
  RDP). No amplification by client sampling is claimed: the noise depends on how
  many were sampled, so the Poisson-subsampled Gaussian analysis does not apply.
  The neighbouring relation is zero-out (a client's data replaced by one whose
  update is zero), under which the contributor set does not depend on the data.

The ledgers (:class:`PrivacyBook`, on top of :class:`privagg.dp.PrivacyLedger`) are
the source of truth: the budget is checked before a round trains (against the worst
case the round can release), and an entry is appended (atomically) when an aggregate
is released, before the server applies it, so a run killed after a release and
resumed counts that release, and a round that never released anything is not
counted. A release is never refused at recording time (it already happened): the
ledger files carry no budget of their own, :meth:`PrivacyBook.check` enforces it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedtrain.errors import ConfigError

__all__ = [
    "ACCOUNTANT_SOURCE",
    "PrivacyBook",
    "atomic_write_bytes",
    "calibrate_noise_multiplier",
    "epsilon",
]

ClientEvent = Callable[[int], tuple[Any, dict[str, Any]]]
"""``n contributors -> (privagg.dp event, JSON metadata)`` of one client-level release."""


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


def calibrate_noise_multiplier(
    make_event: Callable[[float], Any],
    *,
    target_epsilon: float,
    delta: float,
    accountant: str,
    count: int,
) -> float:
    """Smallest z whose ``count`` compositions of ``make_event(z)`` meet the target.

    privagg's calibration (:func:`privagg.dp.calibrate_noise_multiplier`) on the same
    accountant the ledger uses. The target is shrunk by 0.1% so that composing the
    rounds one by one (as the ledger does) never lands a rounding error above it.
    """
    from privagg.dp import calibrate_noise_multiplier as cal
    from privagg.dp import make_accountant

    return float(
        cal(
            lambda: make_accountant(accountant),
            make_event,
            target_epsilon * 0.999,
            delta,
            count=count,
        )
    )


class PrivacyBook:
    """The run's privacy ledgers, kept by :class:`privagg.dp.PrivacyLedger`.

    ``record``: one ledger per client (its records' epsilon); each round it took
    part in composes ``steps`` x PoissonSampled(q_k, Gaussian(z)). ``client``: one
    ledger for the federation; each release composes ``client_event(n)`` for its
    ``n`` contributors (see the module docstring). ``none``: nothing is recorded and
    epsilon is infinite.

    Ledger entries are numbered by release (1, 2, ...) with the training round in
    the metadata, so a round that is re-run after a crash that followed its release
    is counted again (it was released again), never silently merged. A fresh start in
    the same folder keeps composing into the same ledgers (same privacy unit).

    Args:
        folder: where the ledger JSON files live (``None``: a private temp folder).
        level: privacy level.
        noise_multiplier: z (record level).
        delta: delta.
        accountant: ``pld`` or ``rdp``.
        target_epsilon: budget (``None``: no budget).
        client_event: client level: ``n -> (event, metadata)``.
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
        client_event: ClientEvent | None = None,
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
        self.client_event = client_event
        if level == "client" and client_event is None:
            raise ConfigError("client-level accounting needs client_event")
        self._ledgers: dict[str, Any] = {}
        if level == "record":
            for f in sorted(self.folder.glob("client-*.json")):
                recs = json.loads(f.read_text(encoding="utf-8"))["records"]
                if recs:
                    self._ledgers[recs[0]["metadata"]["client"]] = self._open(f)
        elif level == "client":
            self._ledgers["*"] = self._open(self.folder / "federation.json")

    def _open(self, path: Path) -> Any:
        from privagg.dp import PrivacyLedger

        # the file carries no budget: a release that happened is always recorded;
        # the budget is enforced by check() before anything is released
        return PrivacyLedger(
            path,
            target_epsilon=self.NO_BUDGET,
            delta=self.delta,
            accountant=self.accountant,
        )

    def _ledger(self, cid: str) -> Any:
        led = self._ledgers.get(cid)
        if led is None:
            led = self._open(self.folder / _ledger_name(cid))
            self._ledgers[cid] = led
        return led

    def _event(self, q: float) -> Any:
        from privagg.dp import GaussianEvent, PoissonSampledEvent

        g = GaussianEvent(self.z)
        return g if q >= 1.0 else PoissonSampledEvent(q, g)

    def _refuse(self, eps: float, spent: float) -> None:
        from privagg import BudgetExceededError

        raise BudgetExceededError(
            f"the next release would raise epsilon to {eps:.6g} > target_epsilon "
            f"{self.target:g} (delta={self.delta:g}); spent {spent:.6g}, remaining "
            f"{max(0.0, self.target - spent):.6g}"
        )

    def check(
        self,
        plan: Mapping[str, tuple[float, int]],
        contributors: Sequence[int] = (),
    ) -> float:
        """Raise before a round whose releases could exceed the budget.

        Args:
            plan: ``record``: client id -> (q_k, local steps) of the sampled clients.
            contributors: ``client``: the contributor counts the round may release
                with (its epsilon is checked for each; the smallest count is the
                worst case).

        Returns:
            The largest epsilon the round can lead to.

        Raises:
            privagg.BudgetExceededError: the round could exceed ``target_epsilon``
                (the message gives the epsilon spent and the budget remaining).
        """
        worst = 0.0
        if self.level == "client":
            assert self.client_event is not None
            led = self._ledgers["*"]
            for n in sorted(set(contributors)):
                worst = max(worst, float(led.check(self.client_event(n)[0])))
            if worst > self.target:
                self._refuse(worst, float(led.epsilon))
        elif self.level == "record":
            for cid, (q, steps) in plan.items():
                led = self._ledger(cid)
                eps = float(led.check(self._event(q), steps))
                if eps > self.target:
                    self._refuse(eps, float(led.epsilon))
                worst = max(worst, eps)
        return worst

    def record(
        self,
        fl_round: int,
        plan: Mapping[str, tuple[float, int]],
        contributors: Sequence[str],
        *,
        run_id: str = "",
    ) -> None:
        """Record a released aggregate (called after recovery, before it is applied).

        Args:
            fl_round: the training round.
            plan: ``record``: client id -> (q_k, steps) for every client whose DP-SGD
                output went into protection this round.
            contributors: clients in the recovered sum (client level: only their
                number is written).
            run_id: identifies the run (a fresh start keeps the ledgers).
        """
        meta: dict[str, Any] = {"fl_round": fl_round, "run_id": run_id}
        if self.level == "client":
            assert self.client_event is not None
            led = self._ledgers["*"]
            event, details = self.client_event(len(contributors))
            led.spend((led.last_round or 0) + 1, event, {**meta, **details})
        elif self.level == "record":
            for cid, (q, steps) in plan.items():
                led = self._ledger(cid)
                led.spend(
                    (led.last_round or 0) + 1,
                    self._event(q),
                    {
                        **meta,
                        "client": cid,
                        "sample_rate": q,
                        "noise_multiplier": self.z,
                        "steps": steps,
                        "in_sum": cid in set(contributors),
                    },
                    count=steps,
                )

    def releases(self) -> list[int]:
        """Training rounds of the recorded releases (federation ledger or union)."""
        out: set[int] = set()
        for led in self._ledgers.values():
            out |= {int(r["metadata"]["fl_round"]) for r in led.records}
        return sorted(out)

    def counts(self) -> dict[str, int]:
        """Ledger file name -> number of recorded releases (checkpoint consistency)."""
        return {
            led.path.name: len(led.records)
            for led in self._ledgers.values()
            if led.records
        }

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

    def remaining(self) -> float | None:
        """Budget left (None without a budget)."""
        if self.target >= self.NO_BUDGET or self.level == "none":
            return None
        return max(0.0, self.target - float(self.spent()["epsilon"]))
