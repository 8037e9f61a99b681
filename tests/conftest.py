"""Shared pytest configuration: markers, GPU skipping, hypothesis profiles."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "dev",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("thorough", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


# ``make test`` runs the suite on pytest-xdist workers (``-n``). Each test file goes to
# one worker whole, so a module-scoped fixture is built once; the files that start real
# SuperLink/SuperNode processes form one unit, so only one deployment runs at a time
# (each keeps both CI cores busy, and their stage timeouts are sized for that).
_DEPLOYMENT_FILES = frozenset(
    {
        "test_flower_deployment.py",
        "test_flower_deployment_active.py",
        "test_flower_deployment_additive.py",
        "test_flower_tls.py",
    }
)


def xdist_unit(nodeid: str) -> str:
    """The scheduling unit of a test: its file, or one unit for the deployment files."""
    path = nodeid.split("::", 1)[0]
    return "flower-deployment" if path.rsplit("/", 1)[-1] in _DEPLOYMENT_FILES else path


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    # (``--dist loadgroup`` cannot do this: pytest-xdist 3.8 tags the group onto
    # ``item._nodeid``, which pytest 9 no longer reads.)
    from xdist.scheduler import LoadScopeScheduling

    class _Units(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return xdist_unit(nodeid)

    return _Units(config, log)


_OWN_CACHE = "_PRIVAGG_TESTS_OWN_CACHE"


def pytest_configure(config: pytest.Config) -> None:
    """One fedtrain cache folder for the whole run (xdist workers and the example
    subprocesses inherit it from the controller's environment), made fresh, so the
    GGUF model is converted once per run and never read from an earlier run's cache."""
    if hasattr(config, "workerinput") or os.environ.get("FEDTRAIN_CACHE_DIR"):
        return
    import tempfile

    os.environ["FEDTRAIN_CACHE_DIR"] = tempfile.mkdtemp(prefix="fedtrain-test-cache-")
    os.environ[_OWN_CACHE] = "1"


def pytest_unconfigure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput") or not os.environ.pop(_OWN_CACHE, None):
        return
    import shutil

    shutil.rmtree(os.environ.pop("FEDTRAIN_CACHE_DIR"), ignore_errors=True)


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    if any(item.get_closest_marker("gpu") for item in items) and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if item.get_closest_marker("gpu"):
                item.add_marker(skip)
