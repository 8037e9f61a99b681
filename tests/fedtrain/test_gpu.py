"""The CUDA path (bf16 autocast); skipped without a GPU."""

from __future__ import annotations

import pytest
import torch
from fedtrain_helpers import small_config, two_clients

from fedtrain.config import PrivacyConfig
from fedtrain.data import RawDataset
from fedtrain.server import Federation

pytestmark = pytest.mark.gpu

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@needs_cuda
@pytest.mark.parametrize("level", ["none", "record"])
def test_round_on_cuda_bf16(
    level: str, rt_small: tuple[RawDataset, RawDataset]
) -> None:
    train, ev = rt_small
    cfg = small_config(device="cuda", bf16=True, privacy=PrivacyConfig(level=level))  # type: ignore[arg-type]
    fed = Federation(cfg, two_clients(train), ev)
    assert next(fed.handle.model.parameters()).device.type == "cuda"
    rec = fed.run_one_round(1)
    assert rec.contributors == ["alice", "bob"]
    assert all(v.dtype.name == "float32" for v in fed.global_state.values())
    assert 0.0 <= rec.metrics["accuracy"] <= 1.0


@needs_cuda
def test_ner_on_cuda(conll_small: tuple[RawDataset, RawDataset]) -> None:
    train, ev = conll_small
    fed = Federation(
        small_config(task="token_cls", device="cuda"), two_clients(train), ev
    )
    rec = fed.run_one_round(1)
    assert {"entity_f1", "token_accuracy", "all_o_token_accuracy"} <= set(rec.metrics)
