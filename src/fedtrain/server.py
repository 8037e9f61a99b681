"""The in-process federated round loop (server, simulated clients, privagg aggregation).

A round: sample clients (Poisson rate q or a fixed fraction, decisions from privagg's
CSPRNG) -> each sampled client loads the global adapter into the shared model and runs
the client step (:func:`fedtrain.client.local_update`: LoRA training, optionally
DP-SGD, its mode-specific message, optional L2 clipping) -> privagg protects (each
client applies its own weight; under client-level DP it adds its distributed noise
share after fixed-point encoding), the aggregator combines, the result holder recovers
the weighted sum -> the ledger records the release (the mechanism for the noise
actually summed) -> the server step (:func:`fedtrain.strategy.server_step`) turns the
sum into an average delta and applies it with FedAvg, FedAdam or FedYogi ->
evaluation -> atomic checkpoint. The Flower runtime (:mod:`fedtrain.flower`) runs the
same client and server steps.

All clients share ONE base model in memory; adapters are swapped by copying values.
"""

from __future__ import annotations

import os
import secrets
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import privagg
from fedtrain.checkpoint import (
    config_changes,
    export_adapter,
    load_checkpoint,
    save_checkpoint,
)
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
from fedtrain.data import RawDataset
from fedtrain.errors import (
    ConfigError,
    EmptyClientDataError,
    LabelMismatchError,
    LayoutMismatchError,
    PrivacyRecordError,
    RankMismatchError,
)
from fedtrain.evaluate import MAIN_METRIC, evaluate
from fedtrain.lora import LoraHandle, client_message
from fedtrain.models import (
    Encoded,
    encode,
    load_tokenizer,
    pick_device,
    resolve_model,
)
from fedtrain.planning import (
    ClientDP,
    LayoutShare,
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
from fedtrain.privacy import ACCOUNTANT_SOURCE, PrivacyBook
from fedtrain.strategy import ServerOptimizer, Strategy, make_strategy, server_step
from fedtrain.train import DPSGD
from privagg import Rng
from privagg.dp import DiscreteGaussianShare

__all__ = ["Federation", "RoundRecord", "RunResult", "ServerOptimizer"]


_LayoutShare = LayoutShare  # the name before it moved to fedtrain.planning


class _MinHolder:
    """The result holder, refusing to output a sum of too few contributions."""

    def __init__(self, inner: Any, minimum: int) -> None:
        self._inner, self._min = inner, minimum

    def recover(self, result: bytes) -> Any:
        rec = self._inner.recover(result)
        if len(rec.contributors) < self._min:
            raise privagg.InsufficientParticipantsError(
                f"{len(rec.contributors)} contributions, fewer than the {self._min} "
                "the DP noise shares are sized for: the sum is not released"
            )
        return rec


class _MinSession:
    """A privagg session whose holder refuses sums of fewer than ``minimum`` clients."""

    def __init__(self, inner: Any, minimum: int) -> None:
        self._inner, self._min = inner, minimum

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def holder(self) -> _MinHolder:
        return _MinHolder(self._inner.holder(), self._min)


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
    skipped: str | None = None

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
    stopped: str | None = None
    prior_releases: int = 0
    archived_checkpoint: Path | None = None


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
        self.handle: LoraHandle = build_handle(c, self.label_names, self.device)
        self.dp_module = (
            dp_module_for(self.handle) if c.privacy.level == "record" else None
        )
        self.global_state = self._initial_state()
        ro = c.rounds
        self.opt: Strategy = make_strategy(
            ro.server_opt, ro.server_lr, ro.server_betas, ro.server_tau
        )
        self.training = LocalTraining.from_config(c, self.device)
        self.r_max = self.handle.modules[0].a.shape[0]
        # local optimizer state is kept per client across rounds where the adapter a
        # client trains persists (ffa/fedit; alternating: one state per factor);
        # flora re-draws A every round
        self.keep_opt_state = c.lora.mode != "flora"
        self.client_opt: dict[str, dict[str, np.ndarray]] = {}
        self._draws = 0
        self.run_id = secrets.token_hex(8)
        self._setup_backend()
        self.ledger = self._new_book()

    # ------------------------------------------------------------------ setup

    def _new_book(self) -> PrivacyBook:
        return open_book(
            self.config,
            self.out_dir,
            noise_multiplier=self.noise_multiplier,
            accountant=self.accountant,
            client_event=self.client_event,
        )

    def _rng(self, *purpose: object) -> Rng:
        """DP randomness: the OS CSPRNG, or (test mode) a fixed AES-CTR stream."""
        return dp_rng(self.config.test_seed, *purpose)

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
        return initial_state(self.handle, self.config.lora.mode)

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
        self.layout = privagg.Layout.from_arrays(self._template_message())
        # privagg says whether the backend computes on fixed-point integers (discrete
        # noise shares, accounted at its scale) or on reals; no backend names here.
        # Constructing a backend only validates its options (keys come in setup).
        opts = dict(c.backend_options)
        scale = privagg.fixed_point_scale(privagg.get_backend(c.backend, **opts))
        self.integer_backend = scale is not None
        self.scale = 1.0 if scale is None else scale
        self.accountant = dp_accountant(c, scale)
        # client level (fedtrain.planning, shared with the Flower task): the minimum
        # of contributors, z, each client's share and the ledger's event
        self.client_dp: ClientDP | None = client_dp(
            c, n_clients=len(self.client_ids), scale=scale, dimension=self.layout.size
        )
        cdp = self.client_dp
        self.min_clients = 0 if cdp is None else cdp.min_clients
        self.noise_multiplier = (
            self._resolve_noise_multiplier() if cdp is None else cdp.noise_multiplier
        )
        self.noise_share: DiscreteGaussianShare | None = (
            None if cdp is None else cdp.share
        )
        opts = client_backend_options(c, c.backend, opts)
        self.backend = privagg.get_backend(c.backend, **opts)
        self.session = self.backend.setup(
            self.layout,
            max_clients=len(self.client_ids),
            max_weight=1.0,
            noise=None if cdp is None else cdp.session_noise(),
        )
        if c.lora.mode == "flora" and privagg.protects_inputs(self.backend):
            warnings.warn(
                "flora stacks every client's factors into its own slot: the recovered sum reveals "
                "each client's update, so secure aggregation hides nothing in this mode",
                stacklevel=3,
            )

    def client_event(self, n: int) -> tuple[Any, dict[str, Any]]:
        """Client level: the event and ledger metadata of a sum of ``n``
        contributions (:meth:`fedtrain.planning.ClientDP.event`)."""
        assert self.client_dp is not None
        return self.client_dp.event(n)

    def _resolve_noise_multiplier(self) -> float:
        """z without client-level DP: the configured one, or (record level)
        calibrated from ``target_epsilon``."""
        c, p = self.config, self.config.privacy
        if p.level == "record" and p.calibrate:
            return record_noise_multiplier(c, self.n_examples, self.accountant)
        return p.noise_multiplier

    # ------------------------------------------------------------------ helpers

    def _load_client_start(self, cid: str, round_: int) -> None:
        load_client_start(
            self.handle,
            self.config.lora,
            self.global_state,
            round_=round_,
            slot=self.client_ids.index(cid),
            client_id=cid,
        )

    def _apply_global(self) -> None:
        apply_global(self.handle, self.config.lora, self.global_state)

    def _local_steps(self, cid: str) -> int:
        return local_steps(self.config, self.n_examples[cid])

    def _sample(self, round_: int = 0) -> list[str]:
        """Sample the round's clients from privagg's CSPRNG (test mode: AES-CTR)."""
        self._draws += 1
        return sample_clients(self.config, self.client_ids, round_, self._draws)

    def _plan(self, ids: list[str]) -> dict[str, tuple[float, int]]:
        """Record-level DP plan: client -> (Poisson batch rate q_k, local steps)."""
        return record_plan(self.config, self.n_examples, ids)

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
        sampled = self._sample(round_)
        if p.level == "client" and len(sampled) < self.min_clients:
            # fewer than the noise is sized for: nothing trains, nothing is released
            return self._no_release(
                round_,
                sampled,
                {},
                timings,
                f"{len(sampled)} clients sampled, fewer than min_clients="
                f"{self.min_clients}",
            )
        if sampled:  # raises BudgetExceededError before training
            self.ledger.check(
                self._plan(sampled),
                (self.min_clients, len(sampled)) if p.level == "client" else (),
            )
        failed: dict[str, str] = {}
        messages: dict[str, dict[str, np.ndarray]] = {}
        trained: dict[str, Any] = {}
        losses: dict[str, float] = {}
        mode = c.lora.mode
        bar = _tqdm(sampled, f"round {round_}", self.progress)
        self.handle.begin_round(round_)  # alternating: this round's factor
        if self.dp_module is not None:
            self.dp_module = dp_module_for(self.handle, self.dp_module)
        for cid in bar:
            t0 = time.perf_counter()
            try:
                self._load_client_start(cid, round_)
                rank = c.lora.rank_of(cid) if mode == "flora" else None
                upd = local_update(
                    self.handle,
                    self.clients[cid],
                    self.global_state,
                    mode=mode,
                    round_=round_,
                    steps=self._local_steps(cid),
                    training=self.training,
                    rng=batch_rng(c.seed, round_, self.client_ids.index(cid)),
                    dp=DPSGD(self.noise_multiplier, p.clip, p.head_clip)
                    if p.level == "record"
                    else None,
                    dp_module=self.dp_module,
                    dp_rng=self._rng("dpsgd", round_, cid)
                    if p.level == "record"
                    else None,
                    clip=p.clip if p.level == "client" else p.update_clip,
                    opt_state=self.client_opt.get(cid) if self.keep_opt_state else None,
                    slot=self.client_ids.index(cid),
                    n_slots=len(self.client_ids),
                    rank=rank,
                    r_max=self.r_max,
                )
                trained[cid] = upd.result
                losses[cid] = upd.result.loss
                if self.keep_opt_state:
                    self.client_opt[cid] = upd.opt_state
                msg = upd.message
                if self.fail_hook is not None:
                    msg = self.fail_hook(round_, cid, msg)
                self._check_layout(cid, msg)
                messages[cid] = msg
            except (LayoutMismatchError, RuntimeError, ValueError) as exc:
                failed[cid] = f"{type(exc).__name__}: {exc}"
            timings["local_train"] += time.perf_counter() - t0
        self._apply_global()  # the shared model goes back to the global adapter
        weights = self._weights(list(messages))
        if not messages:
            return self._no_release(
                round_, sampled, failed, timings, "no client update", losses
            )
        session: Any = self.session
        if p.level == "client":
            session = _MinSession(self.session, self.min_clients)
        try:
            res_r = privagg.run_round(
                session,
                messages,
                weights=weights,
                round_id=round_,
                isolate_failures=True,
                rng=self._rng("protect", round_),
            )
        except privagg.InsufficientParticipantsError as exc:
            # the protocol (or the holder) refused: no sum was released
            return self._no_release(
                round_, sampled, failed, timings, f"{type(exc).__name__}: {exc}", losses
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
            run_id=self.run_id,
        )
        if rec_contrib:
            t0 = time.perf_counter()
            if p.level == "client":
                # unit weights; the contributor count does not depend on any
                # client's data (zero-out relation), so dividing by it is
                # post-processing
                total = float(len(rec_contrib))
            else:
                total = sum(weights[cid] for cid in rec_contrib)
            self.global_state = server_step(
                self.opt,
                self.global_state,
                res_r.aggregate,
                total,
                mode=mode,
                phase=self.handle.phase if mode == "alternating" else None,
                slot_weights={
                    self.client_ids.index(cid): weights[cid] for cid in rec_contrib
                },
                r_max=self.r_max,
                scaling=c.lora.scaling,
            )
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

    def _no_release(
        self,
        round_: int,
        sampled: list[str],
        failed: dict[str, str],
        timings: dict[str, float],
        why: str,
        losses: dict[str, float] | None = None,
    ) -> RoundRecord:
        """A round that released nothing: no ledger entry, the global state unchanged."""
        t0 = time.perf_counter()
        metrics = self.evaluate()
        timings["eval"] = time.perf_counter() - t0
        eps = self.ledger.spent()
        return RoundRecord(
            round=round_,
            sampled=sampled,
            contributors=[],
            failed=failed,
            metrics=metrics,
            epsilon=float(eps["epsilon"]),
            epsilon_per_client=dict(eps.get("per_client", {})),
            timings=timings,
            bytes_sent={},
            train_loss=dict(losses or {}),
            skipped=why,
        )

    def _weights(self, ids: list[str]) -> dict[str, float]:
        if not ids:
            return {}
        if self.config.privacy.level == "client":
            return dict.fromkeys(ids, 1.0)  # sensitivity C in the sum
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
        """Global state, server optimizer moments and each client's local optimizer
        state (checkpoint content)."""
        copt = {
            f"copt.{self.client_ids.index(cid)}.{k}": v
            for cid, st in self.client_opt.items()
            for k, v in st.items()
        }
        return {
            **{f"global.{k}": v for k, v in self.global_state.items()},
            **self.opt.arrays(),
            **copt,
        }

    def _load_client_opt(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.client_opt = {}
        for name, v in arrays.items():
            if name.startswith("copt."):
                slot, key = name[5:].split(".", 1)
                cid = self.client_ids[int(slot)]
                self.client_opt.setdefault(cid, {})[key] = v

    def _archive_checkpoint(self, ck: Path) -> Path | None:
        """Set an old checkpoint aside (a fresh start); the ledgers stay in place."""
        if not ck.exists():
            return None
        assert self.out_dir is not None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        dest = self.out_dir / "archive" / f"checkpoint-{stamp}-{self.run_id[:6]}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(ck, dest)
        return dest

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
        archived = None
        stopped = None
        ck = self.out_dir / "checkpoint" if self.out_dir else None
        if ck is not None and not resume:
            # a fresh start in an old folder: the old checkpoint is archived; the
            # privacy ledgers are kept and keep counting (same privacy unit, same
            # data) -- name a new PrivacyConfig.unit for really new data
            archived = self._archive_checkpoint(ck)
        loaded = load_checkpoint(ck) if ck is not None and resume else None
        if loaded is not None:
            assert ck is not None
            meta, arrays = loaded
            saved_cfg = RunConfig.from_dict(meta["config"]).to_dict()
            changed = config_changes(saved_cfg, c.to_dict())
            if changed:
                raise ConfigError(
                    f"{ck}: cannot resume, the configuration changed: "
                    f"{', '.join(changed)} (only rounds.rounds may grow; use "
                    "--no-resume to start over, the privacy ledgers are kept)"
                )
            have = self.ledger.counts()
            short = {
                name: n
                for name, n in dict(meta.get("ledger_counts", {})).items()
                if have.get(name, 0) < int(n)
            }
            if short:
                raise PrivacyRecordError(
                    f"{ck}: the checkpoint was written after {sum(short.values())} "
                    f"releases recorded in {sorted(short)}, but the privacy ledgers "
                    f"in {self.ledger.folder} hold fewer: they were deleted or "
                    "replaced, and resuming would under-report epsilon"
                )
            self.global_state = {
                k[7:]: v for k, v in arrays.items() if k.startswith("global.")
            }
            self.opt.load(arrays)
            self._load_client_opt(arrays)
            self._apply_global()
            start = int(meta["round"]) + 1
            history = [RoundRecord(**r) for r in meta["history"]]
            initial = meta["initial_metrics"]
            resumed = int(meta["round"])
        prior = 0 if loaded is not None else sum(self.ledger.counts().values())
        if initial is None:
            initial = self.evaluate()
        for r in range(start, c.rounds.rounds + 1):
            try:
                rec = self.run_one_round(r)
            except privagg.BudgetExceededError as exc:
                stopped = f"round {r} refused before training: {exc}"
                break
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
                        "ledger_counts": self.ledger.counts(),
                        "noise_multiplier": self.noise_multiplier,
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
        return RunResult(
            initial, final, history, adapter, resumed, stopped, prior, archived
        )

    @property
    def main_metric(self) -> str:
        """The task's headline metric name."""
        return MAIN_METRIC[self.config.task]


def _tqdm(items: list[str], desc: str, enabled: bool) -> Any:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False, unit="client")
