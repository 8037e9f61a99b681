"""Read frozen settings dataclasses from a Flower run config."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

from fedtrain.flower.errors import FlowerConfigError

__all__ = ["settings_from_config"]

_T = TypeVar("_T")


def settings_from_config(
    cls: type[_T],
    cfg: Mapping[str, Any],
    *,
    prefix: str = "",
    unprefixed: Collection[str] = (),
    skip: Collection[str] = (),
) -> _T:
    """Build the dataclass ``cls`` from run-config keys; missing keys keep defaults.

    Field ``min_nodes`` is read from key ``<prefix>min-nodes`` (``min-nodes`` if the
    field is in ``unprefixed``) and converted to the type of the field's default.

    Args:
        cls: a dataclass whose fields all have defaults.
        cfg: the Flower run config.
        prefix: prepended to every key not in ``unprefixed``.
        unprefixed: field names read without the prefix.
        skip: field names left at their defaults (the caller parses them).

    Returns:
        The settings.

    Raises:
        privagg.ConfigurationError: a value that does not convert.
    """
    default = cls()
    values: dict[str, Any] = {}
    for f in dataclasses.fields(default):  # type: ignore[arg-type]
        if f.name in skip:
            continue
        key = f.name.replace("_", "-")
        key = key if f.name in unprefixed else prefix + key
        if key not in cfg:
            continue
        current, value = getattr(default, f.name), cfg[key]
        if isinstance(current, bool) and not isinstance(value, bool):
            raise FlowerConfigError(f"run config {key!r} must be a bool, got {value!r}")
        try:
            values[f.name] = type(current)(value)
        except (TypeError, ValueError, OverflowError) as exc:
            raise FlowerConfigError(f"run config {key!r}: bad value {value!r}") from exc
    return cls(**values)
