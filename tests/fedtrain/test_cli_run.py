"""``fedtrain run CONFIG.toml``, ``config --example``, ``resume``, ``report``,
``--quiet`` and ``--log-json``."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fedtrain.experiment
from fedtrain.cli import main
from fedtrain.config import RunConfig
from fedtrain.errors import ConfigError
from fedtrain.runfile import (
    MAX_RUN_FILE_BYTES,
    example_toml,
    load_run_file,
    parse_run_dict,
    to_toml,
)

TINY = """\
task = "seq_cls"
model = "minilm"
max_len = 32
backend = "plain"
device = "cpu"

[data]
train = "rt"
max_train = 48
max_eval = 32

[federation]
num_clients = 2
partition = "iid"

[lora]
r = 4
alpha = 8.0

[rounds]
rounds = {rounds}
local_steps = 2
batch_size = 8
"""


def _tiny(tmp_path: Path, rounds: int = 1, out: str | None = None) -> Path:
    text = TINY.format(rounds=rounds)
    if out is not None:
        text = f"out = {json.dumps(out)}\n" + text
    p = tmp_path / "run.toml"
    p.write_text(text)
    return p


# ----------------------------------------------------------------- run files


def test_example_template_parses_and_round_trips(tmp_path: Path) -> None:
    rf = parse_run_dict(tomllib.loads(example_toml()))
    assert rf.config.backend == "ckks" and rf.data.train == "rt"
    assert rf.federation.num_clients == 4 and rf.out == "runs/my_run"
    # every value spelled out, read back: the same run
    assert parse_run_dict(tomllib.loads(to_toml(rf))) == rf
    # the CLI writes the same template, and refuses to overwrite without --force
    dest = tmp_path / "my.toml"
    assert main(["config", "--example", "--out", str(dest)]) == 0
    assert dest.read_text() == example_toml()
    assert load_run_file(dest) == rf
    assert main(["config", "--example", "--out", str(dest)]) == 2
    assert main(["config", "--example", "--out", str(dest), "--force"]) == 0


def test_example_printed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--example"]) == 0
    assert capsys.readouterr().out == example_toml()


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        (
            {"rounds": {"optimizer": "adam"}},
            'rounds.optimizer: \'adam\' is not allowed; allowed values: "adamw", "sgd"',
        ),
        ({"rounds": {"lrr": 0.1}}, "unknown key rounds.lrr"),
        ({"rounds": {"batch_size": "16"}}, "rounds.batch_size: expected an integer"),
        ({"rounds": {"batch_size": True}}, "rounds.batch_size: expected an integer"),
        ({"rounds": {"lr": "fast"}}, "rounds.lr: expected a number"),
        ({"rounds": {"rounds": 0}}, "rounds must be a positive int"),
        ({"rounds": 3}, "rounds: expected a table"),
        (
            {"privacy": {"level": "user"}},
            'privacy.level: \'user\' is not allowed; allowed values: "none", "record", "client"',
        ),
        ({"privacy": {"delta": 2.0}}, "delta must be in (0, 1)"),
        ({"privacy": {"target_epsilon": float("inf")}}, "finite"),
        (
            {"lora": {"mode": "fedsa"}},
            'allowed values: "ffa", "fedit", "flora", "alternating"',
        ),
        (
            {"lora": {"target_modules": "query"}},
            "lora.target_modules: expected an array",
        ),
        (
            {"lora": {"target_modules": ["query", 3]}},
            "lora.target_modules[1]: expected a string",
        ),
        (
            {"lora": {"client_ranks": {"a": "x"}}},
            "lora.client_ranks.a: expected an integer",
        ),
        (
            {"federation": {"partition": "random"}},
            "federation.partition: 'random' is not allowed",
        ),
        ({"federation": {"clients": 4}}, "unknown key federation.clients"),
        ({"federation": {"num_clients": 0}}, "num_clients must be >= 1"),
        ({"data": {"train": ""}}, "data.train must name a data source"),
        ({"data": {"trian": "rt"}}, "unknown key data.trian"),
        ({"data": {"max_train": 0}}, "data.max_train must be >= 1"),
        ({"task": "summarise"}, "task: 'summarise' is not allowed"),
        ({"modle": "x"}, "unknown key modle at the top level"),
        ({"out": 3}, "out: expected a folder path"),
        (
            {"rounds": {"server_betas": [0.9]}},
            "rounds.server_betas: expected an array of 2 values",
        ),
        (
            {"lora": {"mode": "flora"}, "privacy": {"level": "client"}},
            "flora with client-level DP is refused",
        ),
    ],
)
def test_invalid_run_files_name_the_key(doc: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_run_dict(doc)
    assert needle in str(ei.value)


def test_none_unsets_optional_and_epochs_replace_steps() -> None:
    rf = parse_run_dict(
        {"rounds": {"local_epochs": 0.5}, "privacy": {"target_epsilon": "none"}}
    )
    assert rf.config.rounds.local_steps is None
    assert rf.config.rounds.local_epochs == 0.5
    assert rf.config.privacy.target_epsilon is None


def test_run_file_loads_its_data_sections(tmp_path: Path) -> None:
    """``RunFile.load_data`` (what ``fedtrain run`` and both Flower apps call) reads
    ``data.train`` and ``data.eval`` and draws the subsets with the federation seed."""
    train, ev = tmp_path / "train.csv", tmp_path / "eval.csv"
    train.write_text(
        "text,label\n"
        + "".join(f"t{i},{'pos' if i % 2 else 'neg'}\n" for i in range(9))
    )
    ev.write_text("text,label\ne0,neg\ne1,pos\ne2,neg\n")
    rf = parse_run_dict(
        {
            "data": {"train": str(train), "eval": str(ev), "max_train": 5},
            "federation": {"seed": 3},
        }
    )
    got_train, got_eval = rf.load_data()
    assert [e["text"] for e in got_eval.examples] == ["e0", "e1", "e2"]
    assert len(got_train.examples) == 5
    again, _ = rf.load_data()
    assert again.examples == got_train.examples
    other, _ = parse_run_dict(
        {
            "data": {"train": str(train), "eval": str(ev), "max_train": 5},
            "federation": {"seed": 4},
        }
    ).load_data()
    assert other.examples != got_train.examples  # the seed draws the subset


def test_run_file_read_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read run file"):
        load_run_file(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_run_file(bad)
    bad.write_bytes(b'task = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_run_file(bad)
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (MAX_RUN_FILE_BYTES + 1))
    with pytest.raises(ConfigError, match="larger than"):
        load_run_file(big)


_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
_value = st.recursive(
    _scalar,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
_keys = st.sampled_from(
    [
        "task",
        "model",
        "max_len",
        "backend",
        "device",
        "seed",
        "out",
        "data",
        "federation",
        "lora",
        "rounds",
        "privacy",
        "backend_options",
        "x",
    ]
)
_sub = st.sampled_from(
    [
        "r",
        "mode",
        "rounds",
        "lr",
        "level",
        "clip",
        "train",
        "num_clients",
        "partition",
        "target_modules",
        "server_betas",
        "client_ranks",
        "y",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        _keys,
        _value | st.dictionaries(_sub, _value, max_size=5),
        max_size=6,
    )
)
def test_fuzz_run_dict_only_config_errors(doc: dict[str, Any]) -> None:
    """Any document: a RunFile or a ConfigError, never another exception."""
    try:
        rf = parse_run_dict(doc)
    except ConfigError:
        return
    assert isinstance(rf.config, RunConfig)
    assert parse_run_dict(tomllib.loads(to_toml(rf))) == rf


# ----------------------------------------------------------------- run / resume


@pytest.mark.e2e
def test_run_log_json_then_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _tiny(tmp_path, out=str(tmp_path / "a"))
    assert main(["run", str(cfg), "--log-json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    events = [json.loads(line) for line in lines]  # every line is JSON
    assert [e["event"] for e in events] == ["round", "summary"]
    assert events[0]["round"] == 1 and events[0]["num_contributors"] == 2
    assert "contributors" not in events[0]  # counts only, no client identities
    assert events[1]["line"].startswith("final: accuracy ")
    run_a = tmp_path / "a"
    assert (run_a / "report.json").exists() and (run_a / "adapter").is_dir()
    # the run folder holds the effective run file and the command for `resume`
    saved = load_run_file(run_a / "run.toml")
    assert saved.config == load_run_file(cfg).config
    cmd = json.loads((run_a / "command.json").read_text())
    assert cmd["argv"][0] == "run"

    # --quiet: nothing on stdout; --out overrides the file's out
    assert main(["run", str(cfg), "--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert capsys.readouterr().out == ""

    # report: both runs side by side, plots re-rendered, compare files written
    (run_a / "metric.png").unlink()
    cmp_dir = tmp_path / "cmp"
    rc = main(["report", str(run_a), str(tmp_path / "b"), "--out", str(cmp_dir)])
    assert rc == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["run", "backend", "mode", "privacy"]
    assert [r.split()[0] for r in table[2:]] == ["a", "b"]
    assert (run_a / "metric.png").stat().st_size > 1000
    assert (cmp_dir / "compare.png").stat().st_size > 1000
    rows = json.loads((cmp_dir / "compare.json").read_text())["runs"]
    assert [r["run"] for r in rows] == ["a", "b"]
    assert rows[0]["backend"] == "plain" and rows[0]["metric"] == "accuracy"
    assert rows[0]["above_baseline"] == pytest.approx(
        rows[0]["final"] - rows[0]["baseline"]
    )
    assert main(["report", str(run_a), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["run"] == "a"


def test_report_refuses_non_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "cannot read" in capsys.readouterr().err
    (tmp_path / "report.json").write_text('{"main_metric": "accuracy"}')
    assert main(["report", str(tmp_path)]) == 2
    assert "not a fedtrain report" in capsys.readouterr().err


def test_run_errors_name_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "r.toml"
    p.write_text('[rounds]\noptimizer = "adam"\n[data]\ntrain = "rt"\n')
    assert main(["run", str(p), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "rounds.optimizer" in err and '"adamw", "sgd"' in err
    p.write_text('[data]\ntrain = "rt"\n')
    assert main(["run", str(p), "--log-json"]) == 2  # no out anywhere
    out = capsys.readouterr().out.strip()
    ev = json.loads(out)
    assert ev["event"] == "error" and "--out" in ev["message"]


@pytest.mark.e2e
def test_resume_continues_a_crashed_run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    real = fedtrain.experiment.run_experiment

    def crash_after_round_1(*a: Any, **kw: Any) -> Any:
        def on_round(rec: Any) -> None:
            if rec.round == 1:
                raise KeyboardInterrupt  # the machine went away after round 1

        return real(*a, **{**kw, "on_round": on_round})

    _tiny(tmp_path, rounds=2)
    monkeypatch.setattr(fedtrain.experiment, "run_experiment", crash_after_round_1)
    # relative --out, run from the config's folder
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        main(["run", "run.toml", "--out", "runs/x", "--quiet"])
    monkeypatch.setattr(fedtrain.experiment, "run_experiment", real)
    # resume from another working directory: the saved command knows the paths
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    assert main(["resume", str(tmp_path / "runs" / "x"), "--log-json"]) == 0
    assert Path.cwd() == other
    events = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [e["event"] for e in events] == ["round", "summary"]
    assert events[0]["round"] == 2  # round 1 was not run again
    rep = json.loads((tmp_path / "runs" / "x" / "report.json").read_text())
    assert rep["resumed_from_round"] == 1 and len(rep["rounds"]) == 2


def test_resume_refuses_non_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["resume", str(tmp_path)]) == 2
    assert "not a fedtrain run folder" in capsys.readouterr().err
    (tmp_path / "command.json").write_text('{"argv": ["rm", "-rf"]}')
    assert main(["resume", str(tmp_path)]) == 2
    assert "not a fedtrain command file" in capsys.readouterr().err


@pytest.mark.e2e
def test_resume_a_train_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "t"
    argv = [
        "train",
        "--task",
        "seq_cls",
        "--data",
        "rt",
        "--max-train",
        "48",
        "--max-eval",
        "32",
        "--clients",
        "2",
        "--rounds",
        "1",
        "--local-steps",
        "1",
        "--batch-size",
        "8",
        "--max-len",
        "32",
        "--backend",
        "plain",
        "--partition",
        "iid",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    cmd = json.loads((out / "command.json").read_text())
    assert "--no-progress" not in cmd["argv"] and cmd["argv"][0] == "train"
    assert cmd["argv"][-2:] == ["--out", str(out.resolve())]
    capsys.readouterr()
    # all rounds done: resume reports the finished run without training again
    assert main(["resume", str(out), "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    rep = json.loads((out / "report.json").read_text())
    assert rep["resumed_from_round"] == 1 and len(rep["rounds"]) == 1
    assert os.path.isdir(out / "adapter")


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=30))
def test_toml_strings_round_trip(text: str) -> None:
    """Any string a run file holds is written back readable (astral characters, DEL,
    control characters)."""
    from fedtrain.runfile import _toml_string

    assert tomllib.loads("k = " + _toml_string(text))["k"] == text
    rf = parse_run_dict({"model": text or "m", "data": {"train": text or "rt"}})
    assert parse_run_dict(tomllib.loads(to_toml(rf))) == rf
