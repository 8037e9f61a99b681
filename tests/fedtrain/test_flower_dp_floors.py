"""A node's own floors on a ``fedtrain`` run's differential privacy (#14, review r2).

The DP parameters come from the run config, which is the ServerApp's; a node's
operator sets floors in the node config (``fedtrain-min-noise-multiplier``,
``fedtrain-min-dp-clients``, ``fedtrain-require-dp``, ``fedtrain-max-epsilon``,
``fedtrain-max-delta``; :class:`fedtrain.flower.policy.DPFloors`). A run below one is
refused with a ``PolicyError`` naming the node config key and the run config field,
before the node's data, model or training are touched (record and client level) and
before a noise share is computed (client level).
"""

from __future__ import annotations

from typing import Any

import pytest
from flwr.app import RecordDict
from hypothesis import given
from hypothesis import strategies as st
from test_flower_run_task import _run
from test_flower_run_task_client_dp import CLIENT
from test_flower_run_task_dp import RECORD
from test_review_flower_client_dp import LAYOUT, _cfg, _ctx, _env, _spec

import privagg
from fedtrain.flower import client_app, run_task
from fedtrain.flower.errors import FlowerConfigError, PolicyError
from fedtrain.flower.policy import ClientPolicy, DPFloors
from fedtrain.planning import client_dp
from fedtrain.runfile import RunFile

NODE = {"party-id": "client-0", "partition-id": 0}


def _record_cfg(**privacy: Any) -> dict[str, Any]:
    d = _run("seq_cls", "plain", privacy={**RECORD, **privacy})
    return {**run_task.run_config_entry(d), "task": "fedtrain"}


def _none_cfg() -> dict[str, Any]:
    return {**run_task.run_config_entry(_run("seq_cls", "plain")), "task": "fedtrain"}


def _boom(monkeypatch: pytest.MonkeyPatch, *, data: bool = True) -> None:
    """Make every load of data or model and every training step fail the test."""

    def boom(*a: Any, **k: Any) -> Any:
        raise AssertionError("reached before the DP floor check")

    names = ["_shared", "local_update", "load_client_start", "apply_global"]
    names += ["build_handle", "load_tokenizer"]
    if data:
        names += ["_load_parts"]
        monkeypatch.setattr(RunFile, "load_data", boom)
    for name in names:
        monkeypatch.setattr(run_task, name, boom)


def _update(cfg: dict[str, Any], floors: dict[str, Any]) -> None:
    run_task.client_update(
        "client-0", 1, LAYOUT, RecordDict(), _ctx(cfg, {**NODE, **floors})
    )


def _check(cfg: dict[str, Any], floors: dict[str, Any]) -> None:
    fr = run_task.FlowerRun.from_run_config(cfg)
    run_task.check_dp_floors(fr, cfg, {**NODE, **floors}, LAYOUT)


def _noise(cfg: dict[str, Any], floors: dict[str, Any]) -> Any:
    return client_app._noise(_env("fedtrain"), _spec(), LAYOUT, _ctx(cfg, floors))


LEVELS = [("record", _record_cfg), ("client", _cfg)]


# -- the node config values ----------------------------------------------------------
def test_floors_are_read_typed_from_the_node_config() -> None:
    node = {
        "fedtrain-min-noise-multiplier": "0.8",
        "fedtrain-min-dp-clients": 3,
        "fedtrain-require-dp": "TRUE",
        "fedtrain-max-epsilon": 4,
        "fedtrain-max-delta": 1e-6,
    }
    want = DPFloors(0.8, 3, True, 4.0, 1e-6)
    assert DPFloors.from_node_config(node) == want
    policy = ClientPolicy.from_node_config({"privagg-backends": "secagg", **node})
    assert policy.dp == want
    assert DPFloors.from_node_config({}) == DPFloors()
    assert ClientPolicy.from_node_config({"privagg-backends": "plain"}).dp == DPFloors()
    assert DPFloors(max_epsilon=1.0).delta_ceiling == 1e-5
    assert DPFloors().delta_ceiling is None


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("fedtrain-min-noise-multiplier", -0.1),
        ("fedtrain-min-noise-multiplier", "abc"),
        ("fedtrain-min-noise-multiplier", float("nan")),
        ("fedtrain-min-noise-multiplier", "inf"),
        ("fedtrain-min-noise-multiplier", True),
        ("fedtrain-min-noise-multiplier", [1.0]),
        ("fedtrain-min-dp-clients", 0),
        ("fedtrain-min-dp-clients", -2),
        ("fedtrain-min-dp-clients", 2.5),
        ("fedtrain-min-dp-clients", 2.0),
        ("fedtrain-min-dp-clients", "two"),
        ("fedtrain-min-dp-clients", True),
        ("fedtrain-require-dp", "yes"),
        ("fedtrain-require-dp", 1),
        ("fedtrain-require-dp", " true"),
        ("fedtrain-require-dp", ""),
        ("fedtrain-max-epsilon", 0),
        ("fedtrain-max-epsilon", -1.0),
        ("fedtrain-max-epsilon", "inf"),
        ("fedtrain-max-epsilon", False),
        ("fedtrain-max-delta", 0.0),
        ("fedtrain-max-delta", 1.0),
        ("fedtrain-max-delta", "x"),
    ],
    ids=repr,
)
def test_a_malformed_floor_is_a_typed_error_naming_the_key(
    key: str, value: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(PolicyError, match=key) as info:
        DPFloors.from_node_config({key: value})
    assert isinstance(info.value, FlowerConfigError)
    assert isinstance(info.value, privagg.ConfigurationError)
    with pytest.raises(PolicyError, match=key):
        ClientPolicy.from_node_config({"privagg-backends": "secagg", key: value})
    # on every path a node takes, before anything is loaded or trained
    _boom(monkeypatch)
    for _, cfg in LEVELS:
        with pytest.raises(PolicyError, match=key):
            _update(cfg(), {key: value})
    with pytest.raises(PolicyError, match=key):
        _noise(_cfg(), {key: value})
    with pytest.raises(PolicyError, match=key):
        client_app._task_name(_env("synthetic"), _ctx({}, {key: value}))


# -- fedtrain-min-noise-multiplier -----------------------------------------------------
@pytest.mark.parametrize(("level", "cfg"), LEVELS, ids=["record", "client"])
def test_min_noise_multiplier_at_the_floor_is_accepted_below_refused(
    level: str, cfg: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "fedtrain-min-noise-multiplier"
    _check(cfg(noise_multiplier=0.7), {key: 0.7})
    _check(cfg(noise_multiplier=0.7), {key: "0.7"})
    _check(cfg(noise_multiplier=0.7), {key: 0})
    _check(cfg(noise_multiplier=0.7), {})  # no floor: as before
    _boom(monkeypatch)
    with pytest.raises(PolicyError) as info:
        _update(cfg(noise_multiplier=0.69), {key: 0.7})
    msg = str(info.value)
    assert key in msg and "privacy.noise_multiplier = 0.69" in msg
    with pytest.raises(PolicyError, match=key):
        _update(cfg(noise_multiplier=0.01), {key: 1.0})


def test_client_level_share_is_computed_only_above_the_floor() -> None:
    key = "fedtrain-min-noise-multiplier"
    share = _noise(_cfg(noise_multiplier=0.7), {key: 0.7})
    assert share is not None
    assert share == _noise(_cfg(noise_multiplier=0.7), {})  # the floor changes nothing
    with pytest.raises(PolicyError, match=key):
        _noise(_cfg(noise_multiplier=0.69), {key: 0.7})


def test_the_share_is_not_computed_for_a_refused_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def boom(*a: Any, **k: Any) -> Any:
        raise AssertionError("share computed before the DP floor check")

    monkeypatch.setattr(run_task.ClientDP, "session_noise", boom)
    with pytest.raises(PolicyError):
        _noise(_cfg(noise_multiplier=0.5), {"fedtrain-min-noise-multiplier": 1.0})
    with pytest.raises(PolicyError):
        _noise(_cfg(min_clients=2), {"fedtrain-min-dp-clients": 3})


def test_a_run_without_dp_is_below_a_positive_noise_floor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = "fedtrain-min-noise-multiplier"
    _boom(monkeypatch)
    with pytest.raises(PolicyError, match=key) as info:
        _update(_none_cfg(), {key: 0.5})
    assert "privacy.level = 'none'" in str(info.value)
    for task in ("lora", "synthetic"):
        with pytest.raises(PolicyError, match=key):
            client_app._task_name(_env(task), _ctx({}, {key: 0.5}))
    # a zero floor asks for nothing
    _check(_none_cfg(), {key: 0.0})
    assert client_app._task_name(_env("lora"), _ctx({}, {key: 0.0})) == "lora"


def test_client_level_calibrated_z_is_checked() -> None:
    """With ``calibrate`` the run config's noise_multiplier is ignored: the node
    checks the z it calibrates itself from target_epsilon."""
    cfg = _cfg(calibrate=True, target_epsilon=8.0, noise_multiplier=50.0)
    fr = run_task.FlowerRun.from_run_config(cfg)
    scale = privagg.fixed_point_scale(_spec().backend_object())
    cdp = client_dp(fr.config, n_clients=3, scale=scale, dimension=LAYOUT.size)
    assert cdp is not None and 0 < cdp.noise_multiplier < 50.0
    z = cdp.noise_multiplier
    key = "fedtrain-min-noise-multiplier"
    _check(cfg, {key: z})
    assert _noise(cfg, {key: z}) is not None
    with pytest.raises(PolicyError, match=key) as info:
        _check(cfg, {key: z * 1.01})
    assert "calibrated from privacy.target_epsilon" in str(info.value)
    with pytest.raises(PolicyError, match=key):
        _noise(cfg, {key: z * 1.01})


def test_record_level_calibrated_z_is_checked_before_the_model_or_training(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Record level with ``calibrate``: z depends on the public partition's sizes,
    so the data are loaded and partitioned; no tokenizer or model is loaded and no
    step trained before the refusal."""
    cfg = _record_cfg(calibrate=True, target_epsilon=8.0, noise_multiplier=50.0)
    fr = run_task.FlowerRun.from_run_config(cfg)
    z = run_task._record_z(fr)
    assert 0 < z < 50.0
    key = "fedtrain-min-noise-multiplier"
    _check(cfg, {key: z})
    _boom(monkeypatch, data=False)
    with pytest.raises(PolicyError, match=key) as info:
        _update(cfg, {key: z * 1.01})
    assert "calibrated from privacy.target_epsilon" in str(info.value)


@given(
    floor=st.floats(min_value=0.01, max_value=100.0),
    frac=st.floats(min_value=0.0, max_value=0.999, exclude_max=False),
    level=st.sampled_from(["record", "client"]),
)
def test_property_any_multiplier_below_the_floor_is_refused(
    floor: float, frac: float, level: str
) -> None:
    z = floor * frac
    if z <= 0:
        z = floor / 2
    if not z < floor:
        return
    cfg = (_record_cfg if level == "record" else _cfg)(noise_multiplier=z)
    node = {"fedtrain-min-noise-multiplier": floor}
    with pytest.raises(PolicyError, match="fedtrain-min-noise-multiplier"):
        _check(cfg, node)
    if level == "client":
        with pytest.raises(PolicyError, match="fedtrain-min-noise-multiplier"):
            _noise(cfg, node)
    _check((_record_cfg if level == "record" else _cfg)(noise_multiplier=floor), node)


# -- fedtrain-min-dp-clients -----------------------------------------------------------
def test_min_dp_clients_at_the_floor_is_accepted_below_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = "fedtrain-min-dp-clients"
    _check(_cfg(min_clients=2), {key: 2})
    _check(_cfg(min_clients=3), {key: "2"})
    assert _noise(_cfg(min_clients=2), {key: 2}) is not None
    _boom(monkeypatch)
    with pytest.raises(PolicyError, match=key) as info:
        _update(_cfg(min_clients=2), {key: 3})
    assert "privacy.min_clients = 2" in str(info.value)


def test_min_dp_clients_checks_the_derived_min_clients() -> None:
    """min_clients unset: the contributors derived from the sampling (round(q N)
    less the dropout tolerance) are what the noise is sized for."""
    key = "fedtrain-min-dp-clients"
    d = _run("seq_cls", "secagg", privacy={**CLIENT, "min_clients": None})
    d["rounds"] = {**d["rounds"], "sample_rate": 0.34}  # round(0.34 * 3) = 1
    cfg = {**run_task.run_config_entry(d), "task": "fedtrain"}
    cfg["backend-options"] = _cfg()["backend-options"]
    _check(cfg, {key: 1})
    with pytest.raises(PolicyError, match=key) as info:
        _check(cfg, {key: 2})
    assert "privacy.min_clients = 1" in str(info.value)


def test_min_dp_clients_applies_to_client_level_only() -> None:
    _check(_record_cfg(), {"fedtrain-min-dp-clients": 100})
    _check(_none_cfg(), {"fedtrain-min-dp-clients": 100})


# -- fedtrain-require-dp -----------------------------------------------------------------
def test_require_dp_refuses_a_run_without_dp(monkeypatch: pytest.MonkeyPatch) -> None:
    key = "fedtrain-require-dp"
    _check(_record_cfg(), {key: True})
    _check(_cfg(), {key: "true"})
    _check(_none_cfg(), {key: False})
    _check(_none_cfg(), {key: "false"})
    _check(_none_cfg(), {})
    for task in ("lora", "synthetic"):
        assert client_app._task_name(_env(task), _ctx({}, {key: False})) == task
        with pytest.raises(PolicyError, match=key):
            client_app._task_name(_env(task), _ctx({}, {key: True}))
        with pytest.raises(PolicyError, match=key):
            client_app._noise(_env(task), _spec(), LAYOUT, _ctx({}, {key: True}))
    assert client_app._task_name(_env("fedtrain"), _ctx({}, {key: True})) == "fedtrain"
    _boom(monkeypatch)
    with pytest.raises(PolicyError, match=key):
        _update(_none_cfg(), {key: True})


# -- fedtrain-max-epsilon / fedtrain-max-delta -------------------------------------------
@pytest.mark.parametrize(("level", "cfg"), LEVELS, ids=["record", "client"])
def test_max_epsilon_needs_a_budget_at_most_the_ceiling(
    level: str, cfg: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "fedtrain-max-epsilon"
    _check(cfg(target_epsilon=4.0), {key: 4.0})
    _check(cfg(target_epsilon=1.0), {key: 4.0})
    _check(cfg(), {})  # no ceiling: a run without a budget, as before
    _boom(monkeypatch)
    with pytest.raises(PolicyError, match=key) as info:
        _update(cfg(target_epsilon=4.01), {key: 4.0})
    assert "privacy.target_epsilon = 4.01" in str(info.value)
    with pytest.raises(PolicyError, match=key) as info:
        _update(cfg(), {key: 4.0})
    assert "no privacy.target_epsilon" in str(info.value)
    with pytest.raises(PolicyError, match=key):
        _update(_none_cfg(), {key: 4.0})
    with pytest.raises(PolicyError, match=key):
        client_app._task_name(_env("lora"), _ctx({}, {key: 4.0}))


@pytest.mark.parametrize(("level", "cfg"), LEVELS, ids=["record", "client"])
def test_the_delta_is_bounded_with_the_epsilon(
    level: str, cfg: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An epsilon ceiling means nothing at any delta: with fedtrain-max-epsilon and
    no fedtrain-max-delta, delta <= 1e-5 (fedtrain's default) applies."""
    eps = {"fedtrain-max-epsilon": 4.0}
    _check(cfg(target_epsilon=2.0, delta=1e-5), eps)
    _boom(monkeypatch)
    with pytest.raises(PolicyError, match="fedtrain-max-epsilon") as info:
        _update(cfg(target_epsilon=2.0, delta=1e-3), eps)
    assert "privacy.delta = 0.001" in str(info.value)
    wide = {**eps, "fedtrain-max-delta": 1e-3}
    _check(cfg(target_epsilon=2.0, delta=1e-3), wide)
    with pytest.raises(PolicyError, match="fedtrain-max-delta"):
        _update(cfg(target_epsilon=2.0, delta=2e-3), wide)
    # max-delta alone bounds delta only
    _check(cfg(delta=1e-6), {"fedtrain-max-delta": 1e-6})
    with pytest.raises(PolicyError, match="fedtrain-max-delta"):
        _update(cfg(delta=1e-5), {"fedtrain-max-delta": 1e-6})


# -- no floor: the old behaviour -----------------------------------------------------------
def test_no_floor_computes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node config without floors: no calibration, no data, no refusal (any
    run accepted by the DP check, as before the floors existed)."""

    def boom(*a: Any, **k: Any) -> Any:
        raise AssertionError("computed for a node without floors")

    for name in ("_client_dp", "_record_z", "_load_parts"):
        monkeypatch.setattr(run_task, name, boom)
    for cfg in (
        _record_cfg(noise_multiplier=0.01, calibrate=True, target_epsilon=100.0),
        _cfg(noise_multiplier=0.01, min_clients=1),
        _none_cfg(),
    ):
        _check(cfg, {"fedtrain-allow-test-seed": True})
    for task in ("lora", "synthetic", "fedtrain"):
        assert client_app._task_name(_env(task), _ctx({}, NODE)) == task


def test_a_refusal_names_no_secret() -> None:
    """The message names the node config key and the run config field with public
    values only."""
    with pytest.raises(PolicyError) as info:
        _check(_cfg(noise_multiplier=0.5), {"fedtrain-min-noise-multiplier": 1.0})
    msg = str(info.value)
    assert "run config 'fedtrain-run' privacy.noise_multiplier = 0.5" in msg
    assert "node config 'fedtrain-min-noise-multiplier'" in msg
    assert "seed" not in msg.lower() and "key" not in msg.replace("node config", "")


# -- no clip ceiling ---------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["secagg", "plain"])
def test_a_larger_clip_with_the_same_multiplier_is_no_larger_epsilon(
    backend: str,
) -> None:
    """Why there is no ``fedtrain-max-clip``: the noise's std is z times the clip, so
    the client-level event of a run with a 10x clip is the same (reals: ``plain``)
    or, on an integer backend (the rounding term is fixed in ring units), no
    larger."""
    eps = []
    for clip in (0.5, 5.0):
        d = _run("seq_cls", backend, privacy={**CLIENT, "clip": clip})
        fr = run_task.FlowerRun.from_run_config(run_task.run_config_entry(d))
        scale = None if backend == "plain" else 2.0**16
        cdp = client_dp(fr.config, n_clients=3, scale=scale, dimension=1000)
        assert cdp is not None
        event, _ = cdp.event(2)
        acc = privagg.dp.make_accountant("rdp").compose(event, count=2)
        eps.append(acc.epsilon(1e-5))
    if backend == "plain":
        assert eps[1] == pytest.approx(eps[0])
    else:
        assert eps[1] <= eps[0]
    print(f"\n{backend}: epsilon clip 0.5 -> {eps[0]:.4f}, clip 5.0 -> {eps[1]:.4f}")


def test_the_docs_example_node_config_reads_and_refuses_as_documented() -> None:
    """The ```toml example of docs/flower.md's "DP floors" section."""
    import re
    import tomllib
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs/flower.md").read_text("utf-8")
    section = text.split("### DP floors", 1)[1]
    block = re.search(r"```toml\n(.*?)```", section, re.S)
    assert block is not None
    node = tomllib.loads(block.group(1))
    policy = ClientPolicy.from_node_config(node)
    assert policy.dp == DPFloors(0.8, 3, True, 8.0, 1e-5)
    ok = _cfg(noise_multiplier=0.8, min_clients=3, target_epsilon=8.0)
    run_task.check_dp_floors(run_task.FlowerRun.from_run_config(ok), ok, node, LAYOUT)
    for bad in (
        _cfg(noise_multiplier=0.79, min_clients=3, target_epsilon=8.0),
        _cfg(noise_multiplier=0.8, min_clients=2, target_epsilon=8.0),
        _cfg(noise_multiplier=0.8, min_clients=3),
        _cfg(noise_multiplier=0.8, min_clients=3, target_epsilon=8.0, delta=1e-4),
        _none_cfg(),
    ):
        fr = run_task.FlowerRun.from_run_config(bad)
        with pytest.raises(PolicyError, match="node config 'fedtrain-"):
            run_task.check_dp_floors(fr, bad, node, LAYOUT)
