"""The demo's DP recipe learns: a scaled-down run beats the majority rate.

The full demo (about 10,000 training reviews, 2,479 evaluation reviews, epsilon
~7.4) is not a CI test; this runs the same recipe (mean pooling, LP-FT head steps
under record-level DP-SGD, SGD momentum, Poisson batches, CKKS-free ``plain``
aggregation) on 4 x ~500 reviews at epsilon <= 8 in about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from fedtrain.experiment import run_experiment
from fedtrain.recipes import RECIPES, sentiment_setup


def _args(**kw: object) -> argparse.Namespace:
    base = {
        k: None
        for k in (
            "privacy rounds local_steps batch_size lr head_lr optimizer max_len "
            "max_train max_eval mode noise_multiplier clip head_clip delta clients "
            "pooling head_steps dropout"
        ).split()
    }
    base.update(device="cpu", seed=0, quick=False)
    base.update(kw)
    return argparse.Namespace(**base)


@pytest.mark.slow
def test_scaled_down_dp_recipe_beats_the_majority_rate(tmp_path: Path) -> None:
    r = RECIPES["record"]
    cfg, train, ev, spec = sentiment_setup(
        _args(
            max_train=2000,
            max_eval=600,
            batch_size=128,  # q ~ 0.26 on ~500 reviews per client
            rounds=2,
            local_steps=20,
            noise_multiplier=1.31,  # 40 steps: epsilon ~ 7.5
        ),
        backend="plain",
        privacy_extra={},
    )
    assert cfg.lora.head_steps == r["head_steps"] >= cfg.rounds.local_steps
    assert cfg.privacy.level == "record" and cfg.lora.pooling == "auto"
    rep = run_experiment(cfg, train, ev, spec, tmp_path, progress=False)
    final = rep["final_metrics"]
    eps = rep["privacy"]["final_epsilon"]
    assert rep["pooling"] == "mean"
    assert 0 < eps <= 8.0
    assert final["accuracy"] >= final["majority_accuracy"] + 0.08, final
    assert (tmp_path / "metric.png").is_file()
