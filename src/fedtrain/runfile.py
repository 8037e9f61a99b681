"""Run files: a whole run (configuration, data, federation) in one TOML file.

``fedtrain run CONFIG.toml`` reads one; ``fedtrain config --example`` writes a
commented template. The file's top level holds :class:`~fedtrain.config.RunConfig`'s
scalar fields and ``out``; its tables are ``[data]``, ``[federation]`` and the
``RunConfig`` sections ``[lora]``, ``[rounds]``, ``[privacy]`` and
``[backend_options]``::

    task = "seq_cls"
    model = "minilm"
    backend = "ckks"
    out = "runs/my_run"

    [data]
    train = "rt"

    [rounds]
    rounds = 3

Every key is checked against the dataclass it fills: an unknown key, a value of the
wrong type or one outside a fixed set of choices is a :class:`ConfigError` that names
the key (``rounds.optimizer``) and what is allowed. TOML has no null: leave a key out
for its default, or write ``"none"`` to unset an optional one (for example
``local_steps = "none"`` with ``local_epochs`` set).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from fedtrain import experiment
from fedtrain.config import LoraSettings, PrivacyConfig, RoundConfig, RunConfig
from fedtrain.data import RawDataset
from fedtrain.errors import ConfigError
from fedtrain.experiment import ExperimentSpec

__all__ = [
    "DataSpec",
    "RunFile",
    "example_toml",
    "load_run_file",
    "parse_run_dict",
    "to_toml",
]

MAX_RUN_FILE_BYTES = 1 << 20
"""A run file larger than this is refused before it is parsed."""


@dataclass(frozen=True)
class DataSpec:
    """Where a run's data comes from (see :func:`fedtrain.experiment.load_task_data`).

    Attributes:
        train: ``rt``, ``conll``, ``hf:NAME[:SPLIT]`` or a ``.csv``/``.jsonl``/CoNLL
            file path.
        eval: evaluation data in the same forms; None: a held-out part of ``train``
            (CoNLL: its test split).
        max_train: random subset size of the training data (None: all).
        max_eval: random subset size of the evaluation data (None: all).
    """

    train: str = "rt"
    eval: str | None = None
    max_train: int | None = None
    max_eval: int | None = None

    def __post_init__(self) -> None:
        if not self.train:
            raise ConfigError("data.train must name a data source")
        for k in ("max_train", "max_eval"):
            v = getattr(self, k)
            if v is not None and v < 1:
                raise ConfigError(f"data.{k} must be >= 1, got {v!r}")


@dataclass(frozen=True)
class RunFile:
    """The parsed run file.

    Attributes:
        config: the run configuration.
        data: the data sources.
        federation: how the data is split into clients.
        out: the run folder (None: given on the command line).
    """

    config: RunConfig
    data: DataSpec = field(default_factory=DataSpec)
    federation: ExperimentSpec = field(default_factory=ExperimentSpec)
    out: str | None = None

    def load_data(self) -> tuple[RawDataset, RawDataset]:
        """The run's training and evaluation data, as every runtime loads them
        (``fedtrain run``, the Flower ClientApp and ServerApp): :attr:`data` for the
        run's task, subsets drawn with the federation's seed.

        Raises:
            fedtrain.errors.DataError: a source that cannot be read.
        """
        return experiment.load_task_data(
            self.config.task,
            self.data.train,
            eval_data=self.data.eval,
            max_train=self.data.max_train,
            max_eval=self.data.max_eval,
            seed=self.federation.seed,
        )


_SECTIONS: dict[str, type[Any]] = {
    "lora": LoraSettings,
    "rounds": RoundConfig,
    "privacy": PrivacyConfig,
}
_PARTITIONS = ("iid", "dirichlet", "key")


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in get_args(tp))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return " | ".join(json.dumps(m.value) for m in tp)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return '"none"'
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return getattr(tp, "__name__", str(tp))


_INT_LIMIT = 1 << 63


def _short(value: Any) -> str:
    """``repr(value)``, shortened (a 400-digit integer is not a useful message)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against the annotation ``tp`` (and converted: list->tuple)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if type(None) in args and (
            value is None or (isinstance(value, str) and value.lower() == "none")
        ):
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as exc:
                errors.append(exc)
        if len({str(e) for e in errors}) == 1:  # one message (an enum and its strings)
            raise errors[0]
        raise ConfigError(
            f"{key}: {value!r} is not a valid value; expected {_type_name(tp)}"
        )
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        values = [m.value for m in tp]
        if value not in values or isinstance(value, bool):
            raise ConfigError(
                f"{key}: {value!r} is not allowed; allowed values: "
                + ", ".join(json.dumps(a) for a in values)
            )
        return tp(value)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed or isinstance(value, bool):
            raise ConfigError(
                f"{key}: {value!r} is not allowed; allowed values: "
                + ", ".join(json.dumps(a) for a in allowed)
            )
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {_short(value)}")
        if not -_INT_LIMIT <= value < _INT_LIMIT:
            raise ConfigError(f"{key}: {_short(value)} is out of range (|n| < 2**63)")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {_short(value)}")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond the float range
            raise ConfigError(
                f"{key}: {_short(value)} is out of the float range"
            ) from None
        if not math.isfinite(number):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected an array, got {value!r}")
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(
                _coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)
            )
        if len(value) != len(args):
            raise ConfigError(
                f"{key}: expected an array of {len(args)} values, got {value!r}"
            )
        return tuple(
            _coerce(v, a, f"{key}[{i}]")
            for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if origin in (Mapping, dict) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        kt, vt = get_args(tp) or (str, Any)
        return {
            _coerce(k, kt, f"{key}"): _coerce(v, vt, f"{key}.{k}")
            for k, v in value.items()
        }
    raise ConfigError(f"{key}: unsupported setting type {tp!r}")  # pragma: no cover


def _build(cls: type[Any], d: Any, prefix: str, skip: frozenset[str]) -> Any:
    """``cls(**d)`` with every key checked against ``cls``'s annotated fields."""
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where}: expected a table, got {d!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in skip]
    kwargs: dict[str, Any] = {}
    for k, v in d.items():
        if k not in names:
            raise ConfigError(
                f"unknown key {prefix}{k!s} in {where}; allowed keys: "
                + ", ".join(names)
            )
        kwargs[k] = _coerce(v, hints[k], f"{prefix}{k}")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    except (TypeError, ValueError) as exc:  # pragma: no cover - _coerce checks types
        raise ConfigError(f"{where}: {exc}") from exc


def parse_run_dict(d: Mapping[str, Any]) -> RunFile:
    """Validate a run file's parsed contents.

    Args:
        d: the TOML document as a dict.

    Returns:
        The run file.

    Raises:
        ConfigError: an unknown key, a wrong type or an invalid value; the message
            names the key and what is allowed.
    """
    if not isinstance(d, Mapping):
        raise ConfigError(f"a run file is a table, got {type(d).__name__}")
    top = dict(d)
    out = top.pop("out", None)
    if out is not None and (not isinstance(out, str) or not out):
        raise ConfigError(f"out: expected a folder path, got {out!r}")
    data = _build(DataSpec, top.pop("data", {}), "data.", frozenset())
    fed_d = top.pop("federation", {})
    federation = _build(ExperimentSpec, fed_d, "federation.", frozenset())
    if federation.partition not in _PARTITIONS:
        raise ConfigError(
            f"federation.partition: {federation.partition!r} is not allowed; "
            "allowed values: " + ", ".join(json.dumps(p) for p in _PARTITIONS)
        )
    if federation.num_clients < 1:
        raise ConfigError(
            f"federation.num_clients must be >= 1, got {federation.num_clients!r}"
        )
    if not (math.isfinite(federation.alpha) and federation.alpha > 0):
        raise ConfigError(f"federation.alpha must be > 0, got {federation.alpha!r}")
    sections = {}
    for name, cls in _SECTIONS.items():
        sec = top.pop(name, {})
        if not isinstance(sec, Mapping):
            raise ConfigError(f"{name}: expected a table [{name}], got {sec!r}")
        sec = dict(sec)
        if (
            name == "rounds"
            and sec.get("local_epochs") is not None
            and "local_steps" not in sec
        ):
            sec["local_steps"] = None  # epochs given: they decide the local work
        sections[name] = _build(cls, sec, f"{name}.", frozenset())
    hints = typing.get_type_hints(RunConfig)
    top_keys = [
        f.name for f in dataclasses.fields(RunConfig) if f.name not in _SECTIONS
    ]
    kwargs: dict[str, Any] = {}
    for k, v in top.items():
        if k not in top_keys:
            raise ConfigError(
                f"unknown key {k!s} at the top level; allowed keys: "
                + ", ".join(["out", *top_keys])
                + "; tables: [data], [federation], [lora], [rounds], [privacy], "
                "[backend_options]"
            )
        kwargs[k] = _coerce(v, hints[k], k)
    try:
        config = RunConfig(**sections, **kwargs)
    except ConfigError as exc:
        raise ConfigError(f"run configuration: {exc}") from exc
    for bk, bv in config.backend_options.items():
        try:  # what cannot be written back (no null in TOML) is refused now
            _toml_value(bv)
        except ConfigError:
            raise ConfigError(
                f"backend_options.{bk}: {bv!r} is not a TOML value"
            ) from None
    return RunFile(config=config, data=data, federation=federation, out=out)


def load_run_file(path: str | Path) -> RunFile:
    """Read and validate a TOML run file.

    Raises:
        ConfigError: unreadable, too large, not TOML, or invalid (see
            :func:`parse_run_dict`).
    """
    p = Path(path)
    try:
        with p.open("rb") as fh:
            raw = fh.read(MAX_RUN_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read run file {str(p)!r}: {exc.strerror}") from exc
    if len(raw) > MAX_RUN_FILE_BYTES:
        raise ConfigError(
            f"run file {str(p)!r} is larger than {MAX_RUN_FILE_BYTES} bytes"
        )
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"run file {str(p)!r} is not UTF-8 text") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"run file {str(p)!r} is not valid TOML: {exc}") from exc
    return parse_run_dict(doc)


# ------------------------------------------------------------------- writing


def _toml_string(v: str) -> str:
    """A TOML basic string: JSON's escapes, but characters outside the BMP written as
    themselves (JSON would write a surrogate pair, which TOML refuses) and DEL escaped.
    """
    return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return _toml_string(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise ConfigError(f"cannot write {v!r} to TOML")  # pragma: no cover


def _table(name: str | None, d: Mapping[str, Any]) -> list[str]:
    lines = [] if name is None else ["", f"[{name}]"]
    for k, v in d.items():
        if isinstance(v, Mapping):
            continue
        lines.append(f"{k} = " + ('"none"' if v is None else _toml_value(v)))
    return lines


def to_toml(run: RunFile) -> str:
    """The run file of ``run`` with every value spelled out (round-trips exactly)."""
    cfg = run.config.to_dict()
    lines = ["# fedtrain run file (every value spelled out)"]
    if run.out is not None:
        lines.append(f"out = {_toml_value(run.out)}")
    lines += _table(None, cfg)
    lines += _table("data", dataclasses.asdict(run.data))
    lines += _table("federation", dataclasses.asdict(run.federation))
    for name in _SECTIONS:
        lines += _table(name, cfg[name])
    bo = cfg.get("backend_options") or {}
    if bo:
        lines += ["", "[backend_options]"]
        # quoted keys: any string is a TOML key that way, the empty one included
        lines += [f"{_toml_string(k)} = {_toml_value(v)}" for k, v in bo.items()]
    return "\n".join(lines) + "\n"


_EXAMPLE = """\
# fedtrain run file: `fedtrain run THIS_FILE.toml`.
# Every key is optional except [data].train; a key left out takes its default.
# TOML has no null: write "none" to unset an optional value.

# The run folder: report.json, plots, peft adapter, checkpoint, privacy ledgers.
out = "runs/my_run"

task = "seq_cls"          # "seq_cls" | "token_cls" | "causal_lm"
model = "minilm"          # "minilm" | "smollm2" | a Hugging Face name | a local path | a .gguf file
max_len = 64              # tokens per example
backend = "ckks"          # "ckks" | "paillier" | "secagg" | "additive" | "plain" (no protection)
device = "auto"           # "auto" | "cpu" | "cuda"
seed = 0                  # non-secret randomness (model head init, data order)

[data]
train = "rt"              # "rt" | "conll" | "hf:NAME[:SPLIT]" | a .csv / .jsonl / CoNLL file
# eval = "path/to/eval.csv"   # default: held-out part of `train` (CoNLL: its test split)
max_train = 2000          # random subset of the training data ("none": all)
max_eval = 500

[federation]
num_clients = 4
partition = "dirichlet"   # "iid" | "dirichlet" | "key" (one client per key, e.g. per document)
alpha = 0.5               # Dirichlet concentration (label skew)
seed = 0

[lora]
r = 8
alpha = 16.0
mode = "ffa"              # "ffa" (exact, A frozen) | "fedit" (inexact) | "flora" | "alternating"
pooling = "auto"          # seq_cls: "auto" | "mean" | "cls" | "pooler"
# target_modules = ["query", "value"]   # default: chosen for the model family
head_steps = 0            # seq_cls: first N local steps train the head alone (LP-FT)

[rounds]
rounds = 3
local_steps = 20          # or local_epochs = 1.0 (then leave local_steps out)
batch_size = 16
lr = 0.002
optimizer = "adamw"       # "adamw" | "sgd"
sampling = "fraction"     # "fraction" | "poisson"
sample_rate = 1.0
server_opt = "fedavg"     # "fedavg" | "fedadam" | "fedyogi"
server_lr = 1.0
weighting = "examples"    # "examples" | "uniform"

[privacy]
level = "none"            # "none" | "record" (DP-SGD in each client) | "client"
noise_multiplier = 1.0
clip = 1.0
delta = 1e-5
# target_epsilon = 8.0    # the run stops before exceeding it
accountant = "pld"        # "pld" | "rdp"
"""


def example_toml() -> str:
    """A commented run-file template (it parses to a valid :class:`RunFile`)."""
    return _EXAMPLE
