"""Per-round wall time of a fedtrain round, split by phase, side by side with the same
training without secure aggregation and with a plain peft training loop.

    python benchmarks/fedtrain_round.py --backend ckks --clients 4 --local-steps 10
    # H100 target (needs the model locally or online):
    python benchmarks/fedtrain_round.py --task causal_lm --model <1B decoder> \
        --target-modules q_proj,v_proj --rank 16 --clients 10 --backend ckks --device cuda

The last line is JSON with ``secure_overhead_fraction`` ((protect + aggregate +
recover) / round time, evaluation excluded) and ``local_step_ratio_vs_peft``
(fedtrain local steps per second / plain peft loop steps per second).
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
warnings.filterwarnings("ignore")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fedtrain.config import LoraSettings, RoundConfig, RunConfig  # noqa: E402
from fedtrain.data import partition  # noqa: E402
from fedtrain.experiment import choose_backend, load_task_data  # noqa: E402
from fedtrain.models import collate, encode, load_model, load_tokenizer, pick_device  # noqa: E402
from fedtrain.server import Federation  # noqa: E402
from fedtrain.train import autocast  # noqa: E402

PHASES = ("local_train", "protect", "aggregate", "recover", "apply")


def run_fed(cfg: RunConfig, clients: dict, ev: object, rounds: int) -> dict[str, float]:
    fed = Federation(cfg, clients, ev)  # type: ignore[arg-type]
    tot = dict.fromkeys(PHASES, 0.0)
    steps = 0
    for r in range(1, rounds + 1):
        rec = fed.run_one_round(r)
        if r == 1 and rounds > 1:
            continue  # warm-up round (allocations, key material caches)
        for k in PHASES:
            tot[k] += rec.timings[k]
        steps += len(rec.contributors) * (cfg.rounds.local_steps or 0)
    n = max(1, rounds - 1 if rounds > 1 else rounds)
    out = {k: v / n for k, v in tot.items()}
    out["round"] = sum(out[k] for k in PHASES)
    out["local_steps_per_s"] = (
        steps / tot["local_train"] if tot["local_train"] else float("nan")
    )
    out["final_metric"] = float(rec.metrics.get(fed.main_metric, float("nan")))
    return out


def peft_loop(cfg: RunConfig, data: object, steps: int) -> float:
    """A plain peft loop (HF loss, AdamW) on the same data; returns steps per second."""
    from peft import LoraConfig, get_peft_model

    dev = pick_device(cfg.device)
    tok = load_tokenizer(cfg.model)
    enc = encode(data, tok, cfg.max_len)  # type: ignore[arg-type]
    names = getattr(data, "label_names", [])
    model = load_model(cfg.model, cfg.task, label_names=names, device=dev)
    tt = {"seq_cls": "SEQ_CLS", "token_cls": "TOKEN_CLS", "causal_lm": "CAUSAL_LM"}[
        cfg.task
    ]
    tm = list(cfg.lora.target_modules) if cfg.lora.target_modules else None
    pm = get_peft_model(
        model,
        LoraConfig(
            r=cfg.lora.r, lora_alpha=cfg.lora.alpha, target_modules=tm, task_type=tt
        ),
    )
    pm.train()
    opt = torch.optim.AdamW(
        [p for p in pm.parameters() if p.requires_grad], lr=cfg.rounds.lr
    )
    rng = np.random.default_rng(0)
    bs = cfg.rounds.batch_size

    def step() -> None:
        idx = rng.choice(len(enc), size=min(bs, len(enc)), replace=False).tolist()
        batch = collate(enc, idx, dev)
        with autocast(dev, cfg.bf16):
            loss = pm(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--task", default="seq_cls", choices=["seq_cls", "token_cls", "causal_lm"]
    )
    ap.add_argument(
        "--data",
        default=None,
        help="default: rt (seq_cls, causal_lm) / conll (token_cls)",
    )
    ap.add_argument("--model", default=None)
    ap.add_argument("--backend", default="ckks")
    ap.add_argument(
        "--backend-options", default="{}", help="JSON dict for privagg.get_backend"
    )
    ap.add_argument("--mode", default="ffa", choices=["ffa", "fedit", "flora"])
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--target-modules", default=None)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument(
        "--rounds", type=int, default=2, help="the first round is a warm-up when > 1"
    )
    ap.add_argument("--local-steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--per-client", type=int, default=200)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    data = a.data or ("conll" if a.task == "token_cls" else "rt")
    model = a.model or ("smollm2" if a.task == "causal_lm" else "minilm")
    train, ev = load_task_data(
        a.task, data, max_train=a.per_client * a.clients, max_eval=128
    )
    parts = partition(train, a.clients, "iid", 0)
    clients = {f"c{i}": p for i, p in enumerate(parts)}
    backend = choose_backend(a.backend)
    tm = tuple(a.target_modules.split(",")) if a.target_modules else None

    def cfg_for(be: str) -> RunConfig:
        return RunConfig(
            task=a.task,
            model=model,
            max_len=a.max_len,
            backend=be,
            backend_options=json.loads(a.backend_options) if be != "plain" else {},
            lora=LoraSettings(
                r=a.rank, alpha=2.0 * a.rank, mode=a.mode, target_modules=tm
            ),
            rounds=RoundConfig(
                rounds=a.rounds, local_steps=a.local_steps, batch_size=a.batch_size
            ),
            device=a.device,
            eval_batch_size=64,
        )

    secure = run_fed(cfg_for(backend), clients, ev, a.rounds)
    print(
        "secure  :", json.dumps({k: round(v, 4) for k, v in secure.items()}), flush=True
    )
    plain = run_fed(cfg_for("plain"), clients, ev, a.rounds)
    print(
        "plain   :", json.dumps({k: round(v, 4) for k, v in plain.items()}), flush=True
    )
    peft_sps = peft_loop(cfg_for("plain"), parts[0], a.local_steps * 2)
    print(f"peft loop: {peft_sps:.3f} steps/s", flush=True)
    sec = secure["protect"] + secure["aggregate"] + secure["recover"]
    result = {
        "backend": backend,
        "mode": a.mode,
        "task": a.task,
        "model": model,
        "clients": a.clients,
        "device": str(pick_device(a.device)),
        "torch_threads": torch.get_num_threads(),
        "round_seconds": secure["round"],
        "phases_seconds": {k: secure[k] for k in PHASES},
        "round_seconds_plain_aggregation": plain["round"],
        "phases_seconds_plain_aggregation": {k: plain[k] for k in PHASES},
        "secure_overhead_fraction": sec / secure["round"],
        "fedtrain_local_steps_per_s": secure["local_steps_per_s"],
        "peft_loop_steps_per_s": peft_sps,
        "local_step_ratio_vs_peft": secure["local_steps_per_s"] / peft_sps,
        "final_metric_secure": secure["final_metric"],
        "final_metric_plain": plain["final_metric"],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
