"""What every command shares: typed errors and exit codes, output helpers, the
command group and common options."""

from __future__ import annotations

import importlib.metadata
import json
import math
import platform
from collections.abc import Iterable, Mapping
from typing import Any

import click
from rich.console import Console
from rich.text import Text

from privagg.errors import (
    ConfigurationError,
    DeserializationError,
    EncodingOverflowError,
    ParameterMismatchError,
    PrivaggError,
)
from privagg.identity import IDENTITY_PUBLIC_FORMAT, IDENTITY_SCHEME

MAX_INSPECT_BYTES = 64 << 20
_SECRET_KIND = 1  # Scheme.CORE kind of an exported secret (privagg.keys)
_CKKS_PUBLIC_KIND = 0x20  # Scheme.CKKS kind of a public context (backends/ckks/keys.py)
_SECAGG_MATERIAL_KIND = (
    12  # Scheme.SECAGG kind of dealt material (backends/secagg/backend.py)
)
_PAILLIER_PK_TAG = "paillier-pk/v2"
_IDENTITY_FORMAT = IDENTITY_PUBLIC_FORMAT
_IDENTITY_SCHEME = IDENTITY_SCHEME
_BENCH_SCRIPTS = {
    "plain": "plain",
    "ckks": "ckks",
    "paillier": "paillier",
    "secagg": "secagg",
    "additive": "secagg",  # benchmarks/secagg.py measures the additive backend too
}


# -- errors ------------------------------------------------------------------------------
class OutputExistsError(ConfigurationError):
    """``keygen`` would overwrite an existing file (pass ``--force`` to allow it)."""


class BenchmarkFailedError(PrivaggError):
    """A benchmark script failed or printed no closing JSON line."""


_BAD_INPUT: tuple[type[PrivaggError], ...] = (
    ConfigurationError,
    DeserializationError,
    ParameterMismatchError,
    EncodingOverflowError,
)


def exit_code_for(exc: PrivaggError) -> int:
    """The exit status for a privagg error: 2 for bad input, 1 otherwise.

    >>> exit_code_for(ConfigurationError("delta must be in (0, 1)"))
    2
    >>> exit_code_for(BenchmarkFailedError("no JSON line"))
    1
    """
    return 2 if isinstance(exc, _BAD_INPUT) else 1


def _safe(text: object) -> str:
    """``text`` with control characters escaped, so a file cannot drive the terminal.

    >>> _safe("party\\x1b[31m")
    'party\\\\x1b[31m'
    """
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
        for ch in str(text)
    )


class _ReportedError(click.ClickException):
    """A privagg error (or an OS error), shown as one line with its type; exit 1."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    def show(self, file: Any = None) -> None:
        click.echo(f"privagg: {self.kind}: {_safe(self.message)}", err=True)


class _BadInputReportError(_ReportedError):
    """Exit 2: the input was wrong."""

    exit_code = 2


def _report(exc: PrivaggError) -> _ReportedError:
    cls = _BadInputReportError if exit_code_for(exc) == 2 else _ReportedError
    return cls(type(exc).__name__, str(exc))


class _Group(click.Group):
    """The command group: turns privagg and OS errors into one-line reports."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PrivaggError as exc:
            raise _report(exc) from None
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            raise _ReportedError(
                type(exc).__name__, f"{exc.strerror or exc}{where}"
            ) from None


# -- output ------------------------------------------------------------------------------
def _console() -> Console:
    # Created per call so that it writes to the current sys.stdout (CliRunner swaps it).
    return Console(highlight=False, soft_wrap=True)


def _jsonable(value: Any) -> Any:
    """Plain JSON values: non-finite floats become strings, tuples become lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _emit_json(record: Mapping[str, Any]) -> None:
    click.echo(json.dumps(_jsonable(record), sort_keys=True, allow_nan=False))


def _print_fields(console: Console, fields: Iterable[tuple[str, Any]]) -> None:
    for key, value in fields:
        console.print(
            Text.assemble((f"  {key:<22}", "bold"), _format_value(value)),
        )


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_safe(v) for v in value)
    return _safe(value)


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("privagg", "dp-accounting", "numpy", "scipy"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


# -- the group ---------------------------------------------------------------------------
@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="privagg", prog_name="privagg")
def cli() -> None:
    """privagg: secure aggregation and differential privacy from the command line.

    Exit status: 0 success, 2 bad input (an invalid parameter, a malformed file, an
    output that already exists), 1 the operation failed.
    """


_json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object (for scripts)."
)
_accountant_option = click.option(
    "--accountant",
    type=click.Choice(["pld", "rdp"]),
    default="pld",
    show_default=True,
    help="PLD (tightest) or RDP (faster, slightly looser).",
)
_q_option = click.option(
    "--q",
    "--sample-rate",
    "q",
    type=float,
    required=True,
    help="Poisson sampling probability per step, in (0, 1].",
)
_steps_option = click.option(
    "--steps", "-T", type=int, required=True, help="Number of steps (releases), >= 1."
)
_delta_option = click.option(
    "--delta", type=float, required=True, help="Target delta, in (0, 1)."
)
