"""Review of client-level DP over Flower (#14; commits 3b5d77a, 97930de, 6bbc3bd):
attacks by a malicious ServerApp (its requests; the run config it is started with).

Worked, fixed:

* the request names the task and the task's noise hook decides whether a node's
  privagg role adds noise: a ServerApp naming ``lora`` (a task without a hook that
  trains on the node's data) in a client-level ``fedtrain`` run had the nodes train
  and load their roles with no noise. A node whose run config names a task now
  refuses a request naming another (``FlowerProtocolError``), before training;
* a node computed its share at the fixed-point scale of the backend the *request*
  names, not the run config's: a request with another ``scale_bits`` (or another
  backend) made a target-epsilon run calibrate a share the ledger does not account
  for. ``run_task.session_noise`` now refuses a backend or scale other than the run
  config's (as ``ServerRunTask.session_noise`` does on the ServerApp's side).

Worked, design (were strict xfails, now fixed): the DP parameters (level,
``noise_multiplier``, ``clip``, ``min_clients``, ``test_seed``) come from the run
config, which the project's own policy counts as the ServerApp's
(``fedtrain.flower.policy``): no node config floor let a node refuse a run with less
noise (now: ``DPFloors``, node config ``fedtrain-min-noise-multiplier`` and others),
and a run config ``test_seed`` makes record-level DP-SGD noise a stream anybody can
recompute (now refused unless the node allows it).

Refused (regression tests): the share every node computes is a pure function of the
run config and the backend (no other input); non-client levels load no noise; the
privagg client's per-round randomness is seeded from the OS CSPRNG.
"""

from __future__ import annotations

import inspect
import json
import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, RecordDict
from test_flower_run_task import _run
from test_flower_run_task_client_dp import CLIENT
from test_flower_run_task_dp import RECORD

import privagg
from fedtrain.flower import client_app, run_task
from fedtrain.flower.errors import FlowerConfigError, FlowerProtocolError, PolicyError
from fedtrain.flower.tasks import get_session_noise

LAYOUT = privagg.Layout.from_arrays({"w": np.zeros(8)})
OPTS = {"active": False, "bound": 0.5}


def _cfg(backend: str = "secagg", **privacy: Any) -> dict[str, Any]:
    d = _run("seq_cls", backend, privacy={**CLIENT, **privacy})
    # as the ServerApp's run config names the task (its default is ``synthetic``)
    cfg: dict[str, Any] = {**run_task.run_config_entry(d), "task": "fedtrain"}
    if backend == "secagg":
        cfg["backend-options"] = json.dumps(OPTS)
    return cfg


def _ctx(run_config: dict[str, Any], node_config: dict[str, Any] | None = None) -> Any:
    return Context(
        run_id=1,
        node_id=7,
        node_config=dict(node_config or {}),
        state=RecordDict(),
        run_config=dict(run_config),
    )  # type: ignore[arg-type]


def _env(task: str) -> Any:
    return SimpleNamespace(meta={"task": task})


def _spec(**opts: Any) -> Any:
    be = privagg.get_backend("secagg", **{**OPTS, **opts})
    return SimpleNamespace(backend_object=lambda: be)


@pytest.mark.parametrize("task", ["lora", "synthetic", "nope"])
def test_a_request_naming_another_task_is_refused(task: str) -> None:
    cfg = _cfg()
    ctx = _ctx(cfg)
    with pytest.raises(FlowerProtocolError, match="another task"):
        client_app._task_name(_env(task), ctx)
    with pytest.raises(FlowerProtocolError, match="another task"):
        client_app._noise(_env(task), _spec(), LAYOUT, ctx)
    # the run's own task: the share is loaded
    share = client_app._noise(_env("fedtrain"), _spec(), LAYOUT, ctx)
    assert share is not None
    assert share.stddev == pytest.approx(0.5 / math.sqrt(2))  # type: ignore[attr-defined]


def test_the_task_is_checked_before_the_client_trains() -> None:
    """``_respond`` takes the task through ``_task_name`` (no other read of the
    request's task)."""
    src = inspect.getsource(client_app._respond)
    assert "get_task(_task_name(env, context))" in src
    assert 'env.meta.get("task"' not in inspect.getsource(client_app._noise)


def test_a_run_config_without_a_task_accepts_the_request_as_before() -> None:
    ctx = _ctx({})
    assert client_app._task_name(_env("lora"), ctx) == "lora"
    assert client_app._noise(_env("synthetic"), _spec(), LAYOUT, ctx) is None


@pytest.mark.parametrize(
    "spec_opts",
    [{"scale_bits": 20}, {"scale_bits": 12}],
    ids=["finer", "coarser"],
)
def test_a_session_at_another_scale_than_the_run_configs_is_refused(
    spec_opts: dict[str, Any],
) -> None:
    cfg = _cfg()
    be = _spec(**spec_opts).backend_object()
    with pytest.raises(FlowerConfigError, match="fixed-point scale"):
        run_task.session_noise(cfg, be, LAYOUT)
    with pytest.raises(FlowerConfigError, match="fixed-point scale"):
        run_task.session_noise(cfg, privagg.get_backend("plain"), LAYOUT)
    # the run config's own backend and options: accepted
    ok = run_task.session_noise(cfg, _spec().backend_object(), LAYOUT)
    assert ok is not None


def test_the_share_depends_only_on_the_run_config_and_backend() -> None:
    """Every node with the same run config computes the same share; node config and
    request contents other than the task and backend do not enter it."""
    cfg = _cfg()
    a = client_app._noise(_env("fedtrain"), _spec(), LAYOUT, _ctx(cfg))
    b = client_app._noise(
        _env("fedtrain"), _spec(), LAYOUT, _ctx(cfg, {"party-id": "client-2"})
    )
    assert a == b
    half = client_app._noise(
        _env("fedtrain"), _spec(), LAYOUT, _ctx(_cfg(noise_multiplier=0.5))
    )
    assert half is not None and a is not None
    assert half.stddev == pytest.approx(a.stddev / 2)  # type: ignore[attr-defined]


@pytest.mark.parametrize("level", ["none", "record"])
def test_no_noise_below_client_level(level: str) -> None:
    priv: dict[str, Any] = {"level": level}
    if level == "record":
        priv.update(noise_multiplier=1.0, clip=1.0)
    cfg = dict(run_task.run_config_entry(_run("seq_cls", "plain", privacy=priv)))
    plain = SimpleNamespace(backend_object=lambda: privagg.get_backend("plain"))
    assert client_app._noise(_env("fedtrain"), plain, LAYOUT, _ctx(cfg)) is None
    assert get_session_noise("synthetic") is None
    assert get_session_noise("lora") is None


def test_client_round_randomness_is_seeded_from_the_os_csprng() -> None:
    """The privagg client's rounding/noise/secret stream: DeterministicRng over a
    32-byte seed from SystemRng, kept in the node's state, never from the run config
    or numpy/random."""
    src = inspect.getsource(client_app._respond)
    assert '"seed": SystemRng().random_bytes(32)' in src
    assert 'rng=DeterministicRng(state["seed"])' in src
    for mod in (client_app, run_task):
        text = inspect.getsource(mod)
        assert "np.random" not in text and "import random" not in text


def test_a_node_refuses_a_run_with_less_noise_than_its_floor() -> None:
    """Was a strict xfail (design: the DP parameters come from the ServerApp's run
    config); a node's node config now sets DP floors (``fedtrain.flower.policy.
    DPFloors``, tests/fedtrain/test_flower_dp_floors.py)."""
    node = {"fedtrain-min-noise-multiplier": 1.0, "fedtrain-min-dp-clients": 2}
    with pytest.raises(PolicyError, match="fedtrain-min-noise-multiplier"):
        client_app._noise(
            _env("fedtrain"),
            _spec(),
            LAYOUT,
            _ctx(_cfg(noise_multiplier=0.01), node),
        )


@pytest.mark.parametrize("level", ["record", "client"])
@pytest.mark.parametrize("allow", [None, False, "false", "yes", 1])
def test_a_dp_run_config_test_seed_is_refused_unless_the_node_allows_it(
    level: str, allow: Any
) -> None:
    """A run config ``test_seed`` makes record-level DP-SGD noise
    ``dp_rng(test_seed, "dpsgd", round, client)``, a stream the ServerApp (which chose
    the seed) can recompute and subtract: a node trains under it only when its own
    node config says ``fedtrain-allow-test-seed = true`` (was a strict xfail)."""
    privacy = RECORD if level == "record" else CLIENT
    d = _run("seq_cls", "plain", privacy=privacy, test_seed=11)
    cfg = {**run_task.run_config_entry(d), "task": "fedtrain"}
    node = {"party-id": "client-0", "partition-id": 0}
    if allow is not None:
        node[run_task.ALLOW_TEST_SEED] = allow
    with pytest.raises(PolicyError, match="test_seed"):
        run_task.client_update("client-0", 1, LAYOUT, RecordDict(), _ctx(cfg, node))
    config = run_task.FlowerRun.from_run_config(cfg).config
    with pytest.raises(PolicyError):
        run_task.check_test_seed(config, node)
    for ok in (True, "true", "TRUE"):
        run_task.check_test_seed(config, {run_task.ALLOW_TEST_SEED: ok})


def test_a_test_seed_without_dp_or_dp_without_a_test_seed_needs_no_permission() -> None:
    for privacy, seed in ((None, 11), (RECORD, None)):
        extra: dict[str, Any] = {"test_seed": seed} if seed is not None else {}
        d = _run(
            "seq_cls", "plain", **({"privacy": privacy} if privacy else {}), **extra
        )
        cfg = {**run_task.run_config_entry(d), "task": "fedtrain"}
        config = run_task.FlowerRun.from_run_config(cfg).config
        run_task.check_test_seed(config, {})
