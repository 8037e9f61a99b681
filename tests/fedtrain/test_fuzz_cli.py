"""Fuzzing the ``fedtrain`` command line: every subcommand's flags (issue #13).

Each input is an argument vector run in-process through ``fedtrain.cli.main`` (the
argparse parser and the configuration it builds: ``RunConfig``, the run file, the
saved command of ``resume``), made from a valid vector of ``demo``, ``train``, ``run``,
``config``, ``resume`` or ``report`` by :func:`tests.fuzz_argv.mutate_argv`.
``PRIVAGG_FUZZ_EXAMPLES`` x ``PRIVAGG_FUZZ_BATCH`` inputs in all (100,000 under
``make hardening``). The run files themselves are fuzzed by ``test_fuzz_config.py``.

Contract for every input: ``main`` returns 0, 2 (invalid input, reported on stderr) or
3, or argparse exits with status 2 and a usage message (0 for ``--help``); nothing else
escapes. Once a vector is fully validated, the training run is not started: a stand-in
for the experiment records that it was reached. Data loading runs for real once per
distinct source and subset and is then reused; torch's thread count is left alone.
Everything is written under a temporary working directory.
"""

from __future__ import annotations

import contextlib
import io
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.fuzz_argv import fuzz_batch
from tests.hardening_counts import BATCH, count, fuzz_settings

from fedtrain.cli import main

pytestmark = pytest.mark.slow


class _ReachedError(Exception):
    """The stand-in experiment was called: the vector passed every check."""


VALID: list[list[str]] = [
    [
        "train",
        "--task",
        "seq_cls",
        "--data",
        "tiny.csv",
        "--out",
        "runs/t1",
        "--rounds",
        "2",
        "--clients",
        "2",
        "--privacy",
        "record",
        "--no-progress",
    ],
    [
        "train",
        "--task",
        "seq_cls",
        "--data",
        "tiny.csv",
        "--out",
        "runs/t2",
        "--backend",
        "plain",
        "--sampling",
        "poisson",
        "--sample-rate",
        "0.5",
        "--server-opt",
        "fedadam",
        "--local-epochs",
        "1.5",
        "--quiet",
    ],
    ["demo", "--quick", "--out", "runs/d1", "--backend", "plain", "--log-json"],
    ["run", "run.toml", "--out", "runs/r1", "--no-resume"],
    ["config", "--example", "--out", "ex.toml", "--force"],
    ["resume", "runs/t1", "--quiet"],
    ["report", "nodir", "--json"],
]
SUCCEED = [v for v in VALID if v[0] != "report"]  # report: no report.json there
COMMANDS = ["demo", "train", "run", "config", "resume", "report"]
OPTIONS = sorted(
    {
        "--out",
        "--rounds",
        "--clients",
        "--local-steps",
        "--batch-size",
        "--lr",
        "--head-lr",
        "--optimizer",
        "--max-len",
        "--max-train",
        "--max-eval",
        "--mode",
        "--pooling",
        "--head-steps",
        "--privacy",
        "--noise-multiplier",
        "--clip",
        "--head-clip",
        "--delta",
        "--target-epsilon",
        "--min-clients",
        "--privacy-unit",
        "--backend",
        "--dropout",
        "--device",
        "--seed",
        "--no-resume",
        "--report-per-client",
        "--no-progress",
        "--quiet",
        "--log-json",
        "--quick",
        "--task",
        "--data",
        "--eval-data",
        "--model",
        "--partition",
        "--alpha",
        "--rank",
        "--target-modules",
        "--server-opt",
        "--server-lr",
        "--sampling",
        "--sample-rate",
        "--local-epochs",
        "--example",
        "--force",
        "--json",
    }
)
VALUES = [
    "seq_cls",
    "token_cls",
    "causal_lm",
    "tiny.csv",
    "run.toml",
    "ex.toml",
    "missing.csv",
    "rt",
    "runs/t1",
    "runs/x",
    "plain",
    "secagg",
    "ckks",
    "record",
    "client",
    "none",
    "fedavg",
    "poisson",
    "cpu",
    "flora",
    "alternating",
    "iid",
    "key",
    "query,value",
]


def _options() -> list[str]:
    """Every flag the parser knows (so the list above cannot go stale)."""
    from fedtrain.cli import build_parser

    found: set[str] = set()
    ap = build_parser()
    for action in ap._subparsers._group_actions:  # type: ignore[union-attr]
        for sub in action.choices.values():  # type: ignore[union-attr]
            for a in sub._actions:
                found.update(s for s in a.option_strings if s.startswith("--"))
    return sorted(found - {"--help"})


_DIR: dict[str, Path] = {}


def _workdir() -> Path:
    """A working directory two levels inside a temporary one, with a tiny data file and
    a run file that uses it."""
    if "d" not in _DIR:
        from fedtrain.runfile import example_toml

        root = Path(tempfile.mkdtemp(prefix="fedtrain-cli-fuzz-"))
        work = root / "a" / "b"
        work.mkdir(parents=True)
        rows = ["text,label"] + [
            f"review number {i} was {'good' if i % 2 else 'bad'},{i % 2}"
            for i in range(24)
        ]
        (work / "tiny.csv").write_text("\n".join(rows) + "\n")
        toml = example_toml().replace('train = "rt"', 'train = "tiny.csv"')
        assert 'train = "tiny.csv"' in toml
        (work / "run.toml").write_text(toml)
        _DIR["d"] = work
    return _DIR["d"]


def _memoized(real: Any) -> Any:
    cache: dict[Any, Any] = {}

    def call(*args: Any, **kwargs: Any) -> Any:
        key = (args, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = real(*args, **kwargs)  # raises (uncached) like the real one
        return cache[key]

    return call


def _reached(*_a: Any, **_k: Any) -> Any:
    raise _ReachedError


@contextlib.contextmanager
def _stand_ins() -> Iterator[None]:
    import fedtrain.cli as cli
    import fedtrain.experiment as experiment

    with (
        mock.patch.object(cli, "_run_experiment", _reached),
        mock.patch.object(cli, "_threads", lambda: None),
        mock.patch.object(
            experiment, "load_task_data", _memoized(experiment.load_task_data)
        ),
    ):
        yield


def _escape(argv: list[str]) -> str | None:
    """None if ``argv`` ends as documented, else what escaped."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc: Any = main(argv)
    except _ReachedError:
        return None
    except SystemExit as exc:  # argparse: usage error (2) or --help (0)
        if exc.code == 0 or (exc.code == 2 and err.getvalue().strip()):
            return None
        return f"SystemExit({exc.code!r})"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc!s:.160}"
    if rc == 0 or (rc in (2, 3) and (err.getvalue() + out.getvalue()).strip()):
        return None
    return f"exit status {rc!r}"


_SANE: list[bool] = []


def _sane() -> None:
    """The valid vectors reach the experiment (or succeed): the fuzzing is not vacuous."""
    if not _SANE:
        assert set(OPTIONS) == set(_options()), set(OPTIONS) ^ set(_options())
        for argv in SUCCEED:
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    rc = main(argv)
                except _ReachedError:
                    rc = 0
            assert rc == 0, (argv, err.getvalue())
        _SANE.append(True)


@fuzz_settings()
@given(seed=st.integers(0, 2**64 - 1))
def test_fuzz_fedtrain_cli_options(seed: int) -> None:
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
        "fedtrain CLI (every subcommand's flags)",
        inputs=BATCH,
        escapes=len(escapes),
    )
    assert not escapes, escapes[:3]


# -- the escapes this fuzzing found (issue #13), each fixed and pinned by a test --------
@pytest.mark.parametrize("target", ["adir", "missing-dir/ex.toml"])
def test_fuzz_finding_config_out_unwritable(
    tmp_path: Path, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by the fuzzer: ``config --example --out DIR --force`` raised
    IsADirectoryError (a traceback); now one line on stderr and exit status 2."""
    (tmp_path / "adir").mkdir()
    out = tmp_path / target
    assert main(["config", "--example", "--out", str(out), "--force"]) == 2
    assert "cannot write" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["config", "--example", "--out", "9" * 400],
        ["train", "--task", "seq_cls", "--data", "x.csv", "--out", "9" * 400],
        ["demo", "--quick", "--out", "9" * 400],
    ],
)
def test_fuzz_finding_out_name_too_long(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
) -> None:
    """Found by the fuzzer: an ``--out`` the file system refuses (ENAMETOOLONG) raised
    OSError out of ``main``; now one line on stderr and exit status 2."""
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert "File name too long" in capsys.readouterr().err


def test_fuzz_finding_out_not_utf8(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by the fuzzer: ``run`` with an ``--out`` that is not UTF-8 (Linux hands an
    undecodable name to Python as a lone surrogate) raised UnicodeEncodeError while
    writing the effective run file; now exit status 2 and one line."""
    from fedtrain.runfile import example_toml

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.csv").write_text(
        "text,label\n" + "".join(f"r {i},{i % 2}\n" for i in range(8))
    )
    (tmp_path / "run.toml").write_text(
        example_toml().replace('train = "rt"', 'train = "tiny.csv"')
    )
    with mock.patch("fedtrain.cli._run_experiment", _reached):
        assert main(["run", "run.toml", "--out", "\udcff", "--no-resume"]) == 2
    assert "UnicodeEncodeError" in capsys.readouterr().err


@pytest.mark.parametrize("size", ["-999999999999999999999999999999", "-5", "0"])
def test_fuzz_finding_negative_subset_size(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    size: str,
) -> None:
    """Found by the fuzzer: ``--max-train`` below 1 reached numpy's sampler
    (OverflowError / ValueError out of ``main``); now a DataError, exit status 2."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.csv").write_text(
        "text,label\n" + "".join(f"r {i},{i % 2}\n" for i in range(8))
    )
    argv = ["train", "--task", "seq_cls", "--data", "tiny.csv", "--out", "o"]
    with mock.patch("fedtrain.cli._run_experiment", _reached):
        assert main([*argv, f"--max-train={size}"]) == 2
    assert "subset size" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        [
            "train",
            "--task",
            "seq_cls",
            "--data",
            "d.csv",
            "--out",
            "o",
            "--batch-size=--",
        ],
        ["train", "--task", "seq_cls", "--data", "d.csv", "--out=--"],
        ["demo", "--out", "o", "--rounds=--"],
        ["config", "--example", "--out=--"],
    ],
)
def test_fuzz_finding_option_equals_double_dash(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
) -> None:
    """Found by the fuzzer at 72,350 inputs: argparse reads ``--batch-size=--`` as
    ``[]`` without calling the option's type, and the list reached the config check
    (TypeError out of ``main``); now a usage error, exit status 2, no run started."""
    monkeypatch.chdir(tmp_path)
    with mock.patch("fedtrain.cli._run_experiment", _reached):
        with pytest.raises(SystemExit) as exc:
            main(argv)
    assert exc.value.code == 2
    assert "expected one value" in capsys.readouterr().err


@pytest.mark.parametrize("seed", ["-999999999999999999999999999999", "-1", str(2**63)])
def test_fuzz_finding_seed_out_of_range(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    seed: str,
) -> None:
    """Found by the fuzzer at full strength (84,700 inputs): ``demo --seed=-9...9``
    reached numpy's seeding (ValueError out of ``main``); a seed outside [0, 2**63)
    is now a ConfigError from ``RunConfig``, exit status 2, no run started."""
    monkeypatch.chdir(tmp_path)
    with mock.patch("fedtrain.cli._run_experiment", _reached):
        assert main(["demo", "--quick", f"--seed={seed}", "--out", "d1"]) == 2
    assert "seed must be in [0, 2**63)" in capsys.readouterr().err


def test_run_config_seed_must_be_a_64_bit_non_negative_int() -> None:
    from fedtrain.config import RunConfig
    from fedtrain.errors import ConfigError

    for bad in (-1, 2**63, True, 1.5, "3"):
        with pytest.raises(ConfigError, match="seed"):
            RunConfig(seed=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="test_seed"):
        RunConfig(test_seed=-2)
    assert RunConfig(seed=2**63 - 1, test_seed=0).seed == 2**63 - 1
