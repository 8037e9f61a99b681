"""Shared pytest configuration: markers, GPU skipping, hypothesis profiles."""

from __future__ import annotations

import os

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


# Tests that start real SuperLink/SuperNode processes run one at a time on one xdist
# worker: each deployment already keeps both CI cores busy, and their stage timeouts
# are sized for one deployment at a time.
_DEPLOYMENT_FILES = frozenset(
    {
        "test_flower_deployment.py",
        "test_flower_deployment_active.py",
        "test_flower_deployment_additive.py",
        "test_flower_tls.py",
    }
)


def _xdist_group(item: pytest.Item) -> str | None:
    """The xdist group of a test (``make test`` runs ``-n 2 --dist loadgroup``).

    Deployment tests share one group; a test using a module-scoped fixture is grouped
    with the rest of its file, so the fixture is built once, on one worker; every other
    test is scheduled on its own.
    """
    if item.path.name in _DEPLOYMENT_FILES:
        return "flower-deployment"
    info = getattr(item, "_fixtureinfo", None)
    defs = getattr(info, "name2fixturedefs", {})
    for fixture_defs in defs.values():
        if fixture_defs and fixture_defs[-1].scope == "module":
            return str(item.path)
    return None


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    if config.pluginmanager.hasplugin("xdist"):
        for item in items:
            group = _xdist_group(item)
            if group is not None:
                item.add_marker(pytest.mark.xdist_group(group))
    if any(item.get_closest_marker("gpu") for item in items) and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if item.get_closest_marker("gpu"):
                item.add_marker(skip)
