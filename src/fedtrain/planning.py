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
  folder (``privacy`` or ``privacy-<unit>``);
* :func:`client_dp` (:class:`ClientDP`): client-level DP's guaranteed minimum of
  contributors, noise multiplier (configured, or calibrated from ``target_epsilon``),
  each client's noise share and the session's :class:`LayoutShare`, and the ledger's
  event for a sum of ``n`` shares; :func:`client_backend_options` (the backend's
  per-coordinate bound set to, or checked against, the clip) and
  :func:`dp_accountant`.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import privagg
from fedtrain.config import RunConfig
from fedtrain.errors import ConfigError
from fedtrain.privacy import ClientEvent, PrivacyBook, calibrate_noise_multiplier
from privagg import Rng, SystemRng
from privagg.dp import (
    DiscreteGaussianShare,
    GaussianEvent,
    PoissonSampledEvent,
    survivors,
)
from privagg.hazmat import DeterministicRng, uniform01

__all__ = [
    "ClientDP",
    "LayoutShare",
    "client_backend_options",
    "client_dp",
    "dp_accountant",
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


@dataclass(frozen=True)
class LayoutShare:
    """A noise share whose ring headroom covers the whole layout over the planned
    rounds: the backends call ``headroom(max_clients)``; this passes ``dim`` (the
    layout's size) and ``rounds`` so the bound holds for every coordinate at once."""

    share: DiscreteGaussianShare
    dim: int
    rounds: int

    @property
    def stddev(self) -> float:
        return self.share.stddev

    def sample_encoded(self, n: int, *, scale: float, rng: Rng | None = None) -> Any:
        return self.share.sample_encoded(n, scale=scale, rng=rng)

    def sample_real(self, n: int, *, rng: Rng | None = None) -> Any:
        return self.share.sample_real(n, rng=rng)

    def headroom(
        self,
        n_clients: int,
        *,
        scale: float = 1.0,
        dim: int | None = None,
        rounds: int | None = None,
        failure_log2: float = 40.0,
    ) -> float:
        return float(
            self.share.headroom(
                n_clients,
                scale=scale,
                dim=dim if dim is not None else self.dim,
                rounds=rounds if rounds is not None else self.rounds,
                failure_log2=failure_log2,
            )
        )

    def event(self, **kw: Any) -> Any:
        return self.share.event(**kw)


def dp_accountant(config: RunConfig, scale: float | None) -> str:
    """The accountant: privagg's RDP for client-level DP on a fixed-point backend
    (``scale`` not None: the distributed discrete Gaussian is analysed by RDP only),
    the configured one otherwise."""
    p = config.privacy
    return "rdp" if p.level == "client" and scale is not None else p.accountant


def client_backend_options(
    config: RunConfig, backend: str, options: Mapping[str, Any]
) -> dict[str, Any]:
    """Client level: the backend options with the per-coordinate bound
    (:func:`privagg.value_bound_option`) set to the clip when not given (updates
    clipped to L2 <= C have every |coordinate| <= C); other levels: ``options``.

    Raises:
        ConfigError: the given bound is below the clip (clipped updates would
            overflow).
    """
    p, opts = config.privacy, dict(options)
    if p.level != "client":
        return opts
    key = privagg.value_bound_option(privagg.get_backend(backend, **opts))
    if key is not None:
        given = opts.get(key)
        if given is None:
            opts[key] = p.clip
        elif not float(given) >= p.clip:
            raise ConfigError(
                f"backend option {key}={given!r} is below the client clip "
                f"{p.clip}: clipped updates would overflow"
            )
    return opts


@dataclass(frozen=True)
class ClientDP:
    """Client-level DP of a run on one backend (see :func:`client_dp`).

    Attributes:
        clip: the L2 clip ``C`` of each client's update.
        min_clients: the guaranteed minimum of contributors the noise is sized for.
        noise_multiplier: ``z``: ``min_clients`` shares carry ``N(0, (z C)^2)``.
        share: each client's share, std ``z C / sqrt(min_clients)``.
        scale: the backend's fixed-point scale, or None (a backend on reals).
        dimension: values per update (the layout's size).
        rounds: the planned rounds (the headroom covers all of them).
    """

    clip: float
    min_clients: int
    noise_multiplier: float
    share: DiscreteGaussianShare
    scale: float | None
    dimension: int
    rounds: int

    def session_noise(self) -> LayoutShare:
        """The noise share every role of the privagg session is set up with."""
        return LayoutShare(self.share, self.dimension, self.rounds)

    def event(self, n: int) -> tuple[Any, dict[str, Any]]:
        """The event and ledger metadata of a sum of ``n`` contributions.

        ``n`` shares of std ``s`` carry noise of std ``s sqrt(n)``: the float
        backends release ``Gaussian(s sqrt(n) / C)``; the integer backends the
        distributed discrete Gaussian with ``n`` shares of std ``s * scale``, L2
        sensitivity ``C * scale + sqrt(d)`` (stochastic rounding) and dimension ``d``.
        """
        s, c = self.share.stddev, self.clip
        meta: dict[str, Any] = {
            "num_contributors": n,
            "share_stddev": s,
            "clip": c,
            "min_clients": self.min_clients,
        }
        if self.scale is not None:
            d = self.dimension
            ev: Any = self.share.event(
                n_survivors=n, clip_norm=c, scale=self.scale, dimension=d
            )
            meta.update(
                mechanism="distributed_discrete_gaussian", scale=self.scale, dimension=d
            )
        else:
            ev = GaussianEvent(s * math.sqrt(n) / c)
            meta.update(mechanism="gaussian", noise_multiplier=s * math.sqrt(n) / c)
        return ev, meta


def _client_min(config: RunConfig, n_clients: int) -> int:
    """The guaranteed minimum of contributors (the noise is sized for it)."""
    c, p = config, config.privacy
    if p.min_clients is not None:
        if p.min_clients > n_clients:
            raise ConfigError(
                f"min_clients={p.min_clients} exceeds the {n_clients} clients"
            )
        return p.min_clients
    qn = c.rounds.sample_rate * n_clients
    k = round(qn) if c.rounds.sampling == "fraction" else math.floor(qn)
    return survivors(max(1, k), p.dropout_tolerance)


def client_dp(
    config: RunConfig, *, n_clients: int, scale: float | None, dimension: int
) -> ClientDP | None:
    """Client-level DP of the run (None at any other privacy level).

    Args:
        config: the run (``privacy``, ``rounds``).
        n_clients: every client of the federation.
        scale: the backend's fixed-point scale (:func:`privagg.fixed_point_scale`),
            None for a backend on reals.
        dimension: the layout's size.

    Raises:
        ConfigError: ``min_clients`` above ``n_clients``.
    """
    c, p = config, config.privacy
    if p.level != "client":
        return None
    m = _client_min(c, n_clients)
    z = p.noise_multiplier
    if p.calibrate:
        assert p.target_epsilon is not None

        def event(z: float) -> Any:
            share = DiscreteGaussianShare(z * p.clip / math.sqrt(m))
            if scale is not None:
                return share.event(
                    n_survivors=m, clip_norm=p.clip, scale=scale, dimension=dimension
                )
            return GaussianEvent(z)

        z = calibrate_noise_multiplier(
            event,
            target_epsilon=p.target_epsilon,
            delta=p.delta,
            accountant=dp_accountant(c, scale),
            count=c.rounds.rounds,
        )
    # each client adds std z C / sqrt(m_min) after encoding (discrete Gaussian on the
    # integer backends, float Gaussian on ckks/plain): m_min contributors carry at
    # least N(0, (z C)^2)
    share = DiscreteGaussianShare(z * p.clip / math.sqrt(m))
    return ClientDP(p.clip, m, z, share, scale, dimension, c.rounds.rounds)
