"""Many virtual clients on one machine: the same apps on Flower's simulation runtime.

:func:`simulate` runs the deployment's own ServerApp loop
(:func:`fedtrain.flower.server_app.run`) and ClientApp handler
(:func:`fedtrain.flower.client_app.privagg_query`) on Flower's simulation runtime
(``flwr.simulation.run_simulation``, Ray backend): ``nodes`` virtual SuperNodes, each
one the client ``client-<partition-id>``, plus one virtual result-holder SuperNode for
backends whose holder has a secret key (CKKS, Paillier). Each virtual node gets the
node config a real SuperNode's operator would write, built here from its
``partition-id``; a backend with a dealer has its material dealt once into one folder
per node (``material/node-<i>/client.key``, ``material/holder/holder.key``,
``material/aggregator/aggregator.key``), and each virtual node is pointed at its own
folder only. The task is ``synthetic``: the result is comparable with the in-process
runtime (:func:`inprocess_rounds`, ``privagg.run_round``) for the same round ids.

Python::

    from fedtrain.flower.simulation import SimulationConfig, simulate

    cfg = SimulationConfig(nodes=100, backend="secagg",
                           backend_options={"active": False},
                           shapes="update:float32:100000", rounds=2)
    summary = simulate(cfg)          # the ServerApp's summary (as in a deployment)

Command line (prints the summary as the last line, JSON)::

    python -m fedtrain.flower.simulation --nodes 100 --backend secagg \\
        --backend-options '{"active": false}' --values 100000 --rounds 2

No app here is a module attribute: a Flower app folder (FAB) cannot name the
simulation's ClientApp, whose node configs come from the Python caller (the local
operator), never from the run config.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run

import privagg
from fedtrain.flower import client_app as _client_app
from fedtrain.flower import server_app as _server_app
from fedtrain.flower.errors import FlowerConfigError
from fedtrain.flower.holder_auth import holder_key_fingerprint, make_holder_key
from fedtrain.flower.material import SessionSpec, deal
from fedtrain.flower.tasks import (
    DEFAULT_SHAPES,
    SyntheticServerTask,
    parse_shapes,
    synthetic_update,
)

__all__ = [
    "SimulationConfig",
    "SimulationError",
    "deal_per_node",
    "compare_with_inprocess",
    "inprocess_rounds",
    "main",
    "node_configs",
    "round_vector",
    "simulate",
]

log = logging.getLogger(__name__)

PARTITION_ID = "partition-id"
"""The node config key Flower's simulation runtime gives each virtual SuperNode."""


class SimulationError(FlowerConfigError):
    """The simulation could not run (bad configuration or a failed ServerApp)."""


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate.

    Attributes:
        nodes: virtual client SuperNodes (party ids ``client-0`` ... ``client-<n-1>``).
        backend: privagg backend name.
        backend_options: the backend's options (public values).
        shapes: the synthetic task's layout (:func:`fedtrain.flower.tasks.parse_shapes`).
        rounds: privagg rounds.
        first_round_id: the first round id (-1: a random 62-bit base, as in a
            deployment; pin it to compare with :func:`inprocess_rounds`).
        weights: one weight per client (default 1.0 each).
        max_weight: ``max_weight`` of the session.
        node_config: extra node config keys for every client node (the operator's
            policy bounds, e.g. ``privagg-ckks-presets``); ``party-id``,
            ``privagg-weight`` and the material paths are set here.
        stage_timeout: seconds the ServerApp waits for one stage's replies (a whole
            stage of ``nodes`` ClientApp calls runs on ``num_cpus / client_cpus``
            actors).
        num_cpus: CPUs given to Ray (default: every CPU of the machine).
        client_cpus: CPUs per ClientApp actor (Flower's default is 2; 1 runs one
            actor per CPU).
        object_store_mb: Ray's object store size in MiB (None: Ray's default, 30% of
            the RAM).
    """

    nodes: int = 10
    backend: str = "plain"
    backend_options: Mapping[str, Any] = field(default_factory=dict)
    shapes: str = DEFAULT_SHAPES
    rounds: int = 1
    first_round_id: int = -1
    weights: Sequence[float] | None = None
    max_weight: float = 1.0
    node_config: Mapping[str, Any] = field(default_factory=dict)
    stage_timeout: float = 600.0
    num_cpus: int | None = None
    client_cpus: float = 1.0
    object_store_mb: int | None = 512

    def party_ids(self) -> list[str]:
        """The clients' party ids, by partition id."""
        return [f"client-{i}" for i in range(self.nodes)]

    def weight_map(self) -> dict[str, float]:
        """Party id -> weight.

        Raises:
            SimulationError: ``weights`` of the wrong length.
        """
        ids = self.party_ids()
        if self.weights is None:
            return dict.fromkeys(ids, 1.0)
        if len(self.weights) != len(ids):
            raise SimulationError(f"{len(self.weights)} weights for {len(ids)} nodes")
        return {p: float(w) for p, w in zip(ids, self.weights, strict=True)}

    def spec(self) -> SessionSpec:
        """The session spec (``max_clients`` = ``nodes``)."""
        return SessionSpec(
            self.backend,
            dict(self.backend_options),
            max_clients=self.nodes,
            max_weight=self.max_weight,
        )


def deal_per_node(
    spec: SessionSpec, layout: privagg.Layout, party_ids: Sequence[str], out_dir: Path
) -> dict[str, Path]:
    """Deal every role's material, each file alone in its own folder (0700).

    :func:`fedtrain.flower.material.deal` writes all files into one folder; a machine
    should hold only its own. Here client ``party_ids[i]``'s file goes to
    ``out_dir/node-<i>/client.key``, the holder's to ``out_dir/holder/holder.key`` and
    the aggregator's to ``out_dir/aggregator/aggregator.key``. The holder also gets
    its own signing key, ``out_dir/holder/holder-identity.key``
    (:func:`fedtrain.flower.holder_auth.make_holder_key`; the run pins it).

    Returns:
        Role key ("aggregator", "holder", "holder-identity" or a party id) -> file
        path; empty for backends that need no dealer.

    Raises:
        privagg.UnsupportedError: the backend cannot be distributed.
    """
    staging = out_dir / ".staging"
    try:
        dealt = deal(spec, layout, party_ids, staging)
        out: dict[str, Path] = {}
        index = {pid: i for i, pid in enumerate(party_ids)}
        for role, src in dealt.items():
            if role in index:
                folder, name = out_dir / f"node-{index[role]}", "client.key"
            else:
                folder, name = out_dir / role, f"{role}.key"
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            out[role] = folder / name
            os.replace(src, out[role])
        if "holder" in out:
            out["holder-identity"] = make_holder_key(
                out["holder"].parent / "holder-identity.key"
            )[0]
        return out
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def node_configs(
    cfg: SimulationConfig, material: Mapping[str, Path]
) -> list[dict[str, Any]]:
    """The node config of every virtual SuperNode, indexed by its partition id.

    Partition ``i < nodes`` is client ``client-<i>``; with dealt material, partition
    ``nodes`` is the result holder. Each node names only its own material file.
    """
    out: list[dict[str, Any]] = []
    for pid, weight in cfg.weight_map().items():
        node: dict[str, Any] = {
            "privagg-backends": cfg.backend,
            **dict(cfg.node_config),
            "party-id": pid,
            "privagg-weight": weight,
        }
        if pid in material:
            node["privagg-material"] = str(material[pid])
        out.append(node)
    if "holder" in material:
        out.append(
            {
                "privagg-holder": True,
                "privagg-holder-material": str(material["holder"]),
                "privagg-identity-key": str(material["holder-identity"]),
            }
        )
    return out


def _make_client_app(nodes: Sequence[Mapping[str, Any]]) -> ClientApp:
    """A ClientApp that gives the deployment's handler the node's own node config."""
    configs = [dict(n) for n in nodes]
    app = ClientApp()

    @app.query("privagg")
    def query(msg: Message, context: Context) -> Message:
        try:
            i = int(context.node_config[PARTITION_ID])
            own = configs[i]
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise SimulationError(
                f"virtual node without a known {PARTITION_ID!r}"
            ) from exc
        node = Context(
            run_id=context.run_id,
            node_id=context.node_id,
            node_config={**context.node_config, **own},
            state=context.state,  # the same record dict: state persists per node
            run_config=context.run_config,
        )
        return _client_app.privagg_query(msg, node)

    return app


class _StoppableGrid(Grid):
    """The runtime's Grid, failing at the next call once ``stop`` is set.

    If the simulation runtime fails, ``run_simulation`` raises in the caller's thread
    while the ServerApp's thread (not a daemon) would go on waiting for replies until
    its stage timeout, keeping the process alive; :func:`simulate` sets ``stop``, so it
    ends at its next poll (0.1 s).
    """

    def __init__(self, grid: Grid, stop: threading.Event) -> None:
        self._grid = grid
        self._stop = stop

    def _check(self) -> None:
        if self._stop.is_set():
            raise SimulationError("the simulation runtime has stopped")

    def set_run(self, run: Run) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        return self._grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self._grid.create_message(
            content, message_type, dst_node_id, group_id, ttl
        )

    def get_node_ids(self) -> Iterable[int]:
        self._check()
        return self._grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        self._check()
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self._check()
        return self._grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        self._check()
        return self._grid.send_and_receive(messages, timeout=timeout)


def _make_server_app(
    settings: _server_app.RunSettings, out: dict[str, Any], stop: threading.Event
) -> ServerApp:
    """A ServerApp running the deployment's loop with ``settings``; fills ``out``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        # An exception here is re-raised by run_simulation in the caller's thread.
        out["summary"] = _server_app.run(
            _StoppableGrid(grid, stop), settings, SyntheticServerTask(settings.shapes)
        )

    return app


RAY_START_ATTEMPTS = 3
"""Ray start attempts: Ray gives its raylet a fixed 30 s to register, which a loaded
machine can miss ("The current node timed out during startup")."""


def _kill_processes_with(marker: str) -> None:
    """SIGKILL this user's processes whose command line contains ``marker`` (Linux).

    ``marker`` is this call's own fresh Ray folder, so only processes of the Ray
    instance started here match (a failed start can leave its raylet behind).
    """
    me = os.getpid()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            pid = int(proc.name)
            cmd = (proc / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if pid != me and marker.encode() in cmd:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def _ray_session(cfg: SimulationConfig) -> Iterator[dict[str, Any]]:
    """Start Ray for Flower (unless running already); stop it and its processes after.

    Ray's files go to a fresh short folder under the system temp folder (Ray's socket
    paths must stay short), removed afterwards. A start that times out is retried
    (:data:`RAY_START_ATTEMPTS`). Yields ``{"attempts": n, "seconds": s}``.

    Raises:
        SimulationError: Ray did not start.
    """
    import ray

    if ray.is_initialized():
        yield {"attempts": 0, "seconds": 0.0}
        return
    tmp = tempfile.mkdtemp(prefix="fedtrain-ray-")
    init: dict[str, Any] = {
        "num_cpus": cfg.num_cpus or os.cpu_count() or 1,
        "include_dashboard": False,
        "_temp_dir": tmp,
        "logging_level": "WARNING",
        "log_to_driver": False,
        # as Flower's RayBackend does: the actors import this process's modules
        "runtime_env": {"env_vars": {"PYTHONPATH": os.pathsep.join(sys.path)}},
    }
    if cfg.object_store_mb is not None:
        init["object_store_memory"] = cfg.object_store_mb * 1024 * 1024
    try:
        t0 = time.monotonic()
        for attempt in range(1, RAY_START_ATTEMPTS + 1):
            try:
                ray.init(**init)
                break
            except Exception as exc:  # Ray raises a bare Exception on a slow start
                ray.shutdown()
                _kill_processes_with(tmp)
                if attempt == RAY_START_ATTEMPTS:
                    raise SimulationError(
                        f"Ray did not start ({attempt} attempts): {exc}"
                    ) from exc
                log.warning("Ray did not start (%s); retrying", exc)
        yield {"attempts": attempt, "seconds": time.monotonic() - t0}
    finally:
        if ray.is_initialized():
            ray.shutdown()
        _kill_processes_with(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def simulate(
    cfg: SimulationConfig, workdir: str | Path | None = None
) -> dict[str, Any]:
    """Run ``cfg`` on Flower's simulation runtime; return the ServerApp's summary.

    Args:
        cfg: what to simulate.
        workdir: folder for the dealt material (default: a temporary folder, removed
            afterwards).

    Returns:
        The summary of :func:`fedtrain.flower.server_app.run` (per round: round id,
        contributors, dropouts, stages, seconds, the recovered ``aggregate``), plus
        ``simulation_seconds`` (wall time of ``run_simulation``: actors, ServerApp,
        stop), ``ray_start_seconds`` and ``ray_start_attempts`` (0: a Ray instance
        was running already, and is left running) and ``virtual_nodes``.

    Raises:
        SimulationError: a bad configuration, or the ServerApp did not finish.
        privagg.PrivaggError: the ServerApp's own failure (e.g. too few survivors).
    """
    if cfg.nodes < 1 or cfg.rounds < 1:
        raise SimulationError("nodes and rounds must be >= 1")
    if cfg.client_cpus <= 0:
        raise SimulationError("client_cpus must be > 0")
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(
                tempfile.TemporaryDirectory(prefix="fedtrain-sim-")
            )
        work = Path(workdir)
        work.mkdir(parents=True, exist_ok=True)
        layout = parse_shapes(cfg.shapes)
        material = deal_per_node(cfg.spec(), layout, cfg.party_ids(), work / "material")
        nodes = node_configs(cfg, material)
        settings = _server_app.RunSettings(
            backend=cfg.backend,
            backend_options=dict(cfg.backend_options),
            shapes=cfg.shapes,
            rounds=cfg.rounds,
            min_nodes=len(nodes),
            node_wait=60.0,
            stage_timeout=cfg.stage_timeout,
            holder="node" if "holder" in material else "server",
            holder_key=holder_key_fingerprint(material["holder-identity"])
            if "holder" in material
            else "",
            aggregator_material=str(material.get("aggregator", "")),
            max_weight=cfg.max_weight,
            first_round_id=cfg.first_round_id,
        )
        out: dict[str, Any] = {}
        ray_start = stack.enter_context(_ray_session(cfg))
        backend_config: dict[str, Any] = {
            "client_resources": {"num_cpus": cfg.client_cpus, "num_gpus": 0.0},
        }
        from flwr.simulation import run_simulation

        stop = threading.Event()
        stack.callback(stop.set)  # see _StoppableGrid
        t0 = time.monotonic()
        with warnings.catch_warnings():
            # Ray's notice about a future default for GPU-less workers (none here)
            warnings.filterwarnings(
                "ignore",
                message="Tip: In future versions of Ray",
                category=FutureWarning,
            )
            run_simulation(
                server_app=_make_server_app(settings, out, stop),
                client_app=_make_client_app(nodes),
                num_supernodes=len(nodes),
                backend_config=backend_config,
            )
        elapsed = time.monotonic() - t0
    if "summary" not in out:
        raise SimulationError("the simulated ServerApp produced no summary")
    summary: dict[str, Any] = out["summary"]
    summary["simulation_seconds"] = elapsed
    summary["ray_start_seconds"] = ray_start["seconds"]
    summary["ray_start_attempts"] = ray_start["attempts"]
    summary["virtual_nodes"] = len(nodes)
    return summary


def inprocess_rounds(
    cfg: SimulationConfig, round_ids: Sequence[int]
) -> list[tuple[npt.NDArray[np.float64], float]]:
    """The same rounds with every role in this process (``privagg.run_round``).

    Each client's update is the synthetic task's for its party id and round id, with
    the same weights as :func:`simulate`; the session is set up once.

    Returns:
        Per round id: the recovered sum as a flat vector (layout order, each value
        cast to its tensor's dtype) and the round's seconds.
    """
    layout = parse_shapes(cfg.shapes)
    session = (
        cfg.spec()
        .backend_object()
        .setup(layout, max_clients=cfg.nodes, max_weight=cfg.max_weight)
    )
    weights = cfg.weight_map()
    out = []
    for r in round_ids:
        updates = {p: synthetic_update(p, r, layout) for p in weights}
        t = time.perf_counter()
        res = privagg.run_round(session, updates, weights=weights, round_id=r)
        seconds = time.perf_counter() - t
        # through each tensor's dtype, as the simulated ServerApp's aggregate is
        out.append((layout.flatten(res.aggregate), seconds))
    return out


def round_vector(
    layout: privagg.Layout, aggregate: Mapping[str, Any]
) -> npt.NDArray[np.float64]:
    """A summary round's ``aggregate`` (name -> nested lists) as one flat vector."""
    zeros = layout.unflatten(np.zeros(layout.size))
    return layout.flatten(
        {k: np.asarray(aggregate[k], dtype=z.dtype) for k, z in zeros.items()}
    )


def compare_with_inprocess(
    cfg: SimulationConfig, summary: Mapping[str, Any]
) -> dict[str, Any]:
    """Run :func:`simulate`'s rounds again in-process and compare the sums.

    Returns:
        ``inprocess_round_seconds``, ``max_abs_diff_vs_inprocess`` (largest absolute
        difference over every round and value), ``tolerance`` (the backend's declared
        error bound of one recovered sum, ``tolerance(n_clients=nodes,
        max_abs=max_weight)``) and ``within_tolerance``: every value of both sums
        within ``2 * tolerance`` of each other (each is within ``tolerance`` of the
        exact sum), plus one ulp of its tensor's dtype (each side is cast to it).
    """
    layout = parse_shapes(cfg.shapes)
    rounds = summary["rounds"]
    ref = inprocess_rounds(cfg, [int(r["round"]) for r in rounds])
    tol = (
        cfg.spec()
        .backend_object()
        .tolerance(n_clients=cfg.nodes, max_abs=cfg.max_weight)
    )
    # each value's cast to its tensor's dtype rounds by at most half an ulp per side
    eps = round_vector(
        layout,
        {
            k: np.full(z.shape, np.finfo(z.dtype).eps, dtype=z.dtype)
            for k, z in layout.unflatten(np.zeros(layout.size)).items()
        },
    )
    diff, within = 0.0, True
    for r, (vec, _) in zip(rounds, ref, strict=True):
        d = np.abs(round_vector(layout, r["aggregate"]) - vec)
        diff = max(diff, float(np.max(d, initial=0.0)))
        within = within and bool(np.all(d <= 2 * tol + eps * np.abs(vec)))
    return {
        "inprocess_round_seconds": [s for _, s in ref],
        "max_abs_diff_vs_inprocess": diff,
        "tolerance": tol,
        "within_tolerance": within,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run a simulation from the command line; print the summary as JSON.

    Args:
        argv: command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The process exit code.
    """
    p = argparse.ArgumentParser(
        description="Run the privagg Flower apps on Flower's simulation runtime."
    )
    p.add_argument("--nodes", type=int, default=10, help="virtual client SuperNodes")
    p.add_argument("--backend", default="plain")
    p.add_argument("--backend-options", default="{}", help="JSON object")
    p.add_argument("--rounds", type=int, default=1)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--values", type=int, help="one float32 update of N values")
    size.add_argument("--shapes", help="synthetic layout, e.g. 'w:float32:3x4'")
    p.add_argument(
        "--node-config", default="{}", help="JSON object: extra keys for every client"
    )
    p.add_argument("--first-round-id", type=int, default=-1)
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs given to Ray")
    p.add_argument("--client-cpus", type=float, default=1.0, help="CPUs per actor")
    p.add_argument("--stage-timeout", type=float, default=600.0)
    p.add_argument(
        "--compare",
        action="store_true",
        help="also run the rounds in-process; report the largest difference",
    )
    args = p.parse_args(argv)
    try:
        options = json.loads(args.backend_options)
        extra = json.loads(args.node_config)
    except ValueError as exc:
        p.error(f"not JSON: {exc}")
    if not isinstance(options, dict) or not isinstance(extra, dict):
        p.error("--backend-options and --node-config must be JSON objects")
    shapes = (
        f"update:float32:{args.values}"
        if args.values is not None
        else (args.shapes or DEFAULT_SHAPES)
    )
    cfg = SimulationConfig(
        nodes=args.nodes,
        backend=args.backend,
        backend_options=options,
        shapes=shapes,
        rounds=args.rounds,
        first_round_id=args.first_round_id,
        node_config=extra,
        stage_timeout=args.stage_timeout,
        num_cpus=args.num_cpus,
        client_cpus=args.client_cpus,
    )
    summary = simulate(cfg)
    rounds = summary["rounds"]
    report: dict[str, Any] = {
        "backend": summary["backend"],
        "nodes": cfg.nodes,
        "values": parse_shapes(shapes).size,
        "round_seconds": [r["seconds"] for r in rounds],
        "contributors": [len(r["contributors"]) for r in rounds],
        "dropped": [r["dropped"] for r in rounds],
        "drop_reasons": [r.get("drop_reasons", {}) for r in rounds],
        "stages": [r["stages"] for r in rounds],
        "simulation_seconds": summary["simulation_seconds"],
        "ray_start_seconds": summary["ray_start_seconds"],
    }
    if args.compare:
        report.update(compare_with_inprocess(cfg, summary))
    print(json.dumps(report, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
