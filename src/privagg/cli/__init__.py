"""The ``privagg`` command line: DP accounting, key generation, file inspection, benchmarks.

Commands (``privagg COMMAND --help`` for each):

* ``epsilon``: the epsilon of a Poisson-subsampled Gaussian mechanism (DP-SGD).
* ``sigma``: the smallest noise multiplier that meets a target epsilon.
* ``keygen``: key files for one deployment role set (CKKS, Paillier) or one SecAgg+
  client identity, secrets with mode 0600, never overwriting without ``--force``.
* ``directory``: build the SecAgg+ public-key directory from the clients' public
  identity records, or check one and print its fingerprint (what clients pin).
* ``inspect``: what an envelope or key file is (scheme, kind, fingerprints, sizes),
  without decrypting anything or printing a secret.
* ``bench``: a quick timing of one or every backend.

Every command takes ``--json`` (one JSON object on stdout, for scripts). A
:class:`~privagg.errors.PrivaggError` is reported as one line, ``privagg: Type:
message``, with exit status 2 when the input was wrong (a bad parameter, a malformed
file, an output that already exists) and 1 when the operation itself failed:

>>> from privagg.errors import ConfigurationError
>>> exit_code_for(ConfigurationError("delta must be in (0, 1)"))
2
"""

from __future__ import annotations

from collections.abc import Sequence

# Importing the command modules registers their commands on ``cli``.
from privagg.cli import _bench, _directory, _dp, _keygen  # noqa: F401
from privagg.cli._common import (
    BenchmarkFailedError,
    OutputExistsError,
    cli,
    exit_code_for,
)
from privagg.cli._inspect import describe_file

__all__ = [
    "BenchmarkFailedError",
    "OutputExistsError",
    "cli",
    "describe_file",
    "exit_code_for",
    "main",
]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI (the ``privagg`` console script) and return its exit status."""
    try:
        cli.main(
            args=None if argv is None else list(argv),
            prog_name="privagg",
            standalone_mode=True,
        )
    except SystemExit as exc:
        return _status(exc.code)
    return 0


def _status(code: object) -> int:
    if code is None:
        return 0
    return code if isinstance(code, int) else 1
