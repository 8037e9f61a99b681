"""Fuzzing fedtrain's configuration loaders and state-file readers.

Parsers: ``RunConfig.from_dict``; the TOML run file (``fedtrain.runfile``); the Flower
node config (``ClientPolicy.from_node_config``) and run config (``RunSettings.from_run_config``,
``LoraRunSpec.from_run_config``, both through ``settings_from_config``);
``SessionSpec.from_json``; ``parse_shapes``; and the readers of files a crash or an
operator may have mangled: the privacy ledger, the release register and the checkpoint
``meta.json``.

Inputs are valid configurations mutated by a seeded mutator (values replaced by junk
of every JSON kind and by extreme numbers such as ``1e400``, ``nan``, ``10**400``;
keys deleted, added or renamed; sub-mappings replaced; JSON text cut, edited or nested
100,000 deep). ``PRIVAGG_FUZZ_EXAMPLES`` x ``PRIVAGG_FUZZ_BATCH`` inputs per parser.

Only the documented typed error may escape. A parser's ``known`` lists open bugs
(counted in the hardening table as escapes, each with a strict-xfail test); the
escapes found so far are fixed, each pinned by a ``test_fuzz_finding_*`` test below.
"""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.hardening_counts import BATCH, count, fuzz_settings

import privagg
from fedtrain.checkpoint import load_checkpoint
from fedtrain.config import LoraSettings, PrivacyConfig, RoundConfig, RunConfig
from fedtrain.errors import ConfigError, FedtrainError
from fedtrain.flower.errors import PolicyError, ReleaseRegisterError
from fedtrain.flower.material import SessionSpec
from fedtrain.flower.policy import ClientPolicy
from fedtrain.flower.release import ReleaseRegister
from fedtrain.flower.server_app import RunSettings
from fedtrain.flower.tasks import parse_shapes
from fedtrain.runfile import example_toml, load_run_file, parse_run_dict
from privagg.dp import GaussianEvent, PrivacyLedger

pytestmark = pytest.mark.slow


_WORDS = [
    "",
    "plain",
    "secagg",
    "ckks",
    "paillier",
    "additive",
    "ffa",
    "flora",
    "fedit",
    "alternating",
    "record",
    "client",
    "none",
    "pld",
    "rdp",
    "cpu",
    "cuda",
    "auto",
    "seq_cls",
    "token_cls",
    "causal_lm",
    "fedavg",
    "fedadam",
    "poisson",
    "fraction",
    "adamw",
    "sgd",
    "examples",
    "uniform",
    "mean",
    "cls",
    "..",
    "a/b",
    "nan",
    "inf",
    "-inf",
    "1e400",
    "0x10",
    " 3 ",
    "1_000",
    "true",
    "None",
    "\x00",
    "é",
    "{}",
    "[]",
]


def junk(rnd: random.Random, depth: int = 0) -> Any:
    """A value of any JSON kind, often extreme."""
    k = rnd.randrange(12 if depth < 3 else 9)
    if k == 0:
        return None
    if k == 1:
        return rnd.random() < 0.5
    if k == 2:
        return rnd.choice((0, 1, -1, 2, 7, 64, 2**31, 2**63, -(2**63), 10**400))
    if k == 3:
        return rnd.randrange(-1000, 1000)
    if k == 4:
        return rnd.choice(
            (math.nan, math.inf, -math.inf, 1e308, -0.0, 5e-324, 0.5, 1e-5, 3.0)
        )
    if k == 5:
        return rnd.uniform(-10, 10)
    if k in (6, 7):
        return rnd.choice(_WORDS)
    if k == 8:
        return "".join(chr(rnd.randrange(1, 0x3000)) for _ in range(rnd.randrange(9)))
    if k in (9, 10):
        return [junk(rnd, depth + 1) for _ in range(rnd.randrange(4))]
    return {rnd.choice(_WORDS): junk(rnd, depth + 1) for _ in range(rnd.randrange(4))}


def mutate_mapping(rnd: random.Random, valid: Mapping[str, Any]) -> dict[str, Any]:
    """A valid mapping with 1-4 edits (values, keys, sub-mappings)."""
    d: dict[str, Any] = json.loads(json.dumps(valid))
    for _ in range(rnd.choice((1, 1, 2, 3, 4))):
        target = d
        while True:  # walk down into a random sub-mapping, sometimes
            subs = [k for k, v in target.items() if isinstance(v, dict)]
            if not subs or rnd.random() < 0.4:
                break
            target = target[rnd.choice(subs)]
        keys = list(target)
        op = rnd.randrange(5)
        if keys and op <= 1:
            target[rnd.choice(keys)] = junk(rnd)
        elif keys and op == 2:
            del target[rnd.choice(keys)]
        elif op == 3:
            target[rnd.choice(_WORDS + keys)] = junk(rnd)
        elif keys:  # a valid value of another key (right kind, wrong place)
            a, b = rnd.choice(keys), rnd.choice(keys)
            target[a] = target[b]
    return d


def mutate_text(rnd: random.Random, text: str) -> str:
    """Valid JSON text mutated as text, as a mapping, or nested very deep."""
    k = rnd.randrange(6)
    if k == 0:
        n = rnd.choice((10, 1000, 100_000))
        return rnd.choice(("[", '{"a":', '[{"x":')) * n
    if k in (1, 2):
        try:
            base = json.loads(text)
        except ValueError:
            base = {}
        if isinstance(base, dict):
            return json.dumps(mutate_mapping(rnd, base))
        return json.dumps(junk(rnd))
    s = list(text)
    for _ in range(rnd.randrange(1, 4)):
        i = rnd.randrange(len(s) + 1)
        op = rnd.randrange(4)
        if op == 0:
            del s[i:]
        elif op == 1:
            s[i:i] = rnd.choice(
                ("1e400", "-", "NaN", "Infinity", '"', "}", ",", "9" * 50)
            )
        elif op == 2 and s:
            del s[i % len(s)]
        else:
            s[i:i] = chr(
                rnd.randrange(0x110000)
                if rnd.random() < 0.1
                else rnd.randrange(32, 127)
            )
    return "".join(s)


# -- parsers ---------------------------------------------------------------------------
def _run_configs() -> list[dict[str, Any]]:
    return [
        RunConfig().to_dict(),
        RunConfig(
            lora=LoraSettings(mode="flora", client_ranks={"a": 2, "b": 4}),
            privacy=PrivacyConfig(level="record", target_epsilon=3.0),
            rounds=RoundConfig(
                sampling="poisson", sample_rate=0.5, server_opt="fedavg"
            ),
            backend="secagg",
            backend_options={"bound": 1.0},
        ).to_dict(),
        RunConfig(
            privacy=PrivacyConfig(level="client", min_clients=2),
            rounds=RoundConfig(
                server_opt="fedadam", local_steps=None, local_epochs=1.5
            ),
        ).to_dict(),
    ]


_NODE = {
    "privagg-backends": "secagg,ckks",
    "privagg-max-clients": 100,
    "privagg-max-weight": 2.0,
    "privagg-min-sigma": 40,
    "privagg-min-corruption-rate": 0.1,
    "privagg-backend-options": "",
    "privagg-layout-fingerprint": "ab" * 32,
    "privagg-ckks-presets": "secure",
    "privagg-min-paillier-key-bits": 2048,
}
_RUN = {
    "backend": "secagg",
    "backend-options": json.dumps({"bound": 1.0}),
    "task": "synthetic",
    "shapes": "w:float32:3x4,b:float64:4",
    "rounds": 2,
    "min-nodes": 2,
    "node-wait": 5.0,
    "holder": "node",
    "holder-key": "ab" * 32,  # required with holder = "node" (#14)
    "first-round-id": 7,
}
_LORA_RUN = {
    "lora-model": "minilm",
    "lora-rows": 64,
    "lora-rank": 4,
    "lora-lr": 5e-3,
    "seed": 3,
}


def _scalars(d: dict[str, Any]) -> dict[str, Any]:
    """A Flower config holds scalars only: containers become their JSON text."""
    return {
        k: v if not isinstance(v, (list, dict)) else json.dumps(v) for k, v in d.items()
    }


def _lora_spec(cfg: Mapping[str, Any]) -> Any:
    from fedtrain.flower.lora_task import LoraRunSpec

    return LoraRunSpec.from_run_config(cfg)


_TMP: dict[str, Path] = {}


def _tmpdir() -> Path:
    if "d" not in _TMP:
        _TMP["d"] = Path(tempfile.mkdtemp(prefix="fedtrain-fuzz-"))
    return _TMP["d"]


def _write(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", errors="surrogatepass") as fh:
        fh.write(text)


def _valid_ledger() -> str:
    p = _tmpdir() / "valid-ledger.json"
    if not p.exists():
        led = PrivacyLedger(p, target_epsilon=10.0, delta=1e-5)
        led.spend(1, GaussianEvent(2.0), {"fl_round": 1})
        led.spend(2, GaussianEvent(1.5), {"fl_round": 2}, count=3)
    return p.read_text(encoding="utf-8")


def _read_ledger(text: str) -> Any:
    p = _tmpdir() / "ledger.json"
    _write(p, text)
    return PrivacyLedger(p, target_epsilon=10.0, delta=1e-5)


def _valid_register() -> str:
    p = _tmpdir() / "valid.released"
    if not p.exists():
        reg = ReleaseRegister(p)
        reg.release(bytes(32), 1, lambda: None)
        reg.release(bytes(range(32)), 5, lambda: None)
    return p.read_text(encoding="utf-8")


def _read_register(text: str) -> Any:
    p = _tmpdir() / "fuzz.released"
    _write(p, text)
    return ReleaseRegister(p).is_released(bytes(32), 1)


def _valid_meta() -> str:
    return json.dumps(
        {
            "format": "fedtrain-checkpoint-1",
            "round": 1,
            "state_file": "state-r0001.safetensors",
            "history": [],
            "config": RunConfig().to_dict(),
        }
    )


def _read_meta(text: str) -> Any:
    d = _tmpdir() / "ck"
    d.mkdir(exist_ok=True)
    if not (d / "state-r0001.safetensors").exists():
        import numpy as np
        from safetensors.numpy import save

        (d / "state-r0001.safetensors").write_bytes(save({"global.x": np.zeros(2)}))
    _write(d / "meta.json", text)
    return load_checkpoint(d)


def _run_file_dicts() -> list[dict[str, Any]]:
    return [tomllib.loads(example_toml())]


def _read_run_file(text: str) -> Any:
    p = _tmpdir() / "run.toml"
    _write(p, text)
    return load_run_file(p)


Gen = Callable[[random.Random], Any]


@dataclass(frozen=True)
class Parser:
    name: str
    gen: Gen
    parse: Callable[[Any], Any]
    allowed: tuple[type[BaseException], ...]
    known: tuple[type[BaseException], ...] = ()  # open bugs, each with an xfail test
    valid: Callable[[], list[Any]] = list


def _from_corpus(corpus: Callable[[], list[Any]], mutate: Callable[..., Any]) -> Gen:
    return lambda rnd: mutate(rnd, rnd.choice(corpus()))


PARSERS = [
    Parser(
        "RunConfig.from_dict",
        _from_corpus(_run_configs, mutate_mapping),
        RunConfig.from_dict,
        (ConfigError,),
        valid=_run_configs,
    ),
    Parser(
        "fedtrain.runfile.parse_run_dict (run file tables)",
        _from_corpus(_run_file_dicts, mutate_mapping),
        parse_run_dict,
        (ConfigError,),
        valid=_run_file_dicts,
    ),
    Parser(
        "fedtrain.runfile.load_run_file (TOML run file)",
        _from_corpus(lambda: [example_toml()], mutate_text),
        _read_run_file,
        (ConfigError,),
        valid=lambda: [example_toml()],
    ),
    Parser(
        "ClientPolicy.from_node_config (node config)",
        _from_corpus(lambda: [_NODE], lambda r, d: _scalars(mutate_mapping(r, d))),
        ClientPolicy.from_node_config,
        (PolicyError,),
        valid=lambda: [_NODE],
    ),
    Parser(
        "RunSettings.from_run_config (run config)",
        _from_corpus(lambda: [_RUN], lambda r, d: _scalars(mutate_mapping(r, d))),
        RunSettings.from_run_config,
        (privagg.ConfigurationError,),
        valid=lambda: [_RUN],
    ),
    Parser(
        "LoraRunSpec.from_run_config (run config)",
        _from_corpus(lambda: [_LORA_RUN], lambda r, d: _scalars(mutate_mapping(r, d))),
        _lora_spec,
        (privagg.ConfigurationError,),
        valid=lambda: [_LORA_RUN],
    ),
    Parser(
        "SessionSpec.from_json",
        _from_corpus(
            lambda: [SessionSpec("secagg", {"bound": 1.0}, 4, 1.0, "ab").to_json()],
            mutate_text,
        ),
        SessionSpec.from_json,
        (privagg.ConfigurationError,),
        valid=lambda: [SessionSpec("secagg", {"bound": 1.0}, 4, 1.0, "ab").to_json()],
    ),
    Parser(
        "parse_shapes",
        lambda rnd: ",".join(
            f"{rnd.choice(['w', 'b', '', 'w'])}:{rnd.choice(['float32', 'float64', 'int8', 'object', 'U3', 'x', ''])}:"
            + "x".join(
                str(rnd.choice((0, 1, 3, -1, 10**6, 10**12, 2**63)))
                for _ in range(rnd.randrange(4))
            )
            + rnd.choice(("", "", ":", "x", " "))
            for _ in range(rnd.randrange(1, 4))
        ),
        parse_shapes,
        (privagg.ConfigurationError,),
        valid=lambda: ["w:float32:3x4,b:float64:4"],
    ),
    Parser(
        "PrivacyLedger (ledger file)",
        _from_corpus(lambda: [_valid_ledger()], mutate_text),
        _read_ledger,
        (privagg.DeserializationError, privagg.ConfigurationError),
        valid=lambda: [_valid_ledger()],
    ),
    Parser(
        "ReleaseRegister (register file)",
        _from_corpus(lambda: [_valid_register()], mutate_text),
        _read_register,
        (ReleaseRegisterError,),
        valid=lambda: [_valid_register()],
    ),
    Parser(
        "load_checkpoint (meta.json)",
        _from_corpus(lambda: [_valid_meta()], mutate_text),
        _read_meta,
        (FedtrainError,),
        valid=lambda: [_valid_meta()],
    ),
]

_SANE: set[str] = set()
_FUZZ = fuzz_settings()


@pytest.mark.parametrize("parser", PARSERS, ids=[p.name for p in PARSERS])
@_FUZZ
@given(seed=st.integers(0, 2**64 - 1))
def test_fuzz_config_loader(parser: Parser, seed: int) -> None:
    if parser.name not in _SANE:  # the valid inputs load: the fuzzing is not vacuous
        for v in parser.valid():
            parser.parse(v)
        _SANE.add(parser.name)
    rnd = random.Random(seed)
    escapes: list[str] = []
    known = 0
    for _ in range(BATCH):
        value = parser.gen(rnd)
        try:
            parser.parse(value)
        except parser.allowed:
            pass
        except parser.known:
            known += 1
        except Exception as exc:
            escapes.append(
                f"{type(exc).__name__}: {exc!s:.160} <- {str(value)[:160]!r}"
            )
    count("fuzz", parser.name, inputs=BATCH, escapes=len(escapes) + known, known=known)
    assert not escapes, escapes[:3]


# -- the escapes this fuzzing found (issue #13), each fixed and pinned by a test --------


def test_fuzz_finding_run_file_huge_integer() -> None:
    doc = tomllib.loads(example_toml())
    doc.setdefault("privacy", {})["clip"] = 10**400  # math.isfinite overflows
    with pytest.raises(ConfigError):
        parse_run_dict(doc)


def test_fuzz_finding_run_file_huge_integer_toml(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text(
        "model_dropout = " + "9" * 400 + "\n" + example_toml()
    )
    with pytest.raises(ConfigError):
        load_run_file(tmp_path / "run.toml")


def test_fuzz_finding_node_config_infinite_int() -> None:
    with pytest.raises(PolicyError):
        ClientPolicy.from_node_config(
            {"privagg-backends": "plain", "privagg-max-clients": math.inf}
        )


def test_fuzz_finding_run_config_infinite_int() -> None:
    with pytest.raises(privagg.ConfigurationError):
        RunSettings.from_run_config({"rounds": math.inf})


def test_fuzz_finding_run_config_deep_json() -> None:
    with pytest.raises(privagg.ConfigurationError):
        RunSettings.from_run_config({"backend-options": "[" * 100_000})


def test_fuzz_finding_session_spec_huge_number() -> None:
    with pytest.raises(privagg.ConfigurationError):
        SessionSpec.from_json(
            '{"backend": "plain", "options": {}, "max_clients": 1e400, "max_weight": 1}'
        )


def test_fuzz_finding_session_spec_deep_json() -> None:
    with pytest.raises(privagg.ConfigurationError):
        SessionSpec.from_json("[" * 100_000)


def test_fuzz_finding_parse_shapes_allocates_claimed_size() -> None:
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(privagg.ConfigurationError):
            parse_shapes("w:float64:100000000000")
        layout = parse_shapes("w:float64:100000000")  # 1e8 values: described, not made
        assert layout.size == 100_000_000
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()


def test_fuzz_finding_ledger_deep_json(tmp_path: Path) -> None:
    (tmp_path / "l.json").write_text("[" * 100_000)
    with pytest.raises(privagg.DeserializationError):
        PrivacyLedger(tmp_path / "l.json", target_epsilon=1.0, delta=1e-5)


def test_fuzz_finding_release_register_deep_json(tmp_path: Path) -> None:
    _write(tmp_path / "r.released", "[" * 100_000)
    with pytest.raises(ReleaseRegisterError):
        ReleaseRegister(tmp_path / "r.released").is_released(bytes(32), 1)


def test_fuzz_finding_checkpoint_meta_not_json(tmp_path: Path) -> None:
    (tmp_path / "meta.json").write_text("{torn")
    with pytest.raises(FedtrainError):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize(
    "bad",
    [
        {"lora": "ab"},  # ValueError from dict() before the fix
        {"backend_options": "xy"},
        {"privacy": {"clip": 10**400}},  # OverflowError in math.isfinite
        {"lora": {"mode": "flora", "client_ranks": [1]}},  # AttributeError: .items
        {"rounds": {"server_betas": 5}},  # TypeError (was already typed)
    ],
)
def test_fuzz_finding_run_config_wrong_kinds_are_config_errors(
    bad: dict[str, Any],
) -> None:
    """Found by the fuzzer (issue #13): values of the wrong kind escaped as
    ValueError / OverflowError / AttributeError; now all are ConfigError."""
    with pytest.raises(ConfigError):
        RunConfig.from_dict(bad)
