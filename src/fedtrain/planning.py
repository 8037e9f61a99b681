"""What a round decides before anyone trains, as both runtimes decide it.

The in-process :class:`fedtrain.server.Federation` and the Flower ``fedtrain`` task
(:mod:`fedtrain.flower.run_task`) call these same functions, so that the same run
configuration samples the same clients, runs the same number of local steps, draws
DP-SGD's randomness from the same source and keeps the same privacy ledger:

* :func:`dp_rng`: DP randomness (noise, Poisson batches, client sampling): the OS
  CSPRNG; in test mode (``RunConfig.test_seed``) a fixed AES-CTR stream per purpose;
* :func:`sample_clients`: a round's clients (Poisson rate ``q`` or a fixed fraction);
* :func:`local_steps`: a client's local optimizer steps per round;
* :func:`record_plan` and :func:`record_noise_multiplier`: record-level DP-SGD's
  per-client plan ``(q_k, steps)`` and its noise multiplier (configured, or calibrated
  from ``target_epsilon`` over the whole run);
* :func:`open_book`: the run's :class:`~fedtrain.privacy.PrivacyBook` in the run's
  folder (``privacy`` or ``privacy-<unit>``).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedtrain.config import RunConfig
from fedtrain.privacy import ClientEvent, PrivacyBook, calibrate_noise_multiplier
from privagg import Rng, SystemRng
from privagg.dp import GaussianEvent, PoissonSampledEvent
from privagg.hazmat import DeterministicRng, uniform01

__all__ = [
    "dp_rng",
    "local_steps",
    "open_book",
    "record_noise_multiplier",
    "record_plan",
    "sample_clients",
]


def dp_rng(test_seed: int | None, *purpose: object) -> Rng:
    """DP randomness: the OS CSPRNG, or (test mode) a fixed AES-CTR stream.

    Args:
        test_seed: ``RunConfig.test_seed`` (None in production: the OS CSPRNG).
        purpose: what the randomness is for (e.g. ``"dpsgd", round, client id``);
            test mode only: each purpose gets its own stream.
    """
    if test_seed is None:
        return SystemRng()
    return DeterministicRng(
        hashlib.sha256(repr((test_seed, *purpose)).encode()).digest()
    )


def local_steps(config: RunConfig, n_examples: int) -> int:
    """A client's local optimizer steps per round (``local_steps``, or epochs)."""
    ro = config.rounds
    if ro.local_steps is not None:
        return ro.local_steps
    assert ro.local_epochs is not None
    return max(1, math.ceil(ro.local_epochs * n_examples / ro.batch_size))


def sample_clients(
    config: RunConfig, client_ids: Sequence[str], round_: int, draw: int
) -> list[str]:
    """The clients of round ``round_``, from privagg's CSPRNG (test mode: AES-CTR).

    Args:
        config: the run (``rounds.sampling``, ``rounds.sample_rate``, ``test_seed``).
        client_ids: every client, in the order the decisions are drawn (sorted ids).
        round_: the training round (1-based).
        draw: how many samplings this run has drawn, this one included (test mode:
            the stream's purpose).

    Returns:
        The sampled client ids, in ``client_ids`` order (``poisson``: each client
        independently with probability ``q``; ``fraction``: a uniformly random subset
        of ``max(1, round(q n))``).
    """
    ro, ids = config.rounds, list(client_ids)
    u = uniform01(dp_rng(config.test_seed, "sampling", round_, draw), len(ids))
    if ro.sampling == "poisson":
        return [cid for cid, x in zip(ids, u, strict=True) if x < ro.sample_rate]
    k = max(1, round(ro.sample_rate * len(ids)))
    pick = np.argsort(u, kind="stable")[:k]  # a uniformly random k-subset
    return [ids[int(i)] for i in sorted(pick)]


def record_plan(
    config: RunConfig, n_examples: Mapping[str, int], ids: Sequence[str]
) -> dict[str, tuple[float, int]]:
    """Record-level DP plan of clients ``ids``: client -> (Poisson rate q_k, steps).

    Empty at any other privacy level.
    """
    if config.privacy.level != "record":
        return {}
    bs = config.rounds.batch_size
    return {
        cid: (min(1.0, bs / n_examples[cid]), local_steps(config, n_examples[cid]))
        for cid in ids
    }


def record_noise_multiplier(
    config: RunConfig, n_examples: Mapping[str, int], accountant: str
) -> float:
    """Record level: DP-SGD's z, configured or calibrated from ``target_epsilon``.

    Calibrated: the smallest z for which every client's ``steps x rounds``
    compositions of its Poisson-subsampled Gaussian meet the target (the largest
    over the clients' distinct plans).
    """
    c, p = config, config.privacy
    if not p.calibrate:
        return p.noise_multiplier
    assert p.target_epsilon is not None
    plans = set(record_plan(c, n_examples, list(n_examples)).values())

    def dpsgd(q: float) -> Callable[[float], Any]:
        def event(z: float) -> Any:
            g = GaussianEvent(z)
            return g if q >= 1.0 else PoissonSampledEvent(q, g)

        return event

    return max(
        calibrate_noise_multiplier(
            dpsgd(q),
            target_epsilon=p.target_epsilon,
            delta=p.delta,
            accountant=accountant,
            count=steps * c.rounds.rounds,
        )
        for q, steps in sorted(plans)
    )


def open_book(
    config: RunConfig,
    out_dir: str | os.PathLike[str] | None,
    *,
    noise_multiplier: float,
    accountant: str,
    client_event: ClientEvent | None = None,
) -> PrivacyBook:
    """The run's privacy ledgers in ``out_dir/privacy`` (``privacy-<unit>`` for a
    named privacy unit); ``out_dir`` None: a private temporary folder."""
    p = config.privacy
    folder = None
    if out_dir is not None:
        folder = Path(out_dir) / (
            "privacy" if p.unit == "default" else f"privacy-{p.unit}"
        )
    return PrivacyBook(
        folder,
        level=p.level,
        noise_multiplier=noise_multiplier,
        delta=p.delta,
        accountant=accountant,
        target_epsilon=p.target_epsilon,
        client_event=client_event if p.level == "client" else None,
    )
