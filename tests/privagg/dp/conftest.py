"""Shared fixtures for the DP tests."""

from __future__ import annotations

import logging

import pytest


@pytest.fixture(autouse=True)
def _quiet_dp_accounting() -> None:
    # dp_accounting logs a warning for every fractional order it cannot converge
    logging.getLogger().setLevel(logging.ERROR)
