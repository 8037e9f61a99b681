"""The ``fedtrain`` task: a whole :class:`~fedtrain.config.RunConfig` run over Flower.

The run config key ``fedtrain-run`` holds the run, as JSON, with the keys of a
``fedtrain run`` TOML file (:func:`fedtrain.runfile.parse_run_dict` checks them: an
unknown key, a wrong type or a bad value is a :class:`~fedtrain.errors.ConfigError`
naming the key): the ``RunConfig`` (every task, model, every
LoRA mode, rounds, server optimizer, weighting, device, seeds), ``[data]`` and
``[federation]`` (how the training data is split into clients) and ``out`` (where the
ServerApp exports the final adapter). Both sides build everything from it with the
in-process runtime's own pieces:

* ClientApp (:func:`client_update`): the node's ``partition-id`` (node config) picks its
  part of the training data, partitioned exactly as ``fedtrain run`` does
  (:func:`fedtrain.experiment.load_task_data`, :func:`fedtrain.data.partition`); its
  party id must be ``client-<partition-id>``. It sets the broadcast global state
  (:func:`fedtrain.client.apply_global`, :func:`fedtrain.client.load_client_start`) and
  runs the in-process client step :func:`fedtrain.client.local_update` with the same
  arguments as :class:`fedtrain.server.Federation` (batch order from
  :func:`fedtrain.client.batch_rng`, optional ``update_clip``); its local optimizer
  state is kept in the node's Flower state across rounds (as in-process).
* ServerApp (:class:`ServerRunTask`): the global state, the layout of the mode's
  message, the server step :func:`fedtrain.strategy.server_step` with the configured
  FedAvg/FedAdam/FedYogi (:func:`fedtrain.strategy.make_strategy`), evaluation after
  each round with :func:`fedtrain.evaluate.evaluate` on the held-out data, and at the
  end the peft export (:func:`fedtrain.checkpoint.export_adapter` and the model
  sidecar) to ``out/adapter``.

Weights: ``uniform`` (``1 / clients``) or ``examples`` (``n_k / sum n``), as in-process
(client-level DP: 1 each, the sum divided by the number of contributors). They are
public: every party computes every client's example count from the public partition,
and the ServerApp divides the recovered sum by the contributors' total.

The model, tokenizer and data are loaded once per process and cached (one entry per
side and run), not once per round. Each round's broadcast carries the training round
(1-based, as in-process; ``alternating`` and ``flora`` depend on it) beside the global
state.

Record-level DP and client sampling use the in-process code (:mod:`fedtrain.planning`):
each client runs DP-SGD with the run's noise multiplier and :func:`~fedtrain.planning.
dp_rng` randomness; the ServerApp samples each round's clients
(:meth:`ServerRunTask.participants`, :func:`~fedtrain.planning.sample_clients`: the
round goes to them only) and keeps the privacy ledger (:func:`~fedtrain.planning.
open_book`) in ``checkpoint-dir/privacy`` (else ``out/privacy``), checked before a
round's first request and recorded after recovery, before the sum is applied. The
task's state is kept in the ServerApp checkpoint (:meth:`ServerRunTask.state`).

Client-level DP uses the in-process code too (:func:`fedtrain.planning.client_dp`):
each client clips its update to L2 norm ``clip`` (``local_update(clip=...)``, i.e.
:func:`privagg.dp.clip_l2`) and sends it with weight 1; its privagg client role adds
the noise share ``z C / sqrt(min_clients)`` after encoding, before protection. Every
node loads its privagg role with that share (:func:`session_noise`, computed from the
node's own run config and the session's backend: the ServerApp sends no noise
parameter), and so does the ServerApp's aggregator (:meth:`ServerRunTask.
session_noise`), as ``Federation`` sets up its session with it. The ledger is
checked before a round's first request for ``(min_clients, sampled)`` contributors
and records each applied release with its contributor count, as in-process. A round
that samples fewer than ``min_clients`` clients sends nothing; a recovered sum of
fewer than ``min_clients`` contributions is neither applied nor recorded, as the
in-process holder refuses to output it (over Flower the sum has reached the
ServerApp, which discards it: see ``docs/flower.md``). The backend's per-coordinate bound must
be at least the clip: a ``backend-options`` bound below it is a
:class:`~fedtrain.errors.ConfigError`, and so is a default bound below it when
``backend-options`` sets none (in-process, ``Federation`` sets the bound to the
clip; over Flower the session's options are the run config's, so set it there).

A node's own floors on the run's DP (node config ``fedtrain-min-noise-multiplier``,
``fedtrain-min-dp-clients``, ``fedtrain-require-dp``, ``fedtrain-max-epsilon``,
``fedtrain-max-delta``; :class:`fedtrain.flower.policy.DPFloors`) are checked by
:func:`check_dp_floors` in :func:`client_update` before the node loads its model or
trains, and in :func:`session_noise` before a node computes its share.

Every task runs here (``seq_cls``, ``token_cls`` and ``causal_lm``, e.g. SmolLM2 on
instructions), with the in-process runtime's encoding, evaluation and export.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict

import privagg
from fedtrain.client import (
    LocalTraining,
    apply_global,
    batch_rng,
    build_handle,
    dp_module_for,
    initial_state,
    load_client_start,
    local_update,
)
from fedtrain.config import RunConfig
from fedtrain.data import RawDataset, partition
from fedtrain.errors import ConfigError, PrivacyRecordError
from fedtrain.evaluate import MAIN_METRIC, evaluate
from fedtrain.flower.errors import FlowerConfigError, PolicyError
from fedtrain.flower.interfaces import LocalUpdate
from fedtrain.flower.policy import DPFloors
from fedtrain.lora import LoraHandle, client_message
from fedtrain.models import (
    Encoded,
    encode,
    load_tokenizer,
    model_pooling,
    pick_device,
    write_model_sidecar,
)
from fedtrain.planning import (
    ClientDP,
    client_backend_options,
    client_dp,
    dp_accountant,
    dp_rng,
    local_steps,
    open_book,
    record_noise_multiplier,
    record_plan,
    sample_clients,
)
from fedtrain.privacy import PrivacyBook
from fedtrain.runfile import RunFile, parse_run_dict
from fedtrain.strategy import Strategy, make_strategy, server_step
from fedtrain.train import DPSGD
from privagg import Backend, Layout, NoiseShare

__all__ = [
    "GLOBAL_RECORD",
    "ROUND_RECORD",
    "RUN_KEY",
    "FlowerRun",
    "ServerRunTask",
    "client_update",
    "check_dp_floors",
    "run_config_entry",
    "session_noise",
]

RUN_KEY = "fedtrain-run"
"""The run config key holding the run (JSON, the keys of a ``fedtrain run`` file)."""

GLOBAL_RECORD = "fedtrain.run.global"
"""Key of the ArrayRecord carrying the global state in a round's first request."""

ROUND_RECORD = "fedtrain.run.round"
"""Key of the ConfigRecord carrying the 1-based training round."""

_OPT_STATE = "fedtrain.run.opt"
_STATE_FACTS = "fedtrain.run.facts"


def run_config_entry(run: Mapping[str, Any]) -> dict[str, str]:
    """The Flower run config entry for a run given as a run-file dict.

    Args:
        run: the run, with the keys of a ``fedtrain run`` TOML file.

    Returns:
        ``{"fedtrain-run": canonical JSON}``.
    """
    return {RUN_KEY: json.dumps(run, sort_keys=True)}


@dataclass(frozen=True)
class FlowerRun:
    """The run a Flower run config describes (checked).

    Attributes:
        run: the parsed run file.
        key: a digest of the canonical JSON (names the per-process cache entries).
    """

    run: RunFile
    key: str

    @property
    def config(self) -> RunConfig:
        """The run configuration."""
        return self.run.config

    @classmethod
    def from_run_config(cls, cfg: Mapping[str, Any]) -> FlowerRun:
        """Read and check ``fedtrain-run`` (and its agreement with ``backend`` and
        ``rounds`` when the run config sets them).

        Raises:
            FlowerConfigError: missing, not JSON, or a setting Flower cannot run.
            ConfigError: an invalid run (the message names the key).
        """
        text = cfg.get(RUN_KEY)
        if not isinstance(text, str) or not text:
            raise FlowerConfigError(
                f"run config {RUN_KEY!r} must hold the run as a JSON object"
            )
        if len(text) > 1 << 20:
            raise FlowerConfigError(f"run config {RUN_KEY!r} is longer than 1 MiB")
        try:
            d = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise FlowerConfigError(f"run config {RUN_KEY!r} is not JSON") from exc
        run = parse_run_dict(d)
        c = run.config
        backend = cfg.get("backend")
        if backend is not None and backend != c.backend:
            raise FlowerConfigError(
                f"run config backend {backend!r} differs from the run's {c.backend!r}"
            )
        rounds = cfg.get("rounds")
        if rounds is not None and int(rounds) != c.rounds.rounds:
            raise FlowerConfigError(
                f"run config rounds={rounds} differs from the run's "
                f"rounds.rounds={c.rounds.rounds}"
            )
        canonical = json.dumps(d, sort_keys=True)
        return cls(run, hashlib.sha256(canonical.encode()).hexdigest())


class _Shared:
    """What one process loads once per run: data, tokenizer, model, LoRA handle."""

    def __init__(self, fr: FlowerRun) -> None:
        c = fr.config
        self.fr = fr
        parts, ev = _load_parts(fr)
        self.parts: list[RawDataset] = parts
        self.eval_data = ev
        self.label_names = list(ev.label_names)
        self.n_examples = [len(p) for p in self.parts]
        self.device = pick_device(c.device)
        self.tokenizer = load_tokenizer(c.model)
        self.handle: LoraHandle = build_handle(c, self.label_names, self.device)
        self.r_max = self.handle.modules[0].a.shape[0]
        self._encoded: dict[int, Encoded] = {}
        self._eval_enc: Encoded | None = None
        self.dp_module: Any = None

    def n_examples_by_id(self) -> dict[str, int]:
        """In-process client id -> its (public) number of training examples."""
        return dict(zip(self.client_ids(), self.n_examples, strict=True))

    def noise_multiplier(self, config: RunConfig) -> float:
        """Record level: DP-SGD's z as in-process (configured or calibrated from the
        public partition), computed once per process (:func:`_record_z`)."""
        return _record_z(self.fr)

    def client_ids(self) -> list[str]:
        """The in-process runtime's client ids (``client<i>``)."""
        return [f"client{i}" for i in range(len(self.parts))]

    def encoded(self, part: int, max_len: int) -> Encoded:
        if part not in self._encoded:
            self._encoded[part] = encode(self.parts[part], self.tokenizer, max_len)
        return self._encoded[part]

    def eval_encoded(self, max_len: int) -> Encoded:
        if self._eval_enc is None:
            self._eval_enc = encode(self.eval_data, self.tokenizer, max_len)
        return self._eval_enc


_CACHE: dict[tuple[str, str], _Shared] = {}

_PARTS: dict[str, tuple[list[RawDataset], RawDataset]] = {}
_RECORD_Z: dict[str, float] = {}


def _load_parts(fr: FlowerRun) -> tuple[list[RawDataset], RawDataset]:
    """The run's training data partitioned as ``fedtrain run`` does, and its eval
    data (cached per process; no tokenizer or model)."""
    if fr.key not in _PARTS:
        train, ev = fr.run.load_data()
        fed = fr.run.federation
        parts = partition(
            train, fed.num_clients, fed.partition, fed.seed, alpha=fed.alpha
        )
        if len(_PARTS) >= 4:
            _PARTS.pop(next(iter(_PARTS)))
        _PARTS[fr.key] = (list(parts), ev)
    return _PARTS[fr.key]


def _record_z(fr: FlowerRun) -> float:
    """Record level: DP-SGD's z as in-process, configured or calibrated from the
    public partition's sizes (cached per process; loads the data, not the model)."""
    c = fr.config
    if not c.privacy.calibrate:
        return c.privacy.noise_multiplier
    if fr.key not in _RECORD_Z:
        parts, _ = _load_parts(fr)
        sizes = {f"client{i}": len(p) for i, p in enumerate(parts)}
        if len(_RECORD_Z) >= 16:
            _RECORD_Z.pop(next(iter(_RECORD_Z)))
        _RECORD_Z[fr.key] = record_noise_multiplier(c, sizes, c.privacy.accountant)
    return _RECORD_Z[fr.key]


def _shared(fr: FlowerRun, side: str) -> _Shared:
    """The process's cached model and data for ``fr`` (one entry per side)."""
    key = (fr.key, side)
    if key not in _CACHE:
        if len(_CACHE) >= 4:  # a long-lived process serving many runs
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = _Shared(fr)
    return _CACHE[key]


def _slot(part: int, n_parts: int) -> int:
    """Partition ``part``'s slot: its client id's place among the run's client ids
    sorted as :class:`~fedtrain.server.Federation` sorts them (``client10`` comes
    before ``client2``), so batch order and ``flora`` slots agree with in-process."""
    ids = sorted(f"client{i}" for i in range(n_parts))
    return ids.index(f"client{part}")


def _weight(fr: FlowerRun, sh: _Shared, part: int) -> float:
    """Client ``part``'s public weight, as in-process without failures."""
    if fr.config.privacy.level == "client":
        return 1.0  # sensitivity C in the sum
    if fr.config.rounds.weighting == "uniform":
        return 1.0 / len(sh.parts)
    return sh.n_examples[part] / sum(sh.n_examples)


def _to_record(state: Mapping[str, npt.NDArray[Any]]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in state.items()})


def _partition_of(party: str, n_parts: int) -> int:
    prefix = "client-"
    tail = party[len(prefix) :] if party.startswith(prefix) else ""
    if not tail.isdigit() or not 0 <= int(tail) < n_parts:
        raise FlowerConfigError(
            f"party id {party[:80]!r} is not client-<i> with i in [0, {n_parts})"
        )
    return int(tail)


_CLIENT_DP: dict[tuple[str, float | None, int], ClientDP | None] = {}


def _client_dp(fr: FlowerRun, scale: float | None, dimension: int) -> ClientDP | None:
    """The run's client-level DP on a backend of fixed-point ``scale`` (None: reals)
    for updates of ``dimension`` values, as ``Federation`` plans it (cached per
    process: calibration is not redone at every stage)."""
    key = (fr.key, scale, dimension)
    if key not in _CLIENT_DP:
        if len(_CLIENT_DP) >= 16:
            _CLIENT_DP.pop(next(iter(_CLIENT_DP)))
        _CLIENT_DP[key] = client_dp(
            fr.config,
            n_clients=fr.run.federation.num_clients,
            scale=scale,
            dimension=dimension,
        )
    return _CLIENT_DP[key]


def session_noise(
    run_config: Mapping[str, Any],
    backend: Backend,
    layout: Layout,
    node_config: Mapping[str, Any] | None = None,
) -> NoiseShare | None:
    """The distributed-DP noise share every privagg role of the run's session is
    loaded with: client level, :meth:`fedtrain.planning.ClientDP.session_noise` of
    the run (the same share ``Federation`` sets its session up with); None otherwise.

    Args:
        run_config: this process's Flower run config (``fedtrain-run``).
        backend: the session's backend (its fixed-point scale enters calibration).
        layout: the session's layout (the headroom covers every coordinate).
        node_config: a node's node config: its DP floors (:func:`check_dp_floors`)
            are checked before the share is computed; None (the ServerApp): none.

    Raises:
        PolicyError: the run is below the node's DP floors.
        FlowerConfigError, ConfigError: as :meth:`FlowerRun.from_run_config`; or
            (client level) ``backend`` is not the run config's backend with its
            ``backend-options``' fixed-point scale: the session the ServerApp names
            would be noised for another scale than the one the ledger accounts for
            (review of #14).
    """
    fr = FlowerRun.from_run_config(run_config)
    if node_config is not None:
        check_dp_floors(fr, run_config, node_config, layout)
    if fr.config.privacy.level != "client":
        return None
    scale = privagg.fixed_point_scale(backend)
    if backend.name != fr.config.backend or scale != _run_scale(
        fr.config.backend, _session_options(run_config)
    ):
        raise FlowerConfigError(
            "the session's backend or its fixed-point scale is not the run config's "
            "(backend, backend-options): the noise would not be the one the privacy "
            "ledger accounts for"
        )
    cdp = _client_dp(fr, scale, layout.size)
    assert cdp is not None
    return cdp.session_noise()


_RUN_SCALE: dict[tuple[str, str], float | None] = {}


def _run_scale(name: str, opts: Mapping[str, Any]) -> float | None:
    """The fixed-point scale of backend ``name`` with the run config's options
    (cached per process)."""
    key = (name, json.dumps(opts, sort_keys=True, default=repr))
    if key not in _RUN_SCALE:
        if len(_RUN_SCALE) >= 16:
            _RUN_SCALE.pop(next(iter(_RUN_SCALE)))
        _RUN_SCALE[key] = privagg.fixed_point_scale(privagg.get_backend(name, **opts))
    return _RUN_SCALE[key]


def _session_options(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The session's backend options: the run config's ``backend-options`` (what
    the ServerApp sets every role up with)."""
    try:
        opts = json.loads(str(run_config.get("backend-options", "{}")) or "{}")
    except (ValueError, RecursionError) as exc:
        raise FlowerConfigError("run config 'backend-options' is not JSON") from exc
    if not isinstance(opts, dict):
        raise FlowerConfigError("run config 'backend-options' must be a JSON object")
    return opts


class ServerRunTask:
    """Server side of the ``fedtrain`` task (see the module docstring).

    Args:
        run_config: the Flower run config.
    """

    def __init__(self, run_config: Mapping[str, Any]) -> None:
        self.run = FlowerRun.from_run_config(run_config)
        c = self.run.config
        # client level: the session's backend checked before anything is loaded
        backend = (
            self._client_backend(run_config) if c.privacy.level == "client" else None
        )
        self.shared = sh = _shared(self.run, "server")
        self.mode = str(c.lora.mode)
        self.global_state = initial_state(sh.handle, self.mode)
        apply_global(sh.handle, c.lora, self.global_state)
        ro = c.rounds
        self.opt: Strategy = make_strategy(
            ro.server_opt, ro.server_lr, ro.server_betas, ro.server_tau
        )
        template = client_message(
            self.mode,
            sh.handle.get(),
            self.global_state,
            slot=0,
            n_slots=len(sh.parts),
            rank=1,
            r_max=sh.r_max,
        )
        self._layout = Layout.from_arrays(template)
        self.train_round = 0
        self.initial_metrics = self.evaluate()
        self.history: list[dict[str, Any]] = []
        self.adapter_dir: Path | None = None
        # in-process client ids, in Federation's order; the round's sampled clients
        self.client_ids = sorted(sh.client_ids())
        self.sampled: list[str] = []
        self.draws = 0  # samplings drawn, as Federation counts them
        self._next: list[str] | None = None
        self.run_id = secrets.token_hex(8)
        self.book: PrivacyBook | None = None
        self.client_dp: ClientDP | None = None
        folder = str(run_config.get("checkpoint-dir", "")) or self.run.run.out
        if c.privacy.level == "record":
            self.book = open_book(
                c,
                folder or None,
                noise_multiplier=sh.noise_multiplier(c),
                accountant=c.privacy.accountant,
            )
        elif backend is not None:
            scale = privagg.fixed_point_scale(backend)
            self.client_dp = _client_dp(self.run, scale, self._layout.size)
            assert self.client_dp is not None
            self.book = open_book(
                c,
                folder or None,
                noise_multiplier=self.client_dp.noise_multiplier,
                accountant=dp_accountant(c, scale),
                client_event=self.client_dp.event,
            )

    def _client_backend(self, run_config: Mapping[str, Any]) -> Backend:
        """Client level: the session's backend, checked as ``Federation`` checks it
        (its per-coordinate bound at least the clip).

        Raises:
            ConfigError: a bound below the clip, given in ``backend-options`` or (none
                given) the backend's default.
        """
        c = self.run.config
        opts = _session_options(run_config)
        client_backend_options(c, c.backend, opts)  # a given bound below the clip
        backend = privagg.get_backend(c.backend, **opts)
        bound = backend.value_bound
        if bound is not None and not bound >= c.privacy.clip:
            key = privagg.value_bound_option(backend)
            raise ConfigError(
                f"backend {c.backend!r}: its default bound {bound} is below the client "
                f"clip {c.privacy.clip}: clipped updates would overflow; set run config "
                f"'backend-options' {{\"{key}\": {c.privacy.clip}}} (in-process, "
                "Federation sets it to the clip)"
            )
        return backend

    def session_noise(self, backend: Backend, layout: Layout) -> NoiseShare | None:
        """The clients' noise share for the session on ``backend`` (client level;
        the share every node computes with :func:`session_noise`), else None.

        Raises:
            FlowerConfigError: ``backend`` has another fixed-point scale than the
                run config's backend (the ledger would account the wrong noise).
        """
        cdp = self.client_dp
        if cdp is None:
            return None
        if privagg.fixed_point_scale(backend) != cdp.scale or layout != self._layout:
            raise FlowerConfigError(
                "the session's backend or layout is not the one the privacy ledger "
                "accounts for"
            )
        return cdp.session_noise()

    def layout(self) -> Layout:
        """The layout of a client's message (the mode's)."""
        return self._layout

    def evaluate(self) -> dict[str, float]:
        """The in-process evaluation of the current global model."""
        c, sh = self.run.config, self.shared
        return evaluate(
            sh.handle.model,
            sh.eval_encoded(c.max_len),
            label_names=sh.label_names,
            device=sh.device,
            batch_size=c.eval_batch_size,
            bf16=c.bf16,
        )

    def _plan(self, ids: list[str]) -> dict[str, tuple[float, int]]:
        return record_plan(self.run.config, self.shared.n_examples_by_id(), ids)

    def participants(self, round_id: int, clients: Sequence[str]) -> list[str]:
        """The round's clients, sampled as in-process (:func:`sample_clients` over
        every client of the run, with the same training round and draw count), that
        are connected; party ids in ``clients`` order. A sampled client that is not
        connected is charged under record-level DP like one that dropped out."""
        self.draws += 1
        sampled = sample_clients(
            self.run.config, self.client_ids, self.train_round + 1, self.draws
        )
        cdp = self.client_dp
        if cdp is not None and len(sampled) < cdp.min_clients:
            # fewer than the noise is sized for: nothing trains, nothing is released
            # (as in-process)
            sampled = []
        self._next = sampled
        n_parts = len(self.shared.parts)
        slots = {
            self.shared.client_ids()[_partition_of(p, n_parts)]: p for p in clients
        }
        chosen = {slots[cid] for cid in sampled if cid in slots}
        return [p for p in clients if p in chosen]

    def broadcast(self, round_id: int) -> RecordDict:
        """The global state and the training round (1-based), public.

        Record level: the round's worst case is checked against the budget first.

        Raises:
            privagg.BudgetExceededError: the round could exceed ``target_epsilon``
                (raised before any request of the round is sent).
        """
        sampled = list(self.client_ids) if self._next is None else self._next
        self._next = None
        if self.book is not None and sampled:
            cdp = self.client_dp
            self.book.check(
                self._plan(sampled),
                () if cdp is None else (cdp.min_clients, len(sampled)),
            )
        self.sampled = sampled
        self.train_round += 1
        return RecordDict(
            {
                GLOBAL_RECORD: _to_record(self.global_state),
                ROUND_RECORD: ConfigRecord({"round": self.train_round}),
            }
        )

    def apply(
        self,
        round_id: int,
        aggregate: Mapping[str, npt.NDArray[np.floating]],
        contributors: tuple[str, ...],
    ) -> dict[str, Any]:
        """The server step on the recovered weighted sum, then evaluation."""
        c, sh = self.run.config, self.shared
        n_parts = len(sh.parts)
        slots = {p: _partition_of(p, n_parts) for p in contributors}
        weights = {p: _weight(self.run, sh, s) for p, s in slots.items()}
        facts: dict[str, Any] = {}
        cdp = self.client_dp
        if cdp is not None and len(contributors) < cdp.min_clients:
            # as the in-process holder refuses to output a sum of fewer contributions
            # than the noise is sized for: not recorded, not applied
            if contributors:
                facts["skipped"] = (
                    f"{len(contributors)} contributions, fewer than min_clients="
                    f"{cdp.min_clients}: the sum is not applied"
                )
            contributors = ()
        elif self.book is not None:
            # the release happened: record it before applying anything; every client
            # sent the round's request is charged (the ServerApp cannot tell which
            # of them trained)
            self.book.record(
                self.train_round,
                self._plan(self.sampled),
                [sh.client_ids()[s] for s in slots.values()],
                run_id=self.run_id,
            )
            facts = self._spent()
        if contributors:
            sh.handle.begin_round(self.train_round)  # alternating: the round's factor
            self.global_state = server_step(
                self.opt,
                self.global_state,
                dict(aggregate),
                # client level: unit weights; dividing by the contributor count is
                # post-processing (it depends on no client's data)
                float(len(contributors)) if cdp is not None else sum(weights.values()),
                mode=self.mode,
                phase=sh.handle.phase if self.mode == "alternating" else None,
                slot_weights={
                    _slot(slots[p], n_parts): weights[p] for p in contributors
                },
                r_max=sh.r_max,
                scaling=c.lora.scaling,
            )
            apply_global(sh.handle, c.lora, self.global_state)
        metrics = self.evaluate()
        self.history.append({"round": self.train_round, "metrics": metrics})
        return {
            "train_round": self.train_round,
            "metrics": metrics,
            **facts,
            **(self._spent() if cdp is not None else {}),
        }

    def _spent(self) -> dict[str, Any]:
        if self.book is None:
            return {}
        eps = self.book.spent()
        return {
            "epsilon": float(eps["epsilon"]),
            "epsilon_per_client": dict(eps.get("per_client", {})),
        }

    def possibly_released(self, round_id: int) -> None:
        """A resumed run's round ``round_id`` was in flight when the ServerApp died:
        its aggregate may have been released, so the privacy ledger is charged for it
        (every client it was sent to) unless the ledger already recorded it."""
        if self.book is None or self.train_round in self.book.releases():
            return
        cdp = self.client_dp
        self.book.record(
            self.train_round,
            self._plan(self.sampled),
            # client level: the worst case of a sum the ServerApp would have applied
            # (min_clients shares); only the count is written
            [] if cdp is None else self.sampled[: cdp.min_clients],
            run_id=self.run_id,
        )

    def state(self) -> dict[str, npt.NDArray[Any]]:
        """Checkpoint content: the global state, the server optimizer's moments, the
        training round, the history, the round's clients and the ledger's counts."""
        facts = {
            "run": self.run.key,
            "train_round": self.train_round,
            "history": self.history,
            "sampled": self.sampled,
            "draws": self.draws,
            "ledger_counts": {} if self.book is None else self.book.counts(),
        }
        text = json.dumps(facts, sort_keys=True).encode()
        return {
            **{f"global.{k}": v for k, v in self.global_state.items()},
            **self.opt.arrays(),
            _STATE_FACTS: np.frombuffer(text, dtype=np.uint8).copy(),
        }

    def load_state(self, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
        """Restore :meth:`state` (a resumed ServerApp).

        Raises:
            FlowerConfigError: the checkpoint is of another ``fedtrain-run``, or
                unreadable.
            PrivacyRecordError: the privacy ledgers hold fewer releases than the
                checkpoint saw (deleted or replaced: resuming would under-report
                epsilon).
        """
        c = self.run.config
        try:
            facts = json.loads(bytes(np.asarray(arrays[_STATE_FACTS], np.uint8)))
            run_key = facts["run"]
            train_round = int(facts["train_round"])
            history = list(facts["history"])
            sampled = [str(x) for x in facts["sampled"]]
            draws = int(facts["draws"])
            counts = {str(k): int(v) for k, v in dict(facts["ledger_counts"]).items()}
            state = {k[7:]: arrays[k] for k in arrays if k.startswith("global.")}
        except (KeyError, TypeError, ValueError, RecursionError) as exc:
            raise FlowerConfigError(
                f"unreadable fedtrain task state in the checkpoint ({exc})"
            ) from exc
        if run_key != self.run.key:
            raise FlowerConfigError(
                "the checkpoint is of another fedtrain-run (the run config's run "
                "differs); use a new checkpoint-dir to start over"
            )
        if set(state) != set(self.global_state) or not set(sampled) <= set(
            self.client_ids
        ):
            raise FlowerConfigError(
                "the checkpoint's fedtrain task state is not this run's"
            )
        have = {} if self.book is None else self.book.counts()
        short = {k: n for k, n in counts.items() if have.get(k, 0) < n}
        if short:
            where = None if self.book is None else self.book.folder
            raise PrivacyRecordError(
                f"the checkpoint was written after {sum(short.values())} releases "
                f"recorded in {sorted(short)}, but the privacy ledgers in {where} "
                "hold fewer: they were deleted or replaced, and resuming would "
                "under-report epsilon"
            )
        self.global_state = {k: np.asarray(v) for k, v in state.items()}
        self.opt.load(arrays)
        self.train_round, self.history, self.sampled = train_round, history, sampled
        self.draws = draws
        apply_global(self.shared.handle, c.lora, self.global_state)

    def summary(self) -> dict[str, Any]:
        """Initial and final metrics; exports the adapter when the run names ``out``."""
        c, sh = self.run.config, self.shared
        out = self.run.run.out
        if out:
            self.adapter_dir = Path(out) / "adapter"
            from fedtrain.checkpoint import export_adapter

            export_adapter(
                sh.handle, self.global_state, self.adapter_dir, mode=self.mode
            )
            pooling = (
                model_pooling(sh.handle.model) if c.task == "seq_cls" else "native"
            )
            write_model_sidecar(
                self.adapter_dir,
                model=c.model,
                task=c.task,
                pooling=pooling,
                label_names=sh.label_names,
            )
        final = self.history[-1]["metrics"] if self.history else self.initial_metrics
        return {
            "task": "fedtrain",
            "main_metric": MAIN_METRIC[c.task],
            "initial_metrics": self.initial_metrics,
            "final_metrics": final,
            "adapter_dir": None if self.adapter_dir is None else str(self.adapter_dir),
            **self._spent(),
        }


#: node config key with which a SuperNode's operator lets a DP run use ``test_seed``
ALLOW_TEST_SEED = "fedtrain-allow-test-seed"


def check_test_seed(config: RunConfig, node_config: Mapping[str, Any]) -> None:
    """Refuse a DP run whose run config sets ``test_seed`` unless this node allows it.

    ``test_seed`` makes the DP randomness a stream anybody who knows the seed can
    recompute (record-level DP-SGD noise: ``dp_rng(test_seed, "dpsgd", round,
    client)``), and the run config is the ServerApp's: a ServerApp that sets it could
    subtract each client's noise. Only the node's own config can allow it (node config
    ``fedtrain-allow-test-seed = true``, for tests and reproducible experiments).

    Raises:
        PolicyError: a DP run with ``test_seed`` and no such permission.
    """
    if config.test_seed is None or config.privacy.level == "none":
        return
    allowed = node_config.get(ALLOW_TEST_SEED, False)
    if allowed is True or (isinstance(allowed, str) and allowed.lower() == "true"):
        return
    raise PolicyError(
        "the run config sets test_seed with differential privacy on: its noise would "
        "be recomputable by whoever knows the seed (the ServerApp chose it); this node "
        f"takes part only if its node config sets {ALLOW_TEST_SEED} = true"
    )


def check_dp_floors(
    fr: FlowerRun,
    run_config: Mapping[str, Any],
    node_config: Mapping[str, Any],
    layout: Layout,
) -> None:
    """Refuse a run whose differential privacy is below this node's floors
    (:class:`fedtrain.flower.policy.DPFloors`, read from ``node_config`` only).

    Nothing is loaded or computed when the node config sets no floor. Otherwise the
    run config's ``privacy`` is checked first; then the effective values where they
    differ from the configured ones: client level, the noise multiplier (calibrated
    with ``privacy.calibrate``) and ``min_clients`` the node's own
    :func:`fedtrain.planning.client_dp` gives for the run config's backend and
    ``layout`` (no data, no model); record level with ``privacy.calibrate``, the
    DP-SGD noise multiplier calibrated from the public partition's sizes (this loads
    and partitions the training data; no tokenizer, no model).

    Raises:
        PolicyError: the run is below a floor (the message names the node config key
            and the run config field), or a floor's value is malformed.
    """
    floors = DPFloors.from_node_config(node_config)
    if floors == DPFloors():
        return
    c = fr.config
    p = c.privacy
    floors.check_run(p)
    if p.level == "client":
        scale = _run_scale(c.backend, _session_options(run_config))
        cdp = _client_dp(fr, scale, layout.size)
        assert cdp is not None
        floors.check_run(
            p, noise_multiplier=cdp.noise_multiplier, min_clients=cdp.min_clients
        )
    elif p.level == "record" and p.calibrate and floors.min_noise_multiplier:
        floors.check_run(p, noise_multiplier=_record_z(fr))


def client_update(
    party_id: str, round_id: int, layout: Layout, content: RecordDict, context: Context
) -> LocalUpdate:
    """Train locally from the broadcast global state with the in-process client step.

    Raises:
        PolicyError: a DP run with ``test_seed`` the node does not allow, or a run
            below the node's DP floors (:func:`check_dp_floors`).
        FlowerConfigError: no global state or round in the request, or a node config
            that does not name this client's partition.
        ConfigError: an invalid run.
    """
    fr = FlowerRun.from_run_config(context.run_config)
    c = fr.config
    check_test_seed(c, context.node_config)
    # the node's DP floors, before its model is loaded or anything trains
    check_dp_floors(fr, context.run_config, context.node_config, layout)
    try:
        record = content.array_records[GLOBAL_RECORD]
        train_round = int(content.config_records[ROUND_RECORD]["round"])  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError):
        raise FlowerConfigError(
            "the round's first request carries no global state and round"
        ) from None
    sh = _shared(fr, "client")
    n_parts = len(sh.parts)
    try:
        part = int(context.node_config["partition-id"])
    except (KeyError, TypeError, ValueError):
        raise FlowerConfigError("node config needs an integer partition-id") from None
    if not 0 <= part < n_parts or party_id != f"client-{part}":
        raise FlowerConfigError(
            f"partition-id {part} with party id {party_id[:80]!r}: the party id must "
            f"be client-<partition-id>, partition-id in [0, {n_parts})"
        )
    global_state = {k: arr.numpy() for k, arr in record.items()}
    cid = sh.client_ids()[part]
    slot = _slot(part, n_parts)
    apply_global(sh.handle, c.lora, global_state)
    load_client_start(
        sh.handle, c.lora, global_state, round_=train_round, slot=slot, client_id=cid
    )
    opt_rec = context.state.array_records.get(_OPT_STATE)
    keep = c.lora.mode != "flora"
    opt_state = {k: a.numpy() for k, a in opt_rec.items()} if keep and opt_rec else None
    enc = sh.encoded(part, c.max_len)
    p = c.privacy
    dp: DPSGD | None = None
    if p.level == "record":
        # as in-process: the round's trainable set, then its Opacus module
        sh.handle.begin_round(train_round)
        sh.dp_module = dp_module_for(sh.handle, sh.dp_module)
        dp = DPSGD(sh.noise_multiplier(c), p.clip, p.head_clip)
    update = local_update(
        sh.handle,
        enc,
        global_state,
        mode=c.lora.mode,
        round_=train_round,
        steps=local_steps(c, sh.n_examples[part]),
        training=LocalTraining.from_config(c, sh.device),
        rng=batch_rng(c.seed, train_round, slot),
        dp=dp,
        dp_module=sh.dp_module if dp is not None else None,
        dp_rng=dp_rng(c.test_seed, "dpsgd", train_round, cid) if dp else None,
        clip=p.clip if p.level == "client" else p.update_clip,
        opt_state=opt_state,
        slot=slot,
        n_slots=n_parts,
        rank=c.lora.rank_of(cid) if c.lora.mode == "flora" else None,
        r_max=sh.r_max,
    )
    if keep:
        context.state[_OPT_STATE] = _to_record(update.opt_state)
    layout.check(update.message, who=f"client {party_id!r}")
    if not all(np.all(np.isfinite(v)) for v in update.message.values()):
        raise ConfigError(f"client {party_id!r}: the update contains NaN or Inf")
    return LocalUpdate(update.message, _weight(fr, sh, part))
