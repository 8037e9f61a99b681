"""Helpers shared by the DP tests (importable: pytest puts this folder on sys.path)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "dp"


def load_vector(name: str) -> dict[str, Any]:
    """Load a known-answer vector file; every file names its source and generator."""
    doc: dict[str, Any] = json.loads((VECTORS / name).read_text())
    assert "source" in doc and "generated_by" in doc
    return doc
