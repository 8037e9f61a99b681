"""Shared fixtures: small slices of the real offline data, the real MiniLM."""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from pathlib import Path

import pytest

if (
    importlib.util.find_spec("fedtrain") is None
):  # running from a checkout without install
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", message=".*Full backward hook is firing.*")

torch = pytest.importorskip("torch")
torch.set_num_threads(2)

from fedtrain.data import (  # noqa: E402
    RawDataset,
    conll_default_path,
    load_conll,
    load_rotten_tomatoes,
)


@pytest.fixture(scope="session")
def rt_all() -> RawDataset:
    return load_rotten_tomatoes()


@pytest.fixture(scope="session")
def rt_small(rt_all: RawDataset) -> tuple[RawDataset, RawDataset]:
    """64 training and 32 evaluation reviews (every 97th / 101st, offset)."""
    train = rt_all.subset(list(range(0, 64 * 97, 97)))
    ev = rt_all.subset(list(range(5, 5 + 32 * 101, 101)))
    return train, ev


@pytest.fixture(scope="session")
def conll_small() -> tuple[RawDataset, RawDataset]:
    train = load_conll(conll_default_path("valid")).head(64)
    ev = load_conll(conll_default_path("test")).head(32)
    return train, ev


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Silence Opacus' benign full-backward-hook warning in the fedtrain tests."""
    here = Path(__file__).resolve().parent
    mark = pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")
    fut = pytest.mark.filterwarnings("ignore::FutureWarning")
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(mark)
            item.add_marker(fut)
