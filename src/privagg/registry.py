"""Backends by name: a closed built-in table, plus explicit registration.

Built-in backends are imported lazily from a fixed table, so a missing optional
dependency (TenSEAL, phe) only matters when that backend is asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from privagg.errors import ConfigurationError, UnsupportedError, UnsupportedReason
from privagg.protocols import Backend

__all__ = ["available_backends", "get_backend", "register_backend"]

_BUILTIN: dict[str, tuple[str, str, str]] = {
    # name: (module, class, extra that installs its dependencies)
    "plain": ("privagg.backends.plain", "PlainBackend", ""),
    "ckks": ("privagg.backends.ckks", "CkksBackend", "ckks"),
    "paillier": ("privagg.backends.paillier", "PaillierBackend", "paillier"),
    "secagg": ("privagg.backends.secagg", "SecAggBackend", ""),
    "additive": ("privagg.backends.additive", "AdditiveBackend", ""),
}
_REGISTERED: dict[str, Callable[..., Backend]] = {}


def register_backend(
    name: str, factory: Callable[..., Backend], *, force: bool = False
) -> None:
    """Make ``factory(**options)`` available as ``get_backend(name, **options)``."""
    if not name or not name.isidentifier():
        raise ConfigurationError(f"backend name must be an identifier, got {name!r}")
    if (name in _REGISTERED or name in _BUILTIN) and not force:
        raise ConfigurationError(
            f"backend {name!r} is already registered (pass force=True)"
        )
    _REGISTERED[name] = factory


def _factory(name: str) -> Callable[..., Backend]:
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in _BUILTIN:
        known = sorted(set(_BUILTIN) | set(_REGISTERED))
        raise ConfigurationError(f"unknown backend {name!r}; known: {known}")
    module, cls, extra = _BUILTIN[name]
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        hint = f" (pip install 'privagg[{extra}]')" if extra else ""
        raise UnsupportedError(
            f"backend {name!r} is unavailable: {exc}{hint}",
            UnsupportedReason.BACKEND_UNAVAILABLE,
        ) from exc
    factory: Callable[..., Backend] = getattr(mod, cls)
    return factory


def get_backend(name: str | Backend, **options: Any) -> Backend:
    """A configured backend: ``get_backend("paillier", bound=1.0, key_bits=2048)``.

    Args:
        name: a registered name, or an already configured backend (returned as is).
        **options: the backend's constructor arguments (see each backend's docs).

    Raises:
        ConfigurationError: unknown name or bad options.
        UnsupportedError: the backend's optional dependency is not installed.
    """
    if not isinstance(name, str):
        if options:
            raise ConfigurationError("options cannot be given with a backend instance")
        return name
    factory = _factory(name)
    try:
        return factory(**options)
    except TypeError as exc:
        raise ConfigurationError(f"bad options for backend {name!r}: {exc}") from None


def available_backends() -> list[str]:
    """Names of the backends whose dependencies are installed and that import."""
    out = []
    for name in [*_BUILTIN, *_REGISTERED]:
        try:
            _factory(name)
        except (UnsupportedError, ImportError, AttributeError):
            continue
        out.append(name)
    return out
