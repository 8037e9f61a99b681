"""Differential-privacy accounting with privagg, end to end (runs in a few seconds).

Run: python examples/dp_privacy_budget.py

The DP noise is drawn from the operating system's CSPRNG (``privagg.SystemRng``).
``--deterministic-seed N`` replays it from ``DeterministicRng(N)`` instead, for tests
that compare outputs only: anyone who knows the seed can subtract the noise, so the
result then has no privacy at all.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import privagg.dp as dp
from privagg import Rng, SystemRng
from privagg.errors import BudgetExceededError
from privagg.hazmat import DeterministicRng


def noise_rng(deterministic_seed: int | None) -> Rng:
    """The RNG of the DP noise: the OS CSPRNG unless a test explicitly asks for a seed."""
    if deterministic_seed is None:
        return SystemRng()
    print(
        f"WARNING: DP noise from DeterministicRng({deterministic_seed}): reproducible "
        "and NOT private (tests only)"
    )
    return DeterministicRng(deterministic_seed)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--deterministic-seed",
        type=int,
        default=None,
        metavar="N",
        help="tests only: draw the DP noise from DeterministicRng(N) (not private)",
    )
    args = ap.parse_args(argv)

    # 1. DP-SGD in one call: the Abadi et al. (2016) setting.
    kw = dict(noise_multiplier=4.0, sample_rate=0.01, steps=10_000, delta=1e-5)
    print("Abadi et al. 2016 (paper: 1.26)")
    print(f"  PLD epsilon = {dp.epsilon(**kw):.4f}")
    print(f"  RDP epsilon = {dp.epsilon(**kw, accountant='rdp'):.4f}")
    z = dp.noise_multiplier(
        target_epsilon=2.0, delta=1e-5, sample_rate=0.01, steps=10_000
    )
    print(f"  noise multiplier for epsilon = 2: {z:.4f}")

    # 2. The event algebra and an accountant with state save/load.
    round_event = dp.PoissonSampledEvent(0.05, dp.GaussianEvent(1.1))
    acct = dp.RdpAccountant().compose(round_event, 500)
    eps, order = acct.epsilon_and_order(1e-5)
    print(f"RDP accountant after 500 rounds: epsilon {eps:.3f} (optimal order {order})")
    restored = dp.RdpAccountant()
    restored.load_state_dict(acct.state_dict())
    assert restored.epsilon(1e-5) == eps

    # 3. A persistent ledger that refuses to overspend.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "privacy_ledger.json"
        ledger = dp.PrivacyLedger(
            path, target_epsilon=1.0, delta=1e-5, accountant="pld"
        )
        rnd = 0
        try:
            while True:
                ledger.check(round_event)  # raises before any data is touched
                ledger.spend(rnd, round_event, {"clients": 50})
                rnd += 1
        except BudgetExceededError as exc:
            print(f"ledger stopped after {rnd} rounds: {exc}")
        again = dp.PrivacyLedger(path, target_epsilon=1.0, delta=1e-5, accountant="pld")
        print(f"reloaded ledger: {again}")

    # 4. Distributed DP under secure aggregation: each client adds a discrete noise share.
    n_clients, dropout, clip, scale, dim = 20, 0.1, 1.0, 2.0**16, 1000
    share = dp.DiscreteGaussianShare.calibrate(
        target_epsilon=5.0,
        delta=1e-5,
        clip_norm=clip,
        n_clients=n_clients,
        scale=scale,
        dimension=dim,
        rounds=20,
        dropout_fraction=dropout,
    )
    rng = noise_rng(args.deterministic_seed)
    data = np.random.default_rng(7)  # synthetic client updates (test data only)
    updates = [data.normal(0.0, 0.05, dim) for _ in range(n_clients)]
    encoded = []
    for u in updates:
        clipped, _ = dp.clip_l2(u, clip)
        q = np.round(clipped * scale).astype(np.int64)  # stand-in for the encoder
        encoded.append(q + share.sample_encoded(dim, scale=scale, rng=rng))
    survivors = dp.survivors(n_clients, dropout)
    total = np.sum(encoded[:survivors], axis=0)  # what secure aggregation reveals
    event = share.event(
        n_survivors=survivors, clip_norm=clip, scale=scale, dimension=dim
    )
    eps20 = dp.RdpAccountant().compose(event, 20).epsilon(1e-5)
    print(
        f"DDG: per-client std {share.stddev:.4f}, headroom {share.headroom(survivors, dim=dim):.3f}, "
        f"epsilon after 20 rounds {eps20:.3f}; noisy sum norm {np.linalg.norm(total / scale):.2f}"
    )


if __name__ == "__main__":
    main()
