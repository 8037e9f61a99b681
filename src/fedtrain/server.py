"""The federated round loop (server, simulated clients, privagg aggregation).

A round: sample clients (Poisson rate q or a fixed fraction) -> each sampled client
loads the global adapter into the shared model, trains LoRA locally (optionally
DP-SGD), computes its delta (mode-specific message), optionally clips it and adds
its client-level DP noise share -> privagg protects (each client applies its own
weight), the aggregator combines, the result holder recovers the weighted sum ->
the ledger records the release -> the server turns the sum into an average delta
(renormalised by the contributors' weight) and applies it with FedAvg, FedAdam or
FedYogi -> evaluation -> atomic checkpoint.

All clients share ONE base model in memory; adapters are swapped by copying values.
"""

from __future__ import annotations

import math
import os
import secrets
import shutil
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import privagg
from fedtrain.checkpoint import export_adapter, load_checkpoint, save_checkpoint
from fedtrain.config import RunConfig
from fedtrain.data import RawDataset
from fedtrain.errors import (
    ConfigError,
    EmptyClientDataError,
    LabelMismatchError,
    LayoutMismatchError,
    RankMismatchError,
)
from fedtrain.evaluate import MAIN_METRIC, evaluate
from fedtrain.lora import LoraHandle, aggregate_delta, build_lora, client_message
from fedtrain.models import (
    Encoded,
    encode,
    load_model,
    load_tokenizer,
    pick_device,
    resolve_model,
)
from fedtrain.privacy import ACCOUNTANT_SOURCE, PrivacyBook
from fedtrain.train import DPSGD, make_dp_module, train_local
from privagg import SystemRng
from privagg.dp import sample_gaussian
from privagg.hazmat import DeterministicRng

__all__ = ["Federation", "RoundRecord", "RunResult", "ServerOptimizer"]

_INTEGER_BACKENDS = ("paillier", "secagg", "additive")


class ServerOptimizer:
    """FedAvg / FedAdam / FedYogi on the average client delta (Reddi et al. 2021).

    ``fedavg``: ``x += lr * delta``. ``fedadam``: ``m = b1 m + (1-b1) d``,
    ``v = b2 v + (1-b2) d^2``, ``x += lr m / (sqrt(v) + tau)``. ``fedyogi``:
    ``v = v - (1-b2) d^2 sign(v - d^2)``.
    """

    def __init__(
        self, kind: str, lr: float, betas: tuple[float, float], tau: float
    ) -> None:
        self.kind, self.lr, self.betas, self.tau = kind, lr, betas, tau
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}

    def step(
        self, state: dict[str, np.ndarray], delta: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Return the new global state after applying ``delta``."""
        out = dict(state)
        b1, b2 = self.betas
        for k, d in delta.items():
            d = np.asarray(d, np.float32)
            x = out.get(k, np.zeros_like(d))
            if self.kind == "fedavg":
                out[k] = (x + self.lr * d).astype(np.float32)
                continue
            m = self.m.get(k, np.zeros_like(d))
            v = self.v.get(k, np.full_like(d, self.tau**2))
            m = b1 * m + (1 - b1) * d
            d2 = d * d
            v = (
                b2 * v + (1 - b2) * d2
                if self.kind == "fedadam"
                else v - (1 - b2) * d2 * np.sign(v - d2)
            )
            self.m[k], self.v[k] = m.astype(np.float32), v.astype(np.float32)
            out[k] = (x + self.lr * m / (np.sqrt(v) + self.tau)).astype(np.float32)
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        """Moments for the checkpoint."""
        return {
            **{f"opt.m.{k}": v for k, v in self.m.items()},
            **{f"opt.v.{k}": v for k, v in self.v.items()},
        }

    def load(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Restore moments from :meth:`arrays` output."""
        self.m = {k[6:]: v for k, v in arrays.items() if k.startswith("opt.m.")}
        self.v = {k[6:]: v for k, v in arrays.items() if k.startswith("opt.v.")}


@dataclass
class RoundRecord:
    """What one round did (JSON-friendly)."""

    round: int
    sampled: list[str]
    contributors: list[str]
    failed: dict[str, str]
    metrics: dict[str, float]
    epsilon: float
    epsilon_per_client: dict[str, float]
    timings: dict[str, float]
    bytes_sent: dict[str, int]
    train_loss: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return dict(self.__dict__)


@dataclass
class RunResult:
    """Outcome of :meth:`Federation.run`."""

    initial_metrics: dict[str, float]
    final_metrics: dict[str, float]
    rounds: list[RoundRecord] = field(default_factory=list)
    adapter_dir: Path | None = None
    resumed_from: int | None = None


def _l2(msg: Mapping[str, np.ndarray]) -> float:
    return math.sqrt(
        sum(float(np.sum(np.square(v, dtype=np.float64))) for v in msg.values())
    )


class Federation:
    """A simulated federation of clients around one shared base model.

    Args:
        config: the run configuration.
        clients: client id -> its training data.
        eval_data: held-out evaluation data (defines the label set).
        out_dir: run folder (checkpoints, ledger, adapter); None keeps all in memory.
        progress: show tqdm progress bars.
        fail_hook: TESTS ONLY: called as ``fail_hook(round, client_id, message)`` to
            tamper with or break a client's message before protection.

    Raises:
        EmptyClientDataError, LabelMismatchError, RankMismatchError: naming the client.
        UnknownModelError: the model cannot be loaded.
        ConfigError: inconsistent configuration.
    """

    def __init__(
        self,
        config: RunConfig,
        clients: Mapping[str, RawDataset],
        eval_data: RawDataset,
        *,
        out_dir: str | os.PathLike[str] | None = None,
        progress: bool = False,
        fail_hook: Callable[[int, str, dict[str, np.ndarray]], dict[str, np.ndarray]]
        | None = None,
    ) -> None:
        self.config = c = config
        if not clients:
            raise ConfigError("a federation needs at least one client")
        if eval_data.task != c.task:
            raise ConfigError(
                f"eval data is for task {eval_data.task!r}, config says {c.task!r}"
            )
        self.label_names = list(eval_data.label_names)
        for cid, ds in clients.items():
            if len(ds) == 0:
                raise EmptyClientDataError(cid, "has no training examples")
            if ds.task != c.task:
                raise ConfigError(
                    f"client {cid!r}: data is for task {ds.task!r}, not {c.task!r}"
                )
            if c.task != "causal_lm" and list(ds.label_names) != self.label_names:
                raise LabelMismatchError(
                    cid,
                    f"label set {list(ds.label_names)} differs from the federation's {self.label_names}",
                )
            self._check_label_ids(cid, ds)
            rk = c.lora.rank_of(cid)
            if rk > c.lora.r:
                raise RankMismatchError(
                    cid, f"rank {rk} exceeds the federation's maximum rank r={c.lora.r}"
                )
        if c.lora.client_ranks:
            unknown = set(c.lora.client_ranks) - set(clients)
            if unknown:
                raise ConfigError(
                    f"client_ranks names unknown clients {sorted(unknown)}"
                )
        self.client_ids = sorted(clients)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress
        self.fail_hook = fail_hook
        self.device = pick_device(c.device)
        self.tokenizer = load_tokenizer(c.model)
        self.resolved = resolve_model(c.model)
        self.clients: dict[str, Encoded] = {
            cid: encode(clients[cid], self.tokenizer, c.max_len)
            for cid in self.client_ids
        }
        self.n_examples = {cid: len(self.clients[cid]) for cid in self.client_ids}
        self.eval_enc = encode(eval_data, self.tokenizer, c.max_len)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            base = load_model(
                c.model, c.task, label_names=self.label_names, device=self.device
            )
            self.handle: LoraHandle = build_lora(base, c.task, c.lora, seed=c.seed)
        self.handle.model.to(self.device)
        self.dp_module = (
            make_dp_module(self.handle) if c.privacy.level == "record" else None
        )
        self.global_state = self._initial_state()
        ro = c.rounds
        self.opt = ServerOptimizer(
            ro.server_opt, ro.server_lr, ro.server_betas, ro.server_tau
        )
        self.r_max = self.handle.modules[0].a.shape[0]
        self._setup_backend()
        self.ledger = self._new_book()
        seed = c.test_seed if c.test_seed is not None else secrets.randbits(128)
        self._secret_rng = np.random.default_rng(seed)
        self._data_rng = np.random.default_rng([c.seed, 1])

    # ------------------------------------------------------------------ setup

    def _new_book(self) -> PrivacyBook:
        c = self.config
        p = c.privacy
        return PrivacyBook(
            self.out_dir / "privacy" if self.out_dir else None,
            level=p.level,
            noise_multiplier=p.noise_multiplier,
            delta=p.delta,
            accountant=p.accountant,
            target_epsilon=p.target_epsilon,
            client_sample_rate=c.rounds.sample_rate,
            poisson_clients=c.rounds.sampling == "poisson",
        )

    def _check_label_ids(self, cid: str, ds: RawDataset) -> None:
        k = len(self.label_names)
        if self.config.task == "seq_cls":
            bad = [e["label"] for e in ds.examples if not 0 <= e["label"] < k]
        elif self.config.task == "token_cls":
            bad = [t for e in ds.examples for t in e["tags"] if not 0 <= t < k]
        else:
            bad = []
        if bad:
            raise LabelMismatchError(
                cid, f"label id {bad[0]} outside the federation's {k} labels"
            )

    def _initial_state(self) -> dict[str, np.ndarray]:
        h, mode = self.handle, self.config.lora.mode
        if mode == "ffa":
            return h.get(sorted(h.b_names + h.head_names))
        if mode == "fedit":
            return h.get(sorted(h.a_names + h.b_names + h.head_names))
        return h.get(h.head_names)

    def _template_message(self) -> dict[str, np.ndarray]:
        local = self.handle.get()
        return client_message(
            self.config.lora.mode,
            local,
            self.global_state,
            slot=0,
            n_slots=len(self.client_ids),
            rank=1,
            r_max=self.r_max,
        )

    def _setup_backend(self) -> None:
        c = self.config
        opts = dict(c.backend_options)
        if c.backend in _INTEGER_BACKENDS and "bound" not in opts:
            opts["bound"] = 1.0
        self.backend = privagg.get_backend(c.backend, **opts)
        self.layout = privagg.Layout.from_arrays(self._template_message())
        self.session = self.backend.setup(
            self.layout, max_clients=len(self.client_ids), max_weight=1.0
        )
        if c.lora.mode == "flora" and c.backend != "plain":
            warnings.warn(
                "flora stacks every client's factors into its own slot: the recovered sum reveals "
                "each client's update, so secure aggregation hides nothing in this mode",
                stacklevel=3,
            )

    # ------------------------------------------------------------------ helpers

    def _load_client_start(self, cid: str, round_: int) -> None:
        h, mode = self.handle, self.config.lora.mode
        if mode == "flora":
            slot = self.client_ids.index(cid)
            h.init_a(
                self.config.lora.a_seed + 7919 * round_ + 104729 * slot,
                rank=self.config.lora.rank_of(cid),
            )
            h.set({n: self.global_state[n] for n in h.head_names})
        else:
            h.set(self.global_state)

    def _apply_global(self) -> None:
        h = self.handle
        if self.config.lora.mode == "flora":
            h.set_merged_delta(self.global_state)
            h.init_a(self.config.lora.a_seed)  # B = 0: the adapter adds nothing
            h.set({n: self.global_state[n] for n in h.head_names})
        else:
            h.set(self.global_state)

    def _local_steps(self, cid: str) -> int:
        ro = self.config.rounds
        if ro.local_steps is not None:
            return ro.local_steps
        assert ro.local_epochs is not None
        return max(1, math.ceil(ro.local_epochs * self.n_examples[cid] / ro.batch_size))

    def _sample(self) -> list[str]:
        ro, ids = self.config.rounds, self.client_ids
        if ro.sampling == "poisson":
            mask = self._secret_rng.random(len(ids)) < ro.sample_rate
            return [cid for cid, m in zip(ids, mask, strict=True) if m]
        k = max(1, round(ro.sample_rate * len(ids)))
        pick = self._secret_rng.choice(len(ids), size=k, replace=False)
        return [ids[int(i)] for i in sorted(pick)]

    def _expected_clients(self) -> float:
        return max(1.0, self.config.rounds.sample_rate * len(self.client_ids))

    def _plan(self, ids: list[str]) -> dict[str, tuple[float, int]]:
        """Record-level DP plan: client -> (Poisson batch rate q_k, local steps)."""
        if self.config.privacy.level != "record":
            return {}
        bs = self.config.rounds.batch_size
        return {
            cid: (min(1.0, bs / self.n_examples[cid]), self._local_steps(cid))
            for cid in ids
        }

    def evaluate(self) -> dict[str, float]:
        """Evaluate the current global model on the evaluation data."""
        return evaluate(
            self.handle.model,
            self.eval_enc,
            label_names=self.label_names,
            device=self.device,
            batch_size=self.config.eval_batch_size,
            bf16=self.config.bf16,
        )

    # ------------------------------------------------------------------ round

    def run_one_round(self, round_: int) -> RoundRecord:
        """Run round ``round_`` (1-based) and return its record.

        Raises:
            privagg.BudgetExceededError: the round would exceed ``target_epsilon``
                (raised before any training or release).
        """
        c, p = self.config, self.config.privacy
        timings = dict.fromkeys(
            ("local_train", "protect", "aggregate", "recover", "apply", "eval"), 0.0
        )
        sampled = self._sample()
        if sampled:
            self.ledger.check(
                self._plan(sampled)
            )  # raises BudgetExceededError before training
        failed: dict[str, str] = {}
        messages: dict[str, dict[str, np.ndarray]] = {}
        trained: dict[str, Any] = {}
        losses: dict[str, float] = {}
        mode = c.lora.mode
        noise_rng: Any = None
        if p.level == "client":  # CSPRNG noise; a fixed AES-CTR stream only in tests
            noise_rng = (
                SystemRng()
                if c.test_seed is None
                else DeterministicRng(c.test_seed * 1000 + round_)
            )
        bar = _tqdm(sampled, f"round {round_}", self.progress)
        for cid in bar:
            t0 = time.perf_counter()
            try:
                self._load_client_start(cid, round_)
                rank = c.lora.rank_of(cid) if mode == "flora" else None
                res = train_local(
                    self.handle,
                    self.clients[cid],
                    steps=self._local_steps(cid),
                    batch_size=c.rounds.batch_size,
                    lr=c.rounds.lr,
                    head_lr=c.rounds.head_lr,
                    optimizer=c.rounds.optimizer,
                    weight_decay=c.rounds.weight_decay,
                    device=self.device,
                    bf16=c.bf16,
                    rng=self._secret_rng if p.level == "record" else self._data_rng,
                    dp=DPSGD(p.noise_multiplier, p.clip, p.head_clip)
                    if p.level == "record"
                    else None,
                    dp_module=self.dp_module,
                    noise_seed=None
                    if c.test_seed is None
                    else c.test_seed + 1000 * round_ + len(messages),
                    rank=rank,
                )
                trained[cid] = res
                losses[cid] = res.loss
                msg = client_message(
                    mode,
                    self.handle.get(),
                    self.global_state,
                    slot=self.client_ids.index(cid),
                    n_slots=len(self.client_ids),
                    rank=rank,
                    r_max=self.r_max,
                )
                msg = self._privatise(msg, noise_rng)
                if self.fail_hook is not None:
                    msg = self.fail_hook(round_, cid, msg)
                self._check_layout(cid, msg)
                messages[cid] = msg
            except (LayoutMismatchError, RuntimeError, ValueError) as exc:
                failed[cid] = f"{type(exc).__name__}: {exc}"
            timings["local_train"] += time.perf_counter() - t0
        self._apply_global()  # the shared model goes back to the global adapter
        weights = self._weights(list(messages))
        rec_contrib: list[str] = []
        bytes_sent: dict[str, int] = {}
        if messages:
            res_r = privagg.run_round(
                self.session,
                messages,
                weights=weights,
                round_id=round_,
                isolate_failures=True,
            )
            for k in ("protect", "aggregate", "recover"):
                timings[k] = float(res_r.timings.get(k, 0.0))
            failed.update(res_r.failed)
            rec_contrib = list(res_r.contributors)
            bytes_sent = dict(res_r.bytes_sent)
            # the release happened: record it before applying anything
            self.ledger.record(
                round_,
                self._plan([cid for cid in sampled if cid in trained]),
                rec_contrib,
            )
            if rec_contrib:
                t0 = time.perf_counter()
                if p.level == "client":
                    total = 1.0  # DP-FedAvg: fixed denominator, already in the weights
                else:
                    total = sum(weights[cid] for cid in rec_contrib)
                delta = aggregate_delta(
                    mode,
                    res_r.aggregate,
                    total,
                    slot_weights={
                        self.client_ids.index(cid): weights[cid] for cid in rec_contrib
                    },
                    r_max=self.r_max,
                    scaling=c.lora.scaling,
                )
                self.global_state = self.opt.step(self.global_state, delta)
                self._apply_global()
                timings["apply"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        metrics = self.evaluate()
        timings["eval"] = time.perf_counter() - t0
        eps = self.ledger.spent()
        return RoundRecord(
            round=round_,
            sampled=sampled,
            contributors=rec_contrib,
            failed=failed,
            metrics=metrics,
            epsilon=float(eps["epsilon"]),
            epsilon_per_client=dict(eps.get("per_client", {})),
            timings=timings,
            bytes_sent=bytes_sent,
            train_loss=losses,
        )

    def _privatise(self, msg: dict[str, np.ndarray], rng: Any) -> dict[str, np.ndarray]:
        p = self.config.privacy
        clip = p.clip if p.level == "client" else p.update_clip
        if clip is not None:
            norm = _l2(msg)
            if norm > clip:
                msg = {
                    k: (v * (clip / norm)).astype(np.float32) for k, v in msg.items()
                }
        if p.level == "client":
            std = p.noise_multiplier * p.clip / math.sqrt(self._expected_clients())
            msg = {
                k: (v + sample_gaussian(std, v.size, rng=rng).reshape(v.shape)).astype(
                    np.float32
                )
                for k, v in msg.items()
            }
        return msg

    def _weights(self, ids: list[str]) -> dict[str, float]:
        if not ids:
            return {}
        if self.config.privacy.level == "client":
            return dict.fromkeys(ids, 1.0 / self._expected_clients())
        if self.config.rounds.weighting == "uniform":
            return dict.fromkeys(ids, 1.0 / len(ids))
        tot = sum(self.n_examples[cid] for cid in ids)
        return {cid: self.n_examples[cid] / tot for cid in ids}

    def _check_layout(self, cid: str, msg: Mapping[str, np.ndarray]) -> None:
        names = set(self.layout.names)
        if set(msg) != names:
            missing = sorted(names - set(msg))[:3]
            extra = sorted(set(msg) - names)[:3]
            raise LayoutMismatchError(
                cid,
                f"update names differ from the round layout (missing {missing}, unexpected {extra})",
            )
        template = self._template_shapes()
        for k, v in msg.items():
            if tuple(np.shape(v)) != template[k]:
                raise LayoutMismatchError(
                    cid,
                    f"update entry {k!r} has shape {np.shape(v)}, expected {template[k]}",
                )
            if not np.all(np.isfinite(v)):
                raise LayoutMismatchError(
                    cid, f"update entry {k!r} contains NaN or Inf"
                )

    def _template_shapes(self) -> dict[str, tuple[int, ...]]:
        if not hasattr(self, "_shapes"):
            self._shapes = {
                k: tuple(v.shape) for k, v in self._template_message().items()
            }
        return self._shapes

    # ------------------------------------------------------------------ run

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Global state plus server optimizer moments (checkpoint content)."""
        return {
            **{f"global.{k}": v for k, v in self.global_state.items()},
            **self.opt.arrays(),
        }

    def run(
        self,
        *,
        resume: bool = True,
        on_round: Callable[[RoundRecord], None] | None = None,
        export: bool = True,
    ) -> RunResult:
        """Run all rounds (resuming from the last checkpoint in ``out_dir``).

        Args:
            resume: resume from ``out_dir/checkpoint`` if present.
            on_round: called after every completed (checkpointed) round.
            export: write ``out_dir/adapter`` at the end.

        Returns:
            The run result.
        """
        c = self.config
        start, history, initial = 1, [], None
        resumed = None
        ck = self.out_dir / "checkpoint" if self.out_dir else None
        if ck is not None and not resume:
            # a fresh run in an old folder: the old checkpoint and ledgers belong to
            # the old run and are discarded
            shutil.rmtree(ck, ignore_errors=True)
            shutil.rmtree(self.ledger.folder, ignore_errors=True)
            self.ledger = self._new_book()
        if ck is not None and resume:
            loaded = load_checkpoint(ck)
            if loaded is not None:
                meta, arrays = loaded
                saved_cfg = RunConfig.from_dict(meta["config"])
                if saved_cfg.to_dict() | {"rounds": None} != c.to_dict() | {
                    "rounds": None
                }:
                    raise ConfigError(
                        f"{ck}: checkpoint was written with a different configuration"
                    )
                self.global_state = {
                    k[7:]: v for k, v in arrays.items() if k.startswith("global.")
                }
                self.opt.load(arrays)
                self._apply_global()
                start = int(meta["round"]) + 1
                history = [RoundRecord(**r) for r in meta["history"]]
                initial = meta["initial_metrics"]
                resumed = int(meta["round"])
        if initial is None:
            initial = self.evaluate()
        for r in range(start, c.rounds.rounds + 1):
            rec = self.run_one_round(r)
            history.append(rec)
            if ck is not None:
                save_checkpoint(
                    ck,
                    round_=r,
                    arrays=self.state_arrays(),
                    meta={
                        "config": c.to_dict(),
                        "history": [h.to_dict() for h in history],
                        "initial_metrics": initial,
                        "accountant_source": ACCOUNTANT_SOURCE,
                    },
                )
            if on_round is not None:
                on_round(rec)
        final = history[-1].metrics if history else initial
        adapter = None
        if export and self.out_dir is not None:
            adapter = export_adapter(
                self.handle,
                self.global_state,
                self.out_dir / "adapter",
                mode=c.lora.mode,
            )
        return RunResult(initial, final, history, adapter, resumed)

    @property
    def main_metric(self) -> str:
        """The task's headline metric name."""
        return MAIN_METRIC[self.config.task]


def _tqdm(items: list[str], desc: str, enabled: bool) -> Any:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False, unit="client")
