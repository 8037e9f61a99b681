"""Glue: data preparation, a whole run, and its report (used by the CLI and examples)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import privagg
from fedtrain.config import RunConfig
from fedtrain.data import (
    RawDataset,
    conll_default_path,
    load_conll,
    load_csv,
    load_hf_dataset,
    load_jsonl,
    load_rotten_tomatoes,
    partition,
    sentiment_instructions,
)
from fedtrain.errors import DataError
from fedtrain.models import model_pooling, write_model_sidecar
from fedtrain.privacy import ACCOUNTANT_SOURCE
from fedtrain.report import build_report, plot_rounds, write_report
from fedtrain.server import Federation, RoundRecord

__all__ = ["ExperimentSpec", "choose_backend", "load_task_data", "run_experiment"]


def choose_backend(preferred: str) -> str:
    """Return ``preferred`` if privagg offers it; refuse otherwise.

    There is no fallback: a run that asked for protection never silently proceeds with
    another backend (least of all the insecure ``plain`` one).

    Raises:
        privagg.UnsupportedError: the backend's optional dependency is not installed
            (``reason`` is ``BACKEND_UNAVAILABLE``; the message names the extra to
            install, e.g. ``pip install 'privagg[ckks]'``).
        privagg.ConfigurationError: no backend of that name is known.
    """
    if preferred in privagg.available_backends():
        return preferred
    # The registry knows why: its typed error names the missing extra (an unknown name
    # is a ConfigurationError). The import fails before any backend object is built.
    refusal = (
        f"privagg backend {preferred!r} is unavailable; refusing to run without it"
    )
    try:
        privagg.get_backend(preferred)
    except (ImportError, AttributeError) as exc:
        raise privagg.UnsupportedError(
            refusal, privagg.UnsupportedReason.BACKEND_UNAVAILABLE
        ) from exc
    raise privagg.UnsupportedError(  # it imports now, but did not a moment ago
        refusal, privagg.UnsupportedReason.BACKEND_UNAVAILABLE
    )


def _split_by_key(
    ds: RawDataset, eval_fraction: float, seed: int
) -> tuple[RawDataset, RawDataset]:
    keys = sorted(set(ds.keys()))
    rng = np.random.default_rng(seed)
    held = set(
        rng.choice(
            len(keys), size=max(1, int(len(keys) * eval_fraction)), replace=False
        ).tolist()
    )
    held_keys = {keys[i] for i in held}
    tr = [i for i, k in enumerate(ds.keys()) if k not in held_keys]
    ev = [i for i, k in enumerate(ds.keys()) if k in held_keys]
    return ds.subset(tr), ds.subset(ev)


def _take(ds: RawDataset, n: int | None, seed: int) -> RawDataset:
    if n is not None and n < 1:  # --max-train -10**30 escaped numpy (fuzzing, #13)
        raise DataError(f"a subset size must be >= 1 (or none), got {n}")
    if n is None or n >= len(ds):
        return ds
    idx = np.sort(np.random.default_rng(seed).choice(len(ds), size=n, replace=False))
    return ds.subset(idx.tolist())


def load_task_data(
    task: str,
    data: str,
    *,
    eval_data: str | None = None,
    max_train: int | None = None,
    max_eval: int | None = None,
    seed: int = 0,
    eval_fraction: float = 0.15,
) -> tuple[RawDataset, RawDataset]:
    """Load training and evaluation data.

    Args:
        task: the task.
        data: ``rt`` (Rotten Tomatoes; ``causal_lm`` turns it into instructions),
            ``conll`` (CoNLL-2003 train, evaluated on test), ``hf:NAME[:SPLIT]``,
            or a ``.csv``/``.csv.bz2``/``.jsonl``/CoNLL ``.txt`` path.
        eval_data: evaluation file (same formats); default: a held-out part
            (RT: held-out movies; CoNLL: the test split; files: 10% by key).
        max_train: random subset size of the training data.
        max_eval: random subset size of the evaluation data.
        seed: subset/split seed.
        eval_fraction: fraction of the keys (movies, ...) held out for evaluation
            when ``eval_data`` is not given (not for CoNLL, which has a test split).

    Returns:
        ``(train, eval)``.

    Raises:
        DataError: unknown source.
    """

    def load(src: str) -> RawDataset:
        if src == "rt":
            ds = load_rotten_tomatoes()
            return sentiment_instructions(ds) if task == "causal_lm" else ds
        if src == "conll":
            return load_conll(conll_default_path("train"))
        if src.startswith("hf:"):
            parts = src[3:].split(":")
            return load_hf_dataset(
                parts[0], task=task, split=parts[1] if len(parts) > 1 else "train"
            )
        p = Path(src)
        if src.endswith((".csv", ".csv.bz2")):
            return load_csv(p, key_column=None)
        if src.endswith(".jsonl"):
            return load_jsonl(p, task=task, key_field="key")
        if task == "token_cls":
            return load_conll(p)
        raise DataError(f"unknown data source {src!r}")

    train = load(data)
    if train.task != task:
        raise DataError(f"data {data!r} is for task {train.task!r}, not {task!r}")
    if eval_data is not None:
        ev = load(eval_data)
    elif data == "conll":
        ev = load_conll(conll_default_path("test"))
    else:
        train, ev = _split_by_key(train, eval_fraction, seed)
    return _take(train, max_train, seed), _take(ev, max_eval, seed + 1)


@dataclass(frozen=True)
class ExperimentSpec:
    """Data-side settings of a run.

    Attributes:
        num_clients: number of clients.
        partition: ``iid``, ``dirichlet`` or ``key``.
        alpha: Dirichlet concentration.
        seed: partition seed.
    """

    num_clients: int = 4
    partition: str = "dirichlet"
    alpha: float = 0.5
    seed: int = 0


def run_experiment(
    config: RunConfig,
    train: RawDataset,
    eval_data: RawDataset,
    spec: ExperimentSpec,
    out_dir: str | os.PathLike[str],
    *,
    progress: bool = True,
    resume: bool = True,
    on_round: Callable[[RoundRecord], None] | None = None,
    report_per_client: bool = False,
) -> dict[str, Any]:
    """Partition, run the federation, export the adapter, write report and plots.

    By default the report holds nothing per client that the DP guarantee does not
    cover (no training losses, label counts, example counts, contributor or failure
    identities: only counts per round). ``report_per_client=True`` adds them under
    ``per_client_debug``, marked as not covered by DP (debugging only).

    Returns:
        The report dict (also written to ``out_dir/report.json``).
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    parts = partition(
        train, spec.num_clients, spec.partition, spec.seed, alpha=spec.alpha
    )
    clients = {f"client{i}": p for i, p in enumerate(parts)}
    fed = Federation(config, clients, eval_data, out_dir=out, progress=progress)
    bar: Any = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.rounds.rounds, desc="rounds", unit="round")

    def cb(rec: RoundRecord) -> None:
        key = fed.main_metric
        eps = "n/a (no DP)" if config.privacy.level == "none" else f"{rec.epsilon:.3f}"
        base = next(
            (
                f" ({b}={rec.metrics[b]:.4f})"
                for b in ("majority_accuracy", "all_o_token_accuracy")
                if b in rec.metrics
            ),
            "",
        )
        line = (
            f"round {rec.round}: {key}={rec.metrics.get(key, float('nan')):.4f}{base} "
            f"epsilon={eps} contributors={len(rec.contributors)} failed={len(rec.failed)}"
            + ("" if rec.skipped is None else " (no release)")
        )
        if bar is not None:
            bar.update(1)
            bar.write(line)
        else:
            print(line, flush=True)
        if on_round is not None:
            on_round(rec)

    result = fed.run(resume=resume, on_round=cb)
    pooling = model_pooling(fed.handle.model) if config.task == "seq_cls" else "native"
    if result.adapter_dir is not None:  # what reloading the adapter + head needs
        write_model_sidecar(
            result.adapter_dir,
            model=config.model,
            task=config.task,
            pooling=pooling,
            label_names=fed.label_names,
        )
    if bar is not None:
        bar.close()
    rm = fed.resolved
    rounds = [
        {
            "round": r.round,
            "metrics": r.metrics,
            "epsilon": None if config.privacy.level == "none" else r.epsilon,
            "epsilon_per_client": r.epsilon_per_client,
            "num_contributors": len(r.contributors),
            "num_failed": len(r.failed),
            "released": r.skipped is None,
            "timings": r.timings,
            "bytes_sent_total": sum(r.bytes_sent.values()),
        }
        for r in result.rounds
    ]
    extra = {
        "task": config.task,
        "label_names": fed.label_names,
        "base_model_gguf_file": rm.gguf_file,
        "adapter_dir": str(result.adapter_dir) if result.adapter_dir else None,
        "backend": config.backend,
        "aggregation_mode": config.lora.mode,
        "pooling": pooling,
        "privacy": {
            "level": config.privacy.level,
            "meaning": {
                "none": "no differential privacy",
                "record": "record-level DP-SGD inside each client; epsilon = max over clients",
                "client": "client-level DP (clipped updates + distributed Gaussian noise shares)",
            }[config.privacy.level],
            "delta": config.privacy.delta,
            "noise_multiplier": fed.noise_multiplier,
            "noise_multiplier_calibrated": config.privacy.calibrate,
            "clip": config.privacy.clip,
            "final_epsilon": None
            if config.privacy.level == "none"
            else float(fed.ledger.spent()["epsilon"]),
            "target_epsilon": config.privacy.target_epsilon,
            "remaining_epsilon": fed.ledger.remaining(),
            "stopped": result.stopped,
            "accountant": fed.accountant,
            "accountant_source": ACCOUNTANT_SOURCE,
            "unit": config.privacy.unit,
            "ledger_folder": str(fed.ledger.folder),
            "prior_releases": result.prior_releases,
            "noise": None
            if fed.noise_share is None
            else {
                "share": "discrete_gaussian" if fed.integer_backend else "gaussian",
                "share_stddev": fed.noise_share.stddev,
                "min_clients": fed.min_clients,
                "neighbouring": "zero-out (one client's update replaced by zero)",
            },
        },
        "num_clients": len(clients),
        "eval_examples": len(eval_data),
        "partition": {
            "scheme": spec.partition,
            "alpha": spec.alpha,
            "num_clients": spec.num_clients,
        },
        "resumed_from_round": result.resumed_from,
        "archived_checkpoint": str(result.archived_checkpoint)
        if result.archived_checkpoint
        else None,
        "config": config.to_dict(),
        "wall_seconds": time.perf_counter() - t0,
    }
    if report_per_client:
        extra["per_client_debug"] = {
            "WARNING": "NOT covered by the differential-privacy guarantee; debugging only",
            "clients": {
                cid: {
                    "examples": len(p),
                    "label_counts": np.bincount(
                        p.labels_for_skew(), minlength=max(1, len(fed.label_names))
                    ).tolist()
                    if config.task != "causal_lm"
                    else None,
                }
                for cid, p in clients.items()
            },
            "rounds": [
                {
                    "round": r.round,
                    "contributors": r.contributors,
                    "failed": r.failed,
                    "skipped": r.skipped,
                    "train_loss": r.train_loss,
                    "bytes_sent": r.bytes_sent,
                }
                for r in result.rounds
            ],
        }
    report = build_report(
        main_metric=fed.main_metric,
        initial_metrics=result.initial_metrics,
        final_metrics=result.final_metrics,
        rounds=rounds,
        base_model=rm.path,
        num_labels=len(fed.label_names),
        extra=extra,
    )
    write_report(out / "report.json", report)
    plot_rounds(report, out)
    return report
