"""Shared fixtures for the DP tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _quiet_dp_accounting() -> Iterator[None]:
    # dp_accounting logs a warning for every fractional order it cannot converge;
    # the root level is restored after the test, so that later tests in the same
    # process (pytest-xdist worker) still see warnings in caplog
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    yield
    root.setLevel(level)
