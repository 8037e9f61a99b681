"""``privagg epsilon`` and ``privagg sigma``: DP accounting."""

from __future__ import annotations

import click
from rich.text import Text

from privagg.cli._common import (
    _accountant_option,
    _console,
    _delta_option,
    _emit_json,
    _json_option,
    _print_fields,
    _q_option,
    _steps_option,
    _versions,
    cli,
)


# -- epsilon / sigma -----------------------------------------------------------------------
@cli.command(short_help="Epsilon of a Poisson-subsampled Gaussian mechanism (DP-SGD).")
@click.option(
    "--sigma",
    "--noise-multiplier",
    "sigma",
    type=float,
    required=True,
    help="Noise multiplier: noise std / L2 clip norm, > 0.",
)
@_q_option
@_steps_option
@_delta_option
@_accountant_option
@_json_option
def epsilon(
    sigma: float, q: float, steps: int, delta: float, accountant: str, as_json: bool
) -> None:
    """Epsilon of STEPS Poisson-subsampled Gaussian releases (DP-SGD, DP-FedAvg).

    Calls privagg.dp.epsilon(noise_multiplier=SIGMA, sample_rate=Q, steps=STEPS,
    delta=DELTA, accountant=ACCOUNTANT).
    """
    from privagg import dp

    eps = dp.epsilon(
        noise_multiplier=sigma,
        sample_rate=q,
        steps=steps,
        delta=delta,
        accountant=accountant,
    )
    record = {
        "command": "epsilon",
        "mechanism": "poisson-subsampled-gaussian",
        "noise_multiplier": sigma,
        "sample_rate": q,
        "steps": steps,
        "delta": delta,
        "accountant": accountant,
        "epsilon": eps,
        "versions": _versions(),
    }
    if as_json:
        _emit_json(record)
        return
    console = _console()
    console.print(Text.assemble(("epsilon = ", "bold"), (f"{eps:.6g}", "bold green")))
    _print_fields(
        console,
        [
            ("delta", delta),
            ("noise multiplier", sigma),
            ("sample rate q", q),
            ("steps", steps),
            ("accountant", accountant.upper()),
        ],
    )


@cli.command(short_help="Noise multiplier that meets a target epsilon.")
@click.option(
    "--epsilon",
    "target_epsilon",
    type=float,
    required=True,
    help="Target epsilon, > 0.",
)
@_q_option
@_steps_option
@_delta_option
@_accountant_option
@_json_option
def sigma(
    target_epsilon: float,
    q: float,
    steps: int,
    delta: float,
    accountant: str,
    as_json: bool,
) -> None:
    """The smallest noise multiplier whose epsilon is at most EPSILON.

    Calls privagg.dp.noise_multiplier(target_epsilon=EPSILON, delta=DELTA,
    sample_rate=Q, steps=STEPS, accountant=ACCOUNTANT); the result is rounded up
    (relative precision 1e-4), so it always meets the target.
    """
    from privagg import dp

    z = dp.noise_multiplier(
        target_epsilon=target_epsilon,
        delta=delta,
        sample_rate=q,
        steps=steps,
        accountant=accountant,
    )
    record = {
        "command": "sigma",
        "mechanism": "poisson-subsampled-gaussian",
        "target_epsilon": target_epsilon,
        "sample_rate": q,
        "steps": steps,
        "delta": delta,
        "accountant": accountant,
        "noise_multiplier": z,
        "versions": _versions(),
    }
    if as_json:
        _emit_json(record)
        return
    console = _console()
    console.print(
        Text.assemble(("noise multiplier = ", "bold"), (f"{z:.6g}", "bold green"))
    )
    _print_fields(
        console,
        [
            ("target epsilon", target_epsilon),
            ("delta", delta),
            ("sample rate q", q),
            ("steps", steps),
            ("accountant", accountant.upper()),
        ],
    )
