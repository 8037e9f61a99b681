"""Command line: ``fedtrain demo --out DIR`` and ``fedtrain train ...``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any, TypeVar, cast

import privagg

__all__ = ["build_parser", "main"]


def _threads() -> None:
    import torch

    n = int(os.environ.get("FEDTRAIN_THREADS", "0"))
    if n <= 0:
        # Oversubscribed OpenMP threads spin and can run several times slower than
        # one thread, so leave the cores that other processes are busy on.
        cores = min(8, os.cpu_count() or 1)
        busy = int(os.getloadavg()[0] + 0.5) if hasattr(os, "getloadavg") else 0
        n = max(1, cores - busy)
    torch.set_num_threads(n)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out", required=True, help="run folder (report, adapter, checkpoint)"
    )
    p.add_argument(
        "--backend",
        default=None,
        help="privagg backend (default: ckks; 'plain' only when named explicitly)",
    )
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--clients", type=int, default=None)
    p.add_argument("--local-steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="LoRA learning rate")
    p.add_argument(
        "--head-lr", type=float, default=None, help="task-head learning rate"
    )
    p.add_argument("--optimizer", choices=["adamw", "sgd"], default=None)
    p.add_argument("--max-len", type=int, default=None)
    p.add_argument(
        "--max-train", type=int, default=None, help="training examples in total"
    )
    p.add_argument("--max-eval", type=int, default=None)
    p.add_argument("--mode", choices=["ffa", "fedit", "flora"], default=None)
    p.add_argument(
        "--pooling",
        choices=["auto", "cls", "pooler", "mean"],
        default=None,
        help="seq_cls: how the head reads the encoder (auto: the model's "
        "sentence-transformers pooling, else its native head)",
    )
    p.add_argument(
        "--head-steps",
        type=int,
        default=None,
        help="seq_cls: per round, the first N local steps train the head alone on "
        "cached pooled features (LP-FT)",
    )
    p.add_argument("--privacy", choices=["none", "record", "client"], default=None)
    p.add_argument("--noise-multiplier", type=float, default=None)
    p.add_argument("--clip", type=float, default=None)
    p.add_argument(
        "--head-clip",
        type=float,
        default=None,
        help="record-level DP: clip the head's per-example gradient separately",
    )
    p.add_argument("--delta", type=float, default=None)
    p.add_argument(
        "--target-epsilon",
        type=float,
        default=None,
        help="privacy budget; the run stops before exceeding it. Without "
        "--noise-multiplier the multiplier is calibrated to it for the planned "
        "rounds, steps and sampling",
    )
    p.add_argument(
        "--min-clients",
        type=int,
        default=None,
        help="client-level DP: guaranteed minimum of contributors the noise is sized "
        "for (fewer: the round is refused)",
    )
    p.add_argument(
        "--dropout",
        type=float,
        default=None,
        help="base-model dropout (default: 0 under DP, the model's own otherwise)",
    )
    p.add_argument(
        "--privacy-unit",
        default=None,
        help="name a NEW privacy unit (new data): its own ledgers. By default runs "
        "in the same folder keep counting into the same ledgers, also with --no-resume",
    )
    p.add_argument(
        "--report-per-client",
        action="store_true",
        help="DEBUG: add per-client losses, label counts and identities to "
        "report.json (not covered by the DP guarantee)",
    )
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="start over (the checkpoint is archived; privacy ledgers are kept)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser."""
    ap = argparse.ArgumentParser(
        prog="fedtrain", description="Federated LoRA fine-tuning on privagg"
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser(
        "demo",
        help="the embedded default: RT sentiment, MiniLM-L6, 4 clients, CKKS, DP-SGD",
    )
    _common(d)
    d.add_argument(
        "--quick", action="store_true", help="a tiny configuration (tests, smoke runs)"
    )
    t = sub.add_parser("train", help="a configurable run")
    _common(t)
    t.add_argument(
        "--task", choices=["seq_cls", "token_cls", "causal_lm"], required=True
    )
    t.add_argument(
        "--data",
        required=True,
        help="rt | conll | hf:NAME[:SPLIT] | file (.csv/.jsonl/CoNLL)",
    )
    t.add_argument("--eval-data", default=None)
    t.add_argument(
        "--model", default=None, help="minilm | smollm2 | HF name | path | .gguf"
    )
    t.add_argument(
        "--partition", choices=["iid", "dirichlet", "key"], default="dirichlet"
    )
    t.add_argument("--alpha", type=float, default=0.5)
    t.add_argument("--rank", type=int, default=8)
    t.add_argument("--target-modules", default=None, help="comma-separated")
    t.add_argument(
        "--server-opt", choices=["fedavg", "fedadam", "fedyogi"], default="fedavg"
    )
    t.add_argument("--server-lr", type=float, default=None)
    t.add_argument("--sampling", choices=["poisson", "fraction"], default="fraction")
    t.add_argument("--sample-rate", type=float, default=1.0)
    t.add_argument("--local-epochs", type=float, default=None)
    return ap


T = TypeVar("T")


def _privacy_extra(args: argparse.Namespace) -> dict[str, Any]:
    """Budget, calibration, minimum contributors and privacy unit from the flags."""
    out: dict[str, Any] = {
        "target_epsilon": args.target_epsilon,
        # a target without an explicit multiplier: calibrate z to it
        "calibrate": args.target_epsilon is not None and args.noise_multiplier is None,
        "min_clients": args.min_clients,
    }
    if args.privacy_unit is not None:
        out["unit"] = args.privacy_unit
    return out


def _pick(v: T | None, default: T) -> T:
    return default if v is None else v


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fedtrain`` and ``python -m fedtrain``.

    Returns:
        The exit status.
    """
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", message=".*Full backward hook is firing.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    _threads()
    from fedtrain.config import LoraSettings, PrivacyConfig, RoundConfig, RunConfig
    from fedtrain.errors import FedtrainError
    from fedtrain.experiment import (
        ExperimentSpec,
        choose_backend,
        load_task_data,
        run_experiment,
    )

    t0 = time.perf_counter()
    try:
        if args.cmd == "demo":
            from fedtrain.recipes import sentiment_setup

            cfg, train, ev, spec = sentiment_setup(
                args,
                backend=choose_backend(args.backend or "ckks"),
                privacy_extra=_privacy_extra(args),
            )
        else:
            tm = tuple(args.target_modules.split(",")) if args.target_modules else None
            cfg = RunConfig(
                task=args.task,
                model=_pick(
                    args.model, "smollm2" if args.task == "causal_lm" else "minilm"
                ),
                max_len=_pick(args.max_len, 64),
                lora=LoraSettings(
                    r=args.rank,
                    alpha=2.0 * args.rank,
                    mode=cast(Any, _pick(args.mode, "ffa")),
                    target_modules=tm,
                    pooling=cast(Any, _pick(args.pooling, "auto")),
                    head_steps=_pick(args.head_steps, 0),
                ),
                rounds=RoundConfig(
                    rounds=_pick(args.rounds, 3),
                    sampling=args.sampling,
                    sample_rate=args.sample_rate,
                    local_steps=None
                    if args.local_epochs is not None and args.local_steps is None
                    else _pick(args.local_steps, 20),
                    local_epochs=args.local_epochs,
                    batch_size=_pick(args.batch_size, 16),
                    lr=_pick(args.lr, 2e-3),
                    head_lr=args.head_lr,
                    optimizer=_pick(args.optimizer, "adamw"),
                    server_opt=args.server_opt,
                    server_lr=_pick(
                        args.server_lr, 1.0 if args.server_opt == "fedavg" else 1e-2
                    ),
                ),
                privacy=PrivacyConfig(
                    level=cast(Any, _pick(args.privacy, "none")),
                    noise_multiplier=_pick(args.noise_multiplier, 1.0),
                    clip=_pick(args.clip, 1.0),
                    head_clip=args.head_clip,
                    delta=_pick(args.delta, 1e-5),
                    **_privacy_extra(args),
                ),
                backend=choose_backend(args.backend or "ckks"),
                device=args.device,
                seed=args.seed,
                model_dropout=args.dropout,
            )
            train, ev = load_task_data(
                args.task,
                args.data,
                eval_data=args.eval_data,
                max_train=args.max_train,
                max_eval=args.max_eval,
                seed=args.seed,
            )
            spec = ExperimentSpec(
                num_clients=_pick(args.clients, 4),
                partition=args.partition,
                alpha=args.alpha,
                seed=args.seed,
            )
        report = run_experiment(
            cfg,
            train,
            ev,
            spec,
            args.out,
            progress=not args.no_progress,
            resume=not args.no_resume,
            report_per_client=args.report_per_client,
        )
    except FedtrainError as exc:
        print(f"fedtrain: error: {exc}", file=sys.stderr)
        return 2
    except privagg.BudgetExceededError as exc:
        print(f"fedtrain: privacy budget exhausted: {exc}", file=sys.stderr)
        return 3
    except privagg.PrivaggError as exc:
        print(f"fedtrain: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    summary = {
        "main_metric": report["main_metric"],
        "initial": report["initial_metrics"].get(report["main_metric"]),
        "final": report["final_metrics"].get(report["main_metric"]),
        "epsilon": report["privacy"]["final_epsilon"],
        "backend": report["backend"],
        "seconds": round(time.perf_counter() - t0, 1),
        "out": str(args.out),
    }
    print(json.dumps(summary))
    from fedtrain.report import summary_line

    print(summary_line(report), flush=True)
    if report["privacy"].get("stopped"):
        pv = report["privacy"]
        print(
            f"fedtrain: privacy budget exhausted, the run stopped early: "
            f"{pv['stopped']}; epsilon spent {pv['final_epsilon']:.6g} of "
            f"{pv['target_epsilon']:g}, remaining {pv['remaining_epsilon']:.6g}",
            file=sys.stderr,
        )
        return 3
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
