"""Regenerate tests/vectors/dp/*.json from dp-accounting and Opacus (not a test).

Run: PYTHONPATH=src .venv/bin/python tests/privagg/dp/_generate_vectors.py
"""

from __future__ import annotations

import json
import logging
import warnings
from importlib.metadata import version
from pathlib import Path

from dp_accounting import dp_event, mechanism_calibration
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from opacus.accountants.rdp import RDPAccountant as OpacusRDP

logging.disable(logging.WARNING)
warnings.simplefilter("ignore")

OUT = Path(__file__).resolve().parents[2] / "vectors" / "dp"
DPA = f"dp-accounting=={version('dp-accounting')}"
OPACUS = f"opacus=={version('opacus')}"

FAST = [  # (q, sigma, steps, delta)
    (0.01, 4.0, 10_000, 1e-5),
    (0.001, 0.5, 1_000, 1e-5),
    (0.001, 10.0, 10_000, 1e-6),
    (0.01, 1.0, 1_000, 1e-5),
    (0.01, 0.8, 100, 1e-5),
    (0.1, 2.0, 100, 1e-5),
    (0.1, 1.0, 1_000, 1e-6),
    (0.5, 4.0, 100, 1e-5),
    (1.0, 10.0, 1, 1e-5),
    (1.0, 1.0, 50, 1e-5),
    (0.004, 1.1, 10_000, 1e-5),
    (0.2, 0.6, 10, 1e-3),
]
SLOW = [
    (0.001, 0.5, 100_000, 1e-5),
    (0.001, 2.0, 100_000, 1e-5),
    (0.01, 10.0, 100_000, 1e-5),
    (0.05, 1.5, 20_000, 1e-5),
]


def pld_eps(q: float, s: float, n: int, d: float) -> float:
    a = pld_privacy_accountant.PLDAccountant()
    a.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(s)), n)
    return float(a.get_epsilon(d))


def rdp_eps(q: float, s: float, n: int, d: float) -> float:
    a = rdp_privacy_accountant.RdpAccountant()
    a.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(s)), n)
    return float(a.get_epsilon(d))


def opacus_eps(q: float, s: float, n: int, d: float) -> float:
    alphas = OpacusRDP.DEFAULT_ALPHAS
    rdp = compute_rdp(q=q, noise_multiplier=s, steps=n, orders=alphas)
    return float(get_privacy_spent(orders=alphas, rdp=rdp, delta=d)[0])


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    cases = []
    for tier, grid in (("fast", FAST), ("slow", SLOW)):
        for q, s, n, d in grid:
            cases.append(
                {
                    "tier": tier,
                    "sample_rate": q,
                    "noise_multiplier": s,
                    "steps": n,
                    "delta": d,
                    "dp_accounting_pld_epsilon": pld_eps(q, s, n, d),
                    "dp_accounting_rdp_epsilon": rdp_eps(q, s, n, d),
                    "opacus_rdp_epsilon": opacus_eps(q, s, n, d),
                }
            )
    (OUT / "poisson_gaussian_epsilon.json").write_text(
        json.dumps(
            {
                "source": "Poisson-subsampled Gaussian mechanism (DP-SGD), epsilon at delta "
                "after `steps` compositions, add-or-remove-one neighbours.",
                "generated_by": {
                    "packages": [DPA, OPACUS],
                    "dp_accounting_pld_epsilon": "dp_accounting.pld.pld_privacy_accountant."
                    "PLDAccountant() (value_discretization_interval=1e-4); .compose("
                    "PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), steps); "
                    ".get_epsilon(delta)",
                    "dp_accounting_rdp_epsilon": "dp_accounting.rdp.rdp_privacy_accountant."
                    "RdpAccountant() (DEFAULT_RDP_ORDERS); same compose; .get_epsilon(delta)",
                    "opacus_rdp_epsilon": "opacus.accountants.analysis.rdp.compute_rdp(q, "
                    "noise_multiplier, steps, orders=RDPAccountant.DEFAULT_ALPHAS) then "
                    "get_privacy_spent(orders, rdp, delta)[0]",
                    "script": "tests/privagg/dp/_generate_vectors.py",
                },
                "cases": cases,
            },
            indent=1,
        )
        + "\n"
    )

    calib = []
    for q, n, eps, d in [
        (0.01, 10_000, 1.0, 1e-5),
        (0.01, 1_000, 3.0, 1e-5),
        (0.001, 10_000, 0.5, 1e-6),
        (0.1, 100, 8.0, 1e-5),
        (1.0, 10, 5.0, 1e-5),
    ]:
        sigma = mechanism_calibration.calibrate_dp_mechanism(
            pld_privacy_accountant.PLDAccountant,
            lambda s, q=q, n=n: dp_event.SelfComposedDpEvent(
                dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(s)), n
            ),
            eps,
            d,
        )
        calib.append(
            {
                "sample_rate": q,
                "steps": n,
                "target_epsilon": eps,
                "delta": d,
                "dp_accounting_pld_sigma": float(sigma),
            }
        )
    (OUT / "calibration.json").write_text(
        json.dumps(
            {
                "source": "Noise multiplier calibration for the Poisson-subsampled Gaussian.",
                "generated_by": {
                    "packages": [DPA],
                    "call": "dp_accounting.mechanism_calibration.calibrate_dp_mechanism("
                    "PLDAccountant, lambda s: SelfComposedDpEvent(PoissonSampledDpEvent(q, "
                    "GaussianDpEvent(s)), steps), target_epsilon, delta) (tol 1e-6)",
                    "script": "tests/privagg/dp/_generate_vectors.py",
                },
                "cases": calib,
            },
            indent=1,
        )
        + "\n"
    )

    q, s, n, d = 0.01, 4.0, 10_000, 1e-5
    (OUT / "abadi2016.json").write_text(
        json.dumps(
            {
                "source": "Abadi et al., 'Deep Learning with Differential Privacy', CCS 2016 "
                "(arXiv:1607.00133): q = 0.01, sigma = 4, delta = 1e-5, 10,000 steps; the "
                "paper's moments accountant reports epsilon = 1.26.",
                "generated_by": {
                    "packages": [DPA, OPACUS],
                    "calls": "as in poisson_gaussian_epsilon.json",
                    "script": "tests/privagg/dp/_generate_vectors.py",
                },
                "sample_rate": q,
                "noise_multiplier": s,
                "steps": n,
                "delta": d,
                "paper_epsilon": 1.26,
                "dp_accounting_pld_epsilon": pld_eps(q, s, n, d),
                "dp_accounting_rdp_epsilon": rdp_eps(q, s, n, d),
                "opacus_rdp_epsilon": opacus_eps(q, s, n, d),
            },
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
