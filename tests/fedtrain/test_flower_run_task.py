"""The ``fedtrain`` Flower task: a RunConfig run over Flower, compared with in-process.

The Flower side runs the real ServerApp loop (:func:`fedtrain.flower.server_app.run`)
and the real ClientApp handler (``privagg_query``) through the in-process fake Grid of
``test_flower_transport`` (every message packed and unpacked as in a deployment, one
Flower ``Context`` per node, node state kept across rounds), minus the processes. The
in-process side is :class:`fedtrain.server.Federation` on the same data partition.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.supercore.task_identity import TaskIdentity
from test_flower_transport import FakeGrid, holder_identity

import fedtrain.client
import privagg
from fedtrain.data import partition
from fedtrain.errors import ConfigError
from fedtrain.flower import material, run_task, server_app
from fedtrain.flower.errors import FlowerConfigError
from fedtrain.flower.material import SessionSpec
from fedtrain.runfile import parse_run_dict
from fedtrain.server import Federation

CLIENTS = 3


@pytest.fixture(autouse=True)
def _task_identity() -> Iterator[None]:
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def _run(task: str, backend: str, **kw: Any) -> dict[str, Any]:
    """A tiny run-file dict: MiniLM, 3 clients, 2 rounds, max_len 16 (``causal_lm``:
    SmolLM2-135M on Rotten Tomatoes as instructions, max_len 32)."""
    data = {"train": "rt", "max_train": 36, "max_eval": 24}
    if task == "token_cls":
        data = {"train": "conll", "max_train": 30, "max_eval": 16}
    if task == "causal_lm":
        data = {"train": "rt", "max_train": 12, "max_eval": 4}
        kw = {"model": "smollm2", "max_len": 32, **kw}
    d: dict[str, Any] = {
        "task": task,
        "model": "minilm",
        "max_len": 16,
        "device": "cpu",
        "bf16": False,
        "seed": 3,
        "model_dropout": 0.0,
        "eval_batch_size": 32,
        "backend": backend,
        "data": data,
        "federation": {"num_clients": CLIENTS, "partition": "iid", "seed": 5},
        "lora": {"r": 2, "alpha": 4.0},
        "rounds": {"rounds": 2, "local_steps": 2, "batch_size": 4, "lr": 1e-2},
    }
    for k, v in kw.items():
        if isinstance(v, dict):
            d[k] = {**d.get(k, {}), **v}
        else:
            d[k] = v
    return d


def _inprocess(
    d: dict[str, Any],
) -> tuple[Federation, dict[str, np.ndarray], Any]:
    rf = parse_run_dict(d)
    c = rf.config
    train, ev = rf.load_data()
    fed_spec = rf.federation
    parts = partition(
        train,
        fed_spec.num_clients,
        fed_spec.partition,
        fed_spec.seed,
        alpha=fed_spec.alpha,
    )
    fed = Federation(c, {f"client{i}": p for i, p in enumerate(parts)}, ev)
    initial = {k: v.copy() for k, v in fed.global_state.items()}
    return fed, initial, fed.run(export=False)


def flower_setup(
    d: dict[str, Any], backend_options: str, **extra: Any
) -> tuple[FakeGrid, dict[str, Any], server_app.RunSettings]:
    """The fake Grid of one node per client of ``d``, the run config and the
    ServerApp settings of run ``d`` (``extra``: more run config keys, e.g.
    ``checkpoint-dir``)."""
    n_clients = int(d["federation"]["num_clients"])
    run_config = {
        **run_task.run_config_entry(d),
        "task": "fedtrain",
        "backend": d["backend"],
        "rounds": d["rounds"].get("rounds", 2),
        **extra,
    }
    grid = FakeGrid(
        {
            100 + i: {
                "party-id": f"client-{i}",
                "partition-id": i,
                "privagg-backends": "plain,secagg",
                # a DP run's test_seed makes its noise recomputable: nodes opt in
                **(
                    {run_task.ALLOW_TEST_SEED: "true"}
                    if d.get("test_seed") is not None
                    else {}
                ),
            }
            for i in range(n_clients)
        }
    )
    for ctx in grid.contexts.values():
        ctx.run_config = dict(run_config)
    settings = server_app.RunSettings.from_run_config(
        {
            **run_config,
            "backend-options": backend_options,
            "min-nodes": n_clients,
            "stage-timeout": 5.0,
        }
    )
    return grid, run_config, settings


def _flower(
    d: dict[str, Any], backend_options: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, Any, list[str]]:
    """Run ``d`` over the fake Grid; also count the model loads (per process, once)."""
    loads: list[str] = []
    real = fedtrain.client.load_model

    def counting(*args: Any, **kw: Any) -> Any:
        loads.append(str(args[0]))
        return real(*args, **kw)

    monkeypatch.setattr(fedtrain.client, "load_model", counting)
    monkeypatch.setattr(run_task, "_CACHE", {})
    grid, run_config, settings = flower_setup(d, backend_options)
    task = run_task.ServerRunTask(run_config)
    summary = server_app.run(grid, settings, task)  # type: ignore[arg-type]
    return task, summary, loads


def _max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert set(a) == set(b)
    return max(
        float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64))))
        for k in a
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("task", "backend", "options", "extra", "tol"),
    [
        ("seq_cls", "plain", "{}", {}, 1e-6),
        (  # FedAdam divides by sqrt(v) + tau, which magnifies the fixed-point
            # rounding (fresh randomness every run): max diff 5.8e-5 to 9.7e-5 over
            # ten runs, so 2e-4
            "seq_cls",
            "secagg",
            '{"active": false}',
            {"rounds": {"server_opt": "fedadam", "server_lr": 0.01}},
            2e-4,
        ),
        (
            "token_cls",
            "plain",
            "{}",
            {"lora": {"mode": "fedit"}, "rounds": {"weighting": "uniform"}},
            1e-6,
        ),
        ("causal_lm", "plain", "{}", {}, 1e-6),
        ("seq_cls", "plain", "{}", {"lora": {"mode": "alternating"}}, 1e-6),
        ("seq_cls", "plain", "{}", {"lora": {"mode": "flora"}}, 1e-6),
        (
            "seq_cls",
            "plain",
            "{}",
            {"rounds": {"server_opt": "fedyogi", "server_lr": 0.01}},
            1e-6,
        ),
    ],
)
def test_same_run_on_both_runtimes(
    task: str,
    backend: str,
    options: str,
    extra: dict[str, Any],
    tol: float,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Same config on Federation and over Flower: same adapter and metrics."""
    if backend not in privagg.available_backends():
        pytest.skip(f"{backend} not available")
    d = _run(task, backend, **extra)
    if options != "{}":
        d["backend_options"] = json.loads(options)
    fed, initial, res = _inprocess(d)
    flower_task, summary, loads = _flower(
        {**d, "out": str(tmp_path)}, options, monkeypatch
    )
    # one model per side in this process (server task, clients), not one per round
    assert loads == [d["model"]] * 2
    diff = _max_diff(fed.global_state, flower_task.global_state)
    print(f"\n{task}/{backend}/{extra}: max |adapter diff| = {diff:.3e}")
    assert diff <= tol
    # the adapter moved: the comparison is not of two untouched initial states (flora
    # merges each round's stacked update into new keys, zero before the first round)
    start = {k: initial.get(k, np.zeros_like(v)) for k, v in fed.global_state.items()}
    assert _max_diff(fed.global_state, start) > 50 * tol
    assert [r["contributors"] for r in summary["rounds"]] == [
        [f"client-{i}" for i in range(CLIENTS)]
    ] * 2
    got = summary["final_metrics"]
    want = res.final_metrics
    assert set(got) == set(want)
    # the secure backends round to fixed point: metrics agree to their tolerance
    mtol = 1e-6 if backend == "plain" else 1e-3
    for k in want:
        assert abs(got[k] - want[k]) <= mtol, (k, got[k], want[k])
    assert summary["initial_metrics"] == pytest.approx(res.initial_metrics, abs=1e-9)
    assert [r["metrics"] for r in summary["rounds"]] == [
        pytest.approx(r.metrics, abs=mtol) for r in res.rounds
    ]
    adapter = tmp_path / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    assert (adapter / "adapter_config.json").is_file()


def _entry(d: Any) -> dict[str, Any]:
    return {run_task.RUN_KEY: json.dumps(d)}


def test_run_config_is_checked_strictly() -> None:
    """Bad input is a typed error naming what is wrong; nothing is loaded first."""
    good = _run("seq_cls", "plain")
    fr = run_task.FlowerRun.from_run_config(run_task.run_config_entry(good))
    assert fr.config.task == "seq_cls" and fr.config.rounds.rounds == 2
    assert fr.run.federation.num_clients == CLIENTS
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({}, FlowerConfigError, "fedtrain-run"),
        ({run_task.RUN_KEY: "{not json"}, FlowerConfigError, "not JSON"),
        ({run_task.RUN_KEY: 7}, FlowerConfigError, "JSON object"),
        (_entry([1, 2]), ConfigError, "table"),
        (_entry({**good, "bogus": 1}), ConfigError, "bogus"),
        (_entry({**good, "rounds": {"lr": "fast"}}), ConfigError, "rounds.lr"),
        (_entry({**good, "task": "summarize"}), ConfigError, "task"),
        ({**_entry(good), "backend": "ckks"}, FlowerConfigError, "backend"),
        ({**_entry(good), "rounds": 5}, FlowerConfigError, "rounds"),
    ]
    for cfg, exc, match in cases:
        with pytest.raises(exc, match=match):
            run_task.FlowerRun.from_run_config(cfg)
    # client-level DP is run too (test_flower_run_task_client_dp.py)
    client = {**good, "privacy": {"level": "client", "noise_multiplier": 1.0}}
    assert run_task.FlowerRun.from_run_config(_entry(client)).config.privacy.level == (
        "client"
    )
    # record-level DP and client sampling are run (test_flower_run_task_dp.py)
    ok = {
        **good,
        "privacy": {"level": "record", "noise_multiplier": 1.0},
        "rounds": {**good["rounds"], "sample_rate": 0.5},
    }
    fr2 = run_task.FlowerRun.from_run_config(_entry(ok))
    assert fr2.config.privacy.level == "record" and fr2.config.rounds.sample_rate == 0.5
    # the example of docs/flower.md parses
    doc_run = {"task": "token_cls", "model": "minilm", "backend": "secagg",
               "backend_options": {"active": False}, "out": "/runs/ner",
               "data": {"train": "conll"},
               "federation": {"num_clients": 3, "partition": "iid"},
               "lora": {"mode": "fedit"},
               "rounds": {"rounds": 2, "server_opt": "fedadam"}}  # fmt: skip
    doc = run_task.FlowerRun.from_run_config(
        {**run_task.run_config_entry(doc_run), "backend": "secagg", "rounds": 2}
    )
    assert doc.config.lora.mode == "fedit" and doc.run.out == "/runs/ner"
    # both error types are privagg's configuration errors (one root)
    assert issubclass(FlowerConfigError, privagg.ConfigurationError)


def test_party_ids_map_to_partitions() -> None:
    assert run_task._partition_of("client-2", 3) == 2
    for bad in ("client-3", "client-x", "node-1", "client--1", "client-"):
        with pytest.raises(FlowerConfigError, match="client-<i>"):
            run_task._partition_of(bad, 3)


def _grid_with_holder(
    configs: dict[int, dict[str, object]],
    run_config: dict[str, Any],
    settings: server_app.RunSettings,
    folder: Path,
    **replace: Any,
) -> tuple[FakeGrid, server_app.RunSettings]:
    """The fake Grid of ``configs`` whose node 200 is the result holder (its own
    identity key, pinned by the run) and the settings with ``replace`` applied."""
    ident, pin = holder_identity(folder / "holder-id")
    configs[200] = {"privagg-holder": True, **configs[200], **ident}
    grid = FakeGrid(configs)
    for ctx in grid.contexts.values():
        ctx.run_config = dict(run_config)
    return grid, dataclasses.replace(
        settings, holder="node", holder_key=pin, min_nodes=len(configs), **replace
    )


def with_dealt_keys(
    grid: FakeGrid,
    run_config: dict[str, Any],
    settings: server_app.RunSettings,
    task: run_task.ServerRunTask,
    folder: Path,
) -> tuple[FakeGrid, server_app.RunSettings]:
    """The fake Grid and settings of a run on a dealt backend (CKKS, Paillier): each
    node loads its own dealt file, a holder node (its own pinned key) the secret key,
    the ServerApp the aggregator's file."""
    spec = SessionSpec(
        settings.backend, dict(settings.backend_options), max_clients=CLIENTS
    )
    ids = [f"client-{i}" for i in range(CLIENTS)]
    paths = material.deal(spec, task.layout(), ids, folder / "keys")
    configs = {n: dict(ctx.node_config) for n, ctx in grid.contexts.items()}
    for cfg in configs.values():
        cfg["privagg-backends"] = settings.backend
        cfg["privagg-material"] = str(paths[str(cfg["party-id"])])
        cfg["privagg-ckks-presets"] = "test-fast"  # heuristic flooding: allowed here
        cfg["privagg-min-ckks-flood-bits"] = 0
    configs[200] = {"privagg-holder-material": str(paths["holder"])}
    return _grid_with_holder(
        configs,
        run_config,
        settings,
        folder,
        aggregator_material=str(paths["aggregator"]),
    )


def with_identities(
    grid: FakeGrid, settings: server_app.RunSettings, folder: Path
) -> tuple[FakeGrid, server_app.RunSettings]:
    """The fake Grid and settings of an active SecAgg+ run: each node its own identity
    key (``privagg keygen``), the operator's directory, pinned by every node."""
    from test_flower_active_secagg import make_identities

    ids = [f"client-{i}" for i in range(CLIENTS)]
    directory, pin = make_identities(folder, ids)
    for ctx in grid.contexts.values():
        p = str(ctx.node_config["party-id"])
        ctx.node_config["privagg-identity-key"] = str(
            folder / p / f"secagg-identity-{p}.key"
        )
        ctx.node_config["privagg-identity-directory"] = str(directory)
        ctx.node_config["privagg-directory-fingerprint"] = pin
    return grid, dataclasses.replace(settings, identity_directory=str(directory))


def with_additive_servers(
    grid: FakeGrid,
    run_config: dict[str, Any],
    settings: server_app.RunSettings,
    folder: Path,
) -> tuple[FakeGrid, server_app.RunSettings]:
    """The fake Grid and settings of an additive run: each aggregation server and the
    holder a node with its own key (made on its "machine"), the operator's directory
    pinned by every node and the ServerApp."""
    spec = SessionSpec(
        settings.backend, dict(settings.backend_options), max_clients=CLIENTS
    )
    keys, pubs = {}, []
    for pid in material.key_holders(spec):
        keys[pid], public = material.make_own_key(spec, pid, folder / f"m-{pid}")
        pubs.append(public)
    directory = material.write_directory(spec, pubs, folder / "op" / "directory.bin")
    fp = material.directory_fingerprint(directory)
    pinned = {"privagg-material": str(directory), "privagg-directory-fingerprint": fp}
    configs = {n: dict(ctx.node_config) | pinned for n, ctx in grid.contexts.items()}
    options = json.dumps(dict(settings.backend_options))
    for cfg in configs.values():
        cfg["privagg-backends"] = "additive"
        cfg["privagg-backend-options"] = options  # a node pins what it accepts
    servers = sorted(p for p in keys if p != "holder")
    for i, sid in enumerate(servers):
        configs[300 + i] = {
            "party-id": sid,
            "privagg-role": "server",
            "privagg-backends": "additive",
            "privagg-own-key": str(keys[sid]),
            "privagg-backend-options": options,
            **pinned,
        }
    configs[200] = {
        "privagg-holder-material": str(directory),
        "privagg-own-key": str(keys["holder"]),
        "privagg-directory-fingerprint": fp,
    }
    return _grid_with_holder(
        configs,
        run_config,
        settings,
        folder,
        aggregator_material=str(directory),
        directory_fingerprint=fp,
    )


@pytest.mark.slow
def test_same_run_on_both_runtimes_ckks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CKKS (keys dealt to the nodes, the secret key only on the holder node) runs the
    same config as in-process Federation to CKKS's precision: same adapter, metrics."""
    if "ckks" not in privagg.available_backends():
        pytest.skip("ckks not available")
    options = {"preset": "test-fast", "threads": 1}
    d = _run("seq_cls", "ckks", backend_options=options)
    fed, initial, res = _inprocess(d)
    monkeypatch.setattr(run_task, "_CACHE", {})
    grid, run_config, settings = flower_setup(
        {**d, "out": str(tmp_path / "out")}, json.dumps(options)
    )
    task = run_task.ServerRunTask(run_config)
    grid, settings = with_dealt_keys(grid, run_config, settings, task, tmp_path)
    summary = server_app.run(grid, settings, task)  # type: ignore[arg-type]
    diff = _max_diff(fed.global_state, task.global_state)
    print(f"\nckks: max |adapter diff| = {diff:.3e}")
    assert diff <= 1e-4
    assert _max_diff(fed.global_state, initial) > 50 * 1e-4
    ids = [f"client-{i}" for i in range(CLIENTS)]
    assert [r["contributors"] for r in summary["rounds"]] == [ids] * 2
    for k, want in res.final_metrics.items():
        assert abs(summary["final_metrics"][k] - want) <= 1e-2, k
