"""Checkpoints (atomic) and standard peft adapter export.

Layout of a run folder::

    DIR/checkpoint/meta.json            round, config, history, state file name
    DIR/checkpoint/state-rNNNN.safetensors   global state + server optimizer moments
    DIR/privacy/*.json                  the privacy ledgers (see fedtrain.privacy);
                                        kept by a fresh start (--no-resume)
    DIR/archive/checkpoint-<UTC time>/  a checkpoint set aside by a fresh start
    DIR/adapter/                        peft folder (adapter_config.json + safetensors)

Every file is written to a temp file, fsynced and ``os.replace``d. ``meta.json`` is
written last and names its state file, so a crash leaves the previous consistent
checkpoint in place. No pickle anywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save

from fedtrain.errors import FedtrainError
from fedtrain.lora import LoraHandle, module_names
from fedtrain.privacy import atomic_write_bytes

__all__ = ["config_changes", "export_adapter", "load_checkpoint", "save_checkpoint"]

FORMAT = "fedtrain-checkpoint-1"


def save_checkpoint(
    folder: str | os.PathLike[str],
    *,
    round_: int,
    arrays: Mapping[str, np.ndarray],
    meta: Mapping[str, Any],
) -> None:
    """Atomically write a checkpoint for a completed round.

    Args:
        folder: the checkpoint folder.
        round_: the last completed round.
        arrays: global state and optimizer arrays (name -> array).
        meta: JSON-serialisable metadata (no RNG state, no secrets).
    """
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    state_name = f"state-r{round_:04d}.safetensors"
    atomic_write_bytes(
        d / state_name, save({k: np.ascontiguousarray(v) for k, v in arrays.items()})
    )
    full = {"format": FORMAT, "round": round_, "state_file": state_name, **meta}
    atomic_write_bytes(
        d / "meta.json", json.dumps(full, indent=1, allow_nan=True).encode()
    )
    for old in d.glob("state-r*.safetensors"):
        if old.name != state_name:
            old.unlink(missing_ok=True)


def load_checkpoint(
    folder: str | os.PathLike[str],
) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """Load the last checkpoint, or None if there is none.

    Returns:
        ``(meta, arrays)``.

    Raises:
        FedtrainError: a checkpoint of another format or a missing state file.
    """
    d = Path(folder)
    mp = d / "meta.json"
    if not mp.is_file():
        return None
    try:
        meta = json.loads(mp.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise FedtrainError(f"{mp}: unreadable checkpoint metadata ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise FedtrainError(f"{mp}: not a {FORMAT} checkpoint")
    state_file = meta.get("state_file")
    if (
        not isinstance(state_file, str)
        or not state_file
        or Path(state_file).name != state_file
        or state_file in (".", "..")
    ):
        raise FedtrainError(f"{mp}: bad state_file {state_file!r}")
    sp = d / state_file
    if not sp.is_file():
        raise FedtrainError(f"{mp}: state file {sp.name} is missing")
    try:
        arrays = dict(load_file(str(sp)))
    except (OSError, SafetensorError) as exc:
        raise FedtrainError(f"{sp}: unreadable checkpoint state ({exc})") from exc
    return meta, arrays


def _replace_dir(tmp: Path, dest: Path) -> None:
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_adapter(
    handle: LoraHandle,
    global_state: Mapping[str, np.ndarray],
    dest: str | os.PathLike[str],
    *,
    mode: str,
) -> Path:
    """Write the global adapter as a standard peft folder (safetensors).

    ``ffa``/``fedit``/``alternating``: the global A, B and head via
    ``save_pretrained``. ``flora``:
    the merged global update ``Delta W`` of each module is written as an exact
    low-rank factorisation (SVD truncated at its numerical rank; ``lora_alpha = r``
    so the scaling is 1) next to the head, loadable with ``PeftModel.from_pretrained``.

    Args:
        handle: the LoRA handle (its peft model is used to save).
        global_state: the global state.
        dest: destination folder (replaced atomically).
        mode: aggregation mode.

    Returns:
        The destination path.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    if mode in ("ffa", "fedit", "alternating"):
        saved = handle.get()
        try:
            handle.set({k: v for k, v in global_state.items() if k in handle.params})
            handle.model.save_pretrained(str(tmp), safe_serialization=True)
        finally:
            handle.set(saved)
    else:
        factors: dict[str, np.ndarray] = {}
        ranks = []
        deltas = {m.name: global_state.get(m.name + ".delta_w") for m in handle.modules}
        svd = {}
        for name, dw in deltas.items():
            if dw is None:
                continue
            u, s, vt = np.linalg.svd(dw.astype(np.float64), full_matrices=False)
            keep = int((s > s.max() * 1e-7).sum()) if s.size and s.max() > 0 else 0
            svd[name] = (u, s, vt)
            ranks.append(max(1, keep))
        r = max(ranks) if ranks else 1
        for m in handle.modules:
            out_f, in_f = m.base.weight.shape
            a = np.zeros((r, in_f), np.float32)
            b = np.zeros((out_f, r), np.float32)
            if m.name in svd:
                u, s, vt = svd[m.name]
                k = min(r, len(s))
                root = np.sqrt(s[:k])
                b[:, :k] = u[:, :k] * root
                a[:k] = root[:, None] * vt[:k]
            factors[f"base_model.model.{m.name}.lora_A.weight"] = a
            factors[f"base_model.model.{m.name}.lora_B.weight"] = b
        for n in handle.head_names:
            factors[f"base_model.model.{n}"] = np.asarray(global_state[n], np.float32)
        cfg = handle.model.peft_config["default"]
        cfg_d = cfg.to_dict()
        cfg_d.update(
            {
                "r": r,
                "lora_alpha": r,
                "inference_mode": True,
                "rank_pattern": {},
                "alpha_pattern": {},
            }
        )
        for k, v in list(cfg_d.items()):
            if isinstance(v, set):
                cfg_d[k] = sorted(v)
        (tmp / "adapter_config.json").write_text(
            json.dumps(cfg_d, indent=2, default=str)
        )
        (tmp / "adapter_model.safetensors").write_bytes(save(factors))
        if not module_names([k.removeprefix("base_model.model.") for k in factors]):
            raise FedtrainError("flora export produced no LoRA modules")
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _replace_dir(tmp, dest)
    return dest


def config_changes(
    saved: Mapping[str, Any], now: Mapping[str, Any], prefix: str = ""
) -> list[str]:
    """Dotted keys whose values differ between two :meth:`RunConfig.to_dict` dicts.

    ``rounds.rounds`` is not a change when it grows (a resumed run may be extended).
    """
    out: list[str] = []
    for k in sorted(set(saved) | set(now)):
        key = f"{prefix}{k}"
        a, b = saved.get(k), now.get(k)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += config_changes(a, b, key + ".")
        elif key == "rounds.rounds" and isinstance(a, int) and isinstance(b, int):
            if b < a:
                out.append(key)
        elif a != b:
            out.append(key)
    return out
