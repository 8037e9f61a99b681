"""Introspection of callables (internal): which keyword arguments a function takes."""

from __future__ import annotations

import inspect
from collections.abc import Callable

__all__ = ["accepts_keyword"]


def accepts_keyword(fn: Callable[..., object], name: str) -> bool:
    """Whether ``fn`` takes keyword argument ``name`` (or ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        p.kind is inspect.Parameter.VAR_KEYWORD
        or (
            p.name == name
            and p.kind
            in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        )
        for p in params
    )
