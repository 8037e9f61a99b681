"""The demo's recipes: binary sentiment on Rotten Tomatoes, MiniLM-L6, 4 clients.

Two recipes, picked by the privacy level (every value can be overridden by a flag):

* **record-level DP** (the demo default): LP-FT's first phase under DP-SGD. The
  encoder is read with the mean pooling it was trained for; the zero-initialised
  linear head is trained with DP-SGD (SGD, momentum 0.9, lr 0.5, C = 1) on pooled
  features computed once per client (``LoraSettings.head_steps`` = all local steps),
  Poisson batches of expected size 512 (q ~ 0.2), 4 rounds x 20 steps = 80 steps,
  z = 1.4: epsilon ~ 7.4 per client at delta 1e-5. Every step is one
  Poisson-sampled Gaussian release and is accounted; the adapter (FFA-LoRA B) is
  exchanged under CKKS like the head but stays at zero, since measured DP-SGD steps
  on the LoRA factors did not pay for their cost here (docs/fedtrain.md).
* **no DP** (``--privacy none``): FFA-LoRA r=8 on query/key/value/dense plus the
  head, AdamW (lr 2e-3, head 5e-3), batch 32, 4 rounds x 40 local steps.

The evaluation set is every review of the held-out 20% of the movies (about 2,500).
"""

from __future__ import annotations

import argparse
from typing import Any, cast

from fedtrain import experiment
from fedtrain.config import LoraSettings, PrivacyConfig, RoundConfig, RunConfig
from fedtrain.data import RawDataset
from fedtrain.experiment import ExperimentSpec

__all__ = ["DEMO_EVAL_FRACTION", "RECIPES", "sentiment_setup"]

DEMO_EVAL_FRACTION = 0.2

RECIPES: dict[str, dict[str, Any]] = {
    "record": {
        "rounds": 4,
        "local_steps": 20,
        "head_steps": 20,
        "batch_size": 512,
        "optimizer": "sgd",
        "lr": 1e-3,
        "head_lr": 0.5,
        "noise_multiplier": 1.4,
        "clip": 1.0,
        "target_modules": None,
        "max_len": 48,
    },
    "none": {
        "rounds": 4,
        "local_steps": 40,
        "head_steps": 0,
        "batch_size": 32,
        "optimizer": "adamw",
        "lr": 2e-3,
        "head_lr": 5e-3,
        "noise_multiplier": 1.0,
        "clip": 1.0,
        "target_modules": ("query", "key", "value", "dense"),
        "max_len": 48,
    },
    "quick": {
        "rounds": 1,
        "local_steps": 3,
        "head_steps": 1,
        "batch_size": 8,
        "optimizer": "adamw",
        "lr": 2e-3,
        "head_lr": 1e-2,
        "noise_multiplier": 0.6,
        "clip": 1.0,
        "target_modules": None,
        "max_len": 32,
    },
}
RECIPES["client"] = dict(RECIPES["none"])


def _pick(v: Any, default: Any) -> Any:
    return default if v is None else v


def sentiment_setup(
    args: argparse.Namespace,
    *,
    backend: str,
    privacy_extra: dict[str, Any],
) -> tuple[RunConfig, RawDataset, RawDataset, ExperimentSpec]:
    """The demo's configuration, data and partition from parsed CLI flags.

    Args:
        args: the ``demo`` command's flags (``None`` = the recipe's value).
        backend: the privagg backend (already checked to be available).
        privacy_extra: budget / calibration / unit keywords for PrivacyConfig.

    Returns:
        ``(config, train, eval, spec)``.
    """
    level = cast(Any, _pick(args.privacy, "record"))
    q = bool(getattr(args, "quick", False))
    r = RECIPES["quick" if q else level]
    tm = getattr(args, "target_modules", None)
    cfg = RunConfig(
        task="seq_cls",
        model="minilm",
        max_len=_pick(args.max_len, r["max_len"]),
        lora=LoraSettings(
            r=8,
            alpha=16.0,
            mode=cast(Any, _pick(args.mode, "ffa")),
            pooling=cast(Any, _pick(getattr(args, "pooling", None), "auto")),
            head_steps=_pick(getattr(args, "head_steps", None), r["head_steps"]),
            target_modules=tuple(tm.split(",")) if tm else r["target_modules"],
        ),
        rounds=RoundConfig(
            rounds=_pick(args.rounds, r["rounds"]),
            local_steps=_pick(args.local_steps, r["local_steps"]),
            batch_size=_pick(args.batch_size, r["batch_size"]),
            lr=_pick(args.lr, r["lr"]),
            head_lr=_pick(args.head_lr, r["head_lr"]),
            optimizer=_pick(args.optimizer, r["optimizer"]),
        ),
        privacy=PrivacyConfig(
            level=level,
            noise_multiplier=_pick(args.noise_multiplier, r["noise_multiplier"]),
            clip=_pick(args.clip, r["clip"]),
            head_clip=args.head_clip,
            delta=_pick(args.delta, 1e-5),
            **privacy_extra,
        ),
        backend=backend,
        device=args.device,
        seed=args.seed,
        model_dropout=getattr(args, "dropout", None),
    )
    # looked up at call time: a test that patches experiment.load_task_data while this
    # module is first imported must not leave the patched function bound here
    train, ev = experiment.load_task_data(
        "seq_cls",
        "rt",
        max_train=_pick(args.max_train, 64 if q else None),
        max_eval=_pick(args.max_eval, 64 if q else None),
        seed=args.seed,
        eval_fraction=DEMO_EVAL_FRACTION,
    )
    # non-IID: clients split by movie (the natural key), balanced in size
    spec = ExperimentSpec(
        num_clients=_pick(args.clients, 2 if q else 4),
        partition="key",
        seed=args.seed,
    )
    return cfg, train, ev, spec
