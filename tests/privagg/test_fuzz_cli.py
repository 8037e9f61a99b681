"""Fuzzing the ``privagg`` command line: every command's options and arguments (issue #13).

Each input is an argument vector run in-process through the click entry point
(``CliRunner``, no subprocess), made from a valid vector of one of the commands
(``epsilon``, ``sigma``, ``keygen`` for each backend, ``inspect``, ``bench``,
``directory``, the group's ``--version``) by :func:`tests.fuzz_argv.mutate_argv`.
``PRIVAGG_FUZZ_EXAMPLES`` x ``PRIVAGG_FUZZ_BATCH`` inputs in all (100,000 under ``make hardening``).

Contract for every input: exit 0; or a usage error (exit 2 with a message); or a
privagg / OS error reported as one ``privagg: Type: message`` line (exit 2 for bad
input, 1 for a failed operation). A traceback (``result.exception`` that is not a
``SystemExit``) or any other exit status is an escape.

So that 100,000 inputs fit in minutes, what runs *after* the options are validated is
made cheap, never skipped: the accountants' composition is a stand-in with the same
validation (``make_accountant`` checks the name, ``compose`` the count, ``epsilon`` the
delta); key generation runs for real once per distinct option set and is then reused;
``bench`` times builtin rounds of at most 8 values (the checkout's scripts are not run).
The real accountants at the extreme values this fuzzing favours, where dp_accounting
raised ``OverflowError`` / ``ValueError`` / ``MemoryError`` through the CLI, are pinned
by the ``test_fuzz_finding_*`` tests below. Key files are written under a temporary
working directory; the only absolute paths used cannot be created.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from privagg.cli import cli
from tests.fuzz_argv import fuzz_batch
from tests.hardening_counts import BATCH, count, fuzz_settings

pytestmark = pytest.mark.slow

_PW_ENV = "PRIVAGG_FUZZ_CLI_PASSWORD"

VALID: list[list[str]] = [
    ["epsilon", "--sigma", "1.1", "--q", "0.01", "--steps", "1000", "--delta", "1e-5"],
    [
        "epsilon",
        "--noise-multiplier",
        "2",
        "--sample-rate",
        "1",
        "-T",
        "3",
        "--delta",
        "1e-6",
        "--accountant",
        "rdp",
        "--json",
    ],
    ["sigma", "--epsilon", "3", "--q", "0.01", "--steps", "100", "--delta", "1e-5"],
    [
        "sigma",
        "--epsilon",
        "0.5",
        "--q",
        "0.5",
        "--steps",
        "2",
        "--delta",
        "1e-5",
        "--accountant",
        "rdp",
        "--json",
    ],
    ["keygen", "--backend", "secagg", "--party-id", "c1", "keys", "--force"],
    ["keygen", "--backend", "ckks", "--preset", "test-fast", "keys", "--force"],
    [
        "keygen",
        "--backend",
        "paillier",
        "--key-bits",
        "2048",
        "keys",
        "--force",
        "--password-env",
        _PW_ENV,
        "--json",
    ],
    ["inspect", "envelope.bin", "--json"],
    ["inspect", "ckks-public.key"],
    [
        "bench",
        "--backend",
        "plain",
        "--source",
        "builtin",
        "--values",
        "8",
        "--clients",
        "2",
        "--json",
    ],
    ["bench", "--backend", "secagg", "--backend", "plain", "--values", "4"],
    [
        "directory",
        "dir.json",
        "secagg-identity-c1.pub",
        "secagg-identity-c2.pub",
        "--force",
        "--json",
    ],
    ["directory", "dir.json"],  # check an existing directory
    ["--version"],
]
COMMANDS = ["epsilon", "sigma", "keygen", "inspect", "bench", "directory"]
OPTIONS = sorted(
    {
        "--sigma",
        "--noise-multiplier",
        "--q",
        "--sample-rate",
        "--steps",
        "-T",
        "--delta",
        "--accountant",
        "--json",
        "--epsilon",
        "--backend",
        "--preset",
        "--key-bits",
        "--party-id",
        "--password-env",
        "--force",
        "--source",
        "--clients",
        "--values",
        "--version",
    }
)
VALUES = [
    "pld",
    "rdp",
    "ckks",
    "paillier",
    "secagg",
    "plain",
    "additive",
    "secure",
    "test-fast",
    "2048",
    "3072",
    "builtin",
    "script",
    "auto",
    "keys",
    "keys/sub",
    "envelope.bin",
    "ckks-public.key",
    "junk.bin",
    "empty.bin",
    "adir",
    "missing.bin",
    "../..",
    _PW_ENV,
    "PRIVAGG_FUZZ_CLI_UNSET",
    "c1",
    "c1/../x",
    "/dev/null",
    "dir.json",
    "secagg-identity-c1.pub",
    "secagg-identity-c1.key",
]


# -- cheap stand-ins for what runs after validation -------------------------------------
class _FakeAccountant:
    """Validates like an accountant; epsilon = steps * q / sigma (monotone in sigma)."""

    def __init__(self) -> None:
        self._eps = 0.0

    def compose(self, event: Any, count: int = 1) -> _FakeAccountant:
        from privagg.dp.accountants import _check_count

        _check_count(count)
        z = float(event.event.noise_multiplier)
        try:
            self._eps += count * float(event.sampling_probability) / z
        except OverflowError:  # 10**400 steps: the stand-in's own arithmetic
            self._eps = math.inf
        return self

    def epsilon(self, delta: float) -> float:
        from privagg.dp.accountants import _check_delta

        _check_delta(delta)
        return self._eps


def _fake_make_accountant(real: Any) -> Any:
    def make(name: str, **kwargs: Any) -> _FakeAccountant:
        real(name, **kwargs)  # the real name check
        return _FakeAccountant()

    return make


def _memoized(real: Any, key: Any) -> Any:
    cache: dict[Any, Any] = {}

    def call(*args: Any) -> Any:
        k = key(*args)
        if k not in cache:
            cache[k] = real(*args)  # raises (uncached) when the real call does
        return cache[k]

    return call


@contextlib.contextmanager
def _stand_ins() -> Iterator[None]:
    import privagg.cli._bench as bench
    import privagg.cli._keygen as keygen
    import privagg.dp.calibrate as calibrate

    real_builtin = bench._run_builtin
    with (
        mock.patch.object(
            calibrate,
            "make_accountant",
            _fake_make_accountant(calibrate.make_accountant),
        ),
        mock.patch.object(
            keygen,
            "_make_keys",
            _memoized(
                keygen._make_keys,
                lambda b, preset, bits, party, prot: (
                    b,
                    preset,
                    bits,
                    party,
                    type(prot).__name__,
                ),
            ),
        ),
        mock.patch.object(bench, "_benchmarks_dir", lambda: None),
        mock.patch.object(
            bench,
            "_run_builtin",
            _memoized(
                lambda name, clients, values: real_builtin(
                    name, min(clients, 3), min(values, 8)
                ),
                lambda name, clients, values: name,
            ),
        ),
        mock.patch.dict(os.environ, {_PW_ENV: "fuzz-password"}),
    ):
        yield


_DIR: dict[str, Path] = {}


def _workdir() -> Path:
    """A working directory two levels inside a temporary one (so ``../..`` stays in it),
    with the files the valid vectors name."""
    if "d" not in _DIR:
        import numpy as np

        import privagg

        root = Path(tempfile.mkdtemp(prefix="privagg-cli-fuzz-"))
        work = root / "a" / "b"
        work.mkdir(parents=True)
        session = privagg.get_backend("plain").setup(
            privagg.Layout.from_arrays({"w": np.zeros(3)}), max_clients=2
        )
        req = session.aggregator(1, ["c1", "c2"]).start()["c1"]
        (work / "envelope.bin").write_bytes(req)
        (work / "junk.bin").write_bytes(b"PVAG" + bytes(range(256)) * 3)
        (work / "empty.bin").write_bytes(b"")
        (work / "adir").mkdir()
        r = CliRunner().invoke(
            cli, ["keygen", "--backend", "ckks", "--preset", "test-fast", str(work)]
        )
        assert r.exit_code == 0, r.output
        for party in ("c1", "c2"):
            r = CliRunner().invoke(
                cli, ["keygen", "--backend", "secagg", "--party-id", party, str(work)]
            )
            assert r.exit_code == 0, r.output
        _DIR["d"] = work
    return _DIR["d"]


def _escape(argv: list[str]) -> str | None:
    """None if ``argv`` ends as documented, else what escaped."""
    result = CliRunner().invoke(cli, argv, catch_exceptions=True)
    exc = result.exception
    if exc is not None and not isinstance(exc, SystemExit):
        return f"{type(exc).__name__}: {exc!s:.160}"
    if result.exit_code not in (0, 1, 2):
        return f"exit status {result.exit_code}"
    if result.exit_code != 0 and not result.output.strip():
        return f"exit status {result.exit_code} without a message"
    return None


_SANE: list[bool] = []


def _sane() -> None:
    """The valid vectors succeed (with the stand-ins): the fuzzing is not vacuous."""
    if not _SANE:
        for argv in VALID:
            result = CliRunner().invoke(cli, argv)
            assert result.exit_code == 0, (argv, result.output, result.exception)
        _SANE.append(True)


@fuzz_settings()
@given(seed=st.integers(0, 2**64 - 1))
def test_fuzz_privagg_cli_options(seed: int) -> None:
    rnd = random.Random(seed)
    with _stand_ins(), contextlib.chdir(_workdir()):
        _sane()
        escapes = fuzz_batch(
            rnd,
            BATCH,
            VALID,
            _escape,
            options=OPTIONS,
            commands=COMMANDS,
            values=VALUES,
        )
    count(
        "fuzz",
        "privagg CLI (every command's options)",
        inputs=BATCH,
        escapes=len(escapes),
    )
    assert not escapes, escapes[:3]


# -- the escapes this fuzzing found (issue #13), each fixed and pinned by a test --------
@pytest.mark.parametrize(
    "args",
    [
        # dp_accounting's numerics: OverflowError / ValueError / MemoryError before
        ["epsilon", "--sigma", "1e300", "--accountant", "pld"],
        ["epsilon", "--sigma", "1e-300", "--accountant", "rdp"],
        ["epsilon", "--sigma", "1e300", "--accountant", "rdp"],  # was "not a Gaussian"
        ["epsilon", "--sigma", "1", "--q", "5e-324", "--accountant", "pld"],
        ["epsilon", "--sigma", "1", "--steps", "1000000000", "--accountant", "pld"],
        ["sigma", "--epsilon", "1e300", "--accountant", "pld"],
        ["sigma", "--epsilon", "1", "--steps", "1000000000", "--accountant", "pld"],
        ["epsilon", "--sigma", "1.1", "--steps", "9" * 400, "--accountant", "rdp"],
        ["epsilon", "--sigma", "1.1", "--steps", "9" * 400, "--accountant", "pld"],
    ],
)
def test_fuzz_finding_accountant_numeric_range_is_a_typed_error(
    args: list[str],
) -> None:
    """Found fuzzing the CLI (issue #13): extreme but well-formed parameters made the
    accountants raise OverflowError, ValueError or MemoryError (a traceback from the
    CLI); now a ConfigurationError, reported as one line with exit status 2."""
    defaults = {"--q": "1", "--steps": "1", "--delta": "1e-5"}
    full = list(args)
    for opt, val in defaults.items():
        if opt not in full:
            full += [opt, val]
    result = CliRunner().invoke(cli, full)
    assert not (result.exception and not isinstance(result.exception, SystemExit)), (
        result.exception
    )
    assert result.exit_code == 2, result.output
    assert "ConfigurationError" in result.output
    assert "numeric range" in result.output


def test_fuzz_finding_library_accountants_numeric_range() -> None:
    """The same, through the library: typed, and the accountant is left unchanged."""
    from privagg.dp import GaussianEvent, PoissonSampledEvent
    from privagg.dp.accountants import PldAccountant, RdpAccountant
    from privagg.errors import ConfigurationError

    rdp = RdpAccountant().compose(GaussianEvent(2.0))
    before = rdp.epsilon(1e-5)
    for z in (1e-300, 1e300):
        with pytest.raises(ConfigurationError, match="numeric range"):
            rdp.compose(PoissonSampledEvent(0.5, GaussianEvent(z)))
    assert rdp.epsilon(1e-5) == before and len(rdp.ledger) == 1
    pld = PldAccountant()
    with pytest.raises(ConfigurationError, match="numeric range"):
        pld.compose(PoissonSampledEvent(1.0, GaussianEvent(1e300)))
    assert pld.ledger == () and pld.epsilon(1e-5) == 0.0


def test_fuzz_finding_keygen_out_dir_not_utf8(tmp_path: Path) -> None:
    """Found by the fuzzer: ``keygen`` into a directory whose name is not UTF-8 (Linux
    hands it to Python as a lone surrogate) wrote the keys, then printing the path
    raised UnicodeEncodeError; the path is now printed escaped."""
    with contextlib.chdir(tmp_path):
        result = CliRunner().invoke(
            cli, ["keygen", "--backend", "secagg", "--party-id", "c1", "\udcff"]
        )
    assert result.exit_code == 0, result.exception
    assert "\\udcff" in result.output
