"""Tensor layout: a dict of named float arrays <-> one flat float64 vector.

A :class:`Layout` records the names (sorted, so the order is stable whatever order the
caller's dict has), shapes and dtypes of an update. Its :attr:`~Layout.fingerprint`
(SHA-256 of a canonical encoding) lets a receiver check that an update, a ciphertext or
an aggregate was made for the same layout before it restores the named arrays.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt

from privagg.errors import (
    ConfigurationError,
    DeserializationError,
    ParameterMismatchError,
)

__all__ = ["FloatVector", "Layout", "TensorSpec"]

FloatVector = npt.NDArray[np.float64]

_SUPPORTED_DTYPES = ("float16", "float32", "float64")
_MAX_NAME = 4096
_MAX_NDIM = 32
_MAX_SIZE = (
    1 << 40
)  # values in one update (8 TiB of float64): far above any real update


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """Name, shape and dtype of one array in an update."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def size(self) -> int:
        """Number of scalar values."""
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


@dataclass(frozen=True)
class Layout:
    """The stable, fingerprinted layout of a dict of named float arrays.

    Build one with :meth:`from_arrays`; two layouts are equal when names, shapes and
    dtypes all match.
    """

    specs: tuple[TensorSpec, ...]

    def __post_init__(self) -> None:
        names = [s.name for s in self.specs]
        if names != sorted(names) or len(set(names)) != len(names):
            raise ConfigurationError("layout names must be unique and sorted")
        for s in self.specs:
            if not isinstance(s.name, str) or not s.name or len(s.name) > _MAX_NAME:
                raise ConfigurationError("tensor names must be non-empty strings")
            if s.dtype not in _SUPPORTED_DTYPES:
                raise ConfigurationError(
                    f"tensor {s.name!r}: dtype must be one of {_SUPPORTED_DTYPES}, got {s.dtype}"
                )
            if len(s.shape) > _MAX_NDIM or any(d < 0 or d > _MAX_SIZE for d in s.shape):
                raise ConfigurationError(f"tensor {s.name!r}: invalid shape {s.shape}")
        total = 0
        for s in self.specs:
            n = 1
            for d in s.shape:
                n *= d
            total += n
        if total > _MAX_SIZE:
            raise ConfigurationError(
                f"layout has {total} values, more than {_MAX_SIZE}"
            )

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, npt.ArrayLike]) -> Layout:
        """Infer the layout of ``arrays`` (a mapping of name to float array).

        Raises:
            ConfigurationError: empty mapping, a non-string name or a non-float dtype.
        """
        if not isinstance(arrays, Mapping) or len(arrays) == 0:
            raise ConfigurationError(
                "an update must be a non-empty mapping of name -> array"
            )
        specs = []
        for name in sorted(arrays, key=_name_key):
            arr = np.asarray(arrays[name])
            if arr.dtype.kind != "f":
                raise ConfigurationError(
                    f"tensor {name!r}: expected a floating-point array, got dtype {arr.dtype}"
                )
            specs.append(
                TensorSpec(name, tuple(int(d) for d in arr.shape), arr.dtype.name)
            )
        return cls(tuple(specs))

    @cached_property
    def size(self) -> int:
        """Total number of scalar values across all tensors."""
        return sum(s.size for s in self.specs)

    @cached_property
    def names(self) -> tuple[str, ...]:
        """Tensor names, in layout order."""
        return tuple(s.name for s in self.specs)

    @cached_property
    def fingerprint(self) -> bytes:
        """SHA-256 over the canonical byte encoding of the layout."""
        return hashlib.sha256(b"privagg/layout/v1\x00" + self.to_bytes()).digest()

    def check(
        self, arrays: Mapping[str, npt.ArrayLike], *, who: str = "update"
    ) -> None:
        """Raise :class:`ParameterMismatchError` unless ``arrays`` has this layout."""
        if not isinstance(arrays, Mapping):
            raise ConfigurationError(f"{who}: expected a mapping of name -> array")
        if set(arrays) != set(self.names):
            missing = sorted(set(self.names) - set(arrays))[:3]
            extra = sorted(map(str, set(arrays) - set(self.names)))[:3]
            raise ParameterMismatchError(
                f"{who}: tensor names differ from the layout (missing {missing}, unexpected {extra})"
            )
        for s in self.specs:
            arr = np.asarray(arrays[s.name])
            if tuple(arr.shape) != s.shape:
                raise ParameterMismatchError(
                    f"{who}: tensor {s.name!r} has shape {tuple(arr.shape)}, layout says {s.shape}"
                )
            if arr.dtype.name != s.dtype:
                raise ParameterMismatchError(
                    f"{who}: tensor {s.name!r} has dtype {arr.dtype}, layout says {s.dtype}"
                )

    def flatten(
        self,
        arrays: Mapping[str, npt.ArrayLike],
        *,
        who: str = "update",
        copy: bool = True,
    ) -> FloatVector:
        """Concatenate ``arrays`` into one float64 vector in layout order.

        With ``copy=False``, a layout of one C-contiguous float64 tensor is returned as a
        read-only view of that tensor (no copy); the caller must then not change the
        tensor while it uses the vector. Every other case is a fresh copy.

        Raises:
            ParameterMismatchError: names, shapes or dtypes differ from the layout.
            ConfigurationError: a value is NaN or infinite.
        """
        self.check(arrays, who=who)
        if not copy and len(self.specs) == 1:
            arr = np.asarray(arrays[self.specs[0].name])
            if arr.dtype == np.float64 and arr.flags.c_contiguous:
                view = arr.reshape(-1).view()
                view.flags.writeable = False
                _check_finite(view, who)
                return view
        out = np.empty(self.size, dtype=np.float64)
        pos = 0
        for s in self.specs:
            n = s.size
            out[pos : pos + n] = np.asarray(arrays[s.name], dtype=np.float64).reshape(
                -1
            )
            pos += n
        _check_finite(out, who)
        return out

    def unflatten(self, vector: npt.ArrayLike) -> dict[str, npt.NDArray[np.floating]]:
        """Split a flat vector back into named arrays with the layout's shapes and dtypes."""
        vec = np.asarray(vector)
        if vec.ndim != 1 or vec.shape[0] != self.size:
            raise ParameterMismatchError(
                f"vector has shape {vec.shape}, layout expects ({self.size},)"
            )
        out: dict[str, npt.NDArray[np.floating]] = {}
        pos = 0
        for s in self.specs:
            n = s.size
            out[s.name] = vec[pos : pos + n].astype(s.dtype).reshape(s.shape)
            pos += n
        return out

    # -- canonical bytes ------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Canonical encoding: count, then per tensor name, dtype, ndim and dims."""
        parts = [struct.pack(">I", len(self.specs))]
        for s in self.specs:
            name = s.name.encode("utf-8")
            parts.append(struct.pack(">H", len(name)) + name)
            parts.append(
                struct.pack(">BB", _SUPPORTED_DTYPES.index(s.dtype), len(s.shape))
            )
            parts.append(struct.pack(f">{len(s.shape)}Q", *s.shape))
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> Layout:
        """Decode :meth:`to_bytes` output; any malformation raises DeserializationError."""
        try:
            view = memoryview(data)
            (count,) = struct.unpack_from(">I", view, 0)
            pos = 4
            specs = []
            for _ in range(count):
                (nlen,) = struct.unpack_from(">H", view, pos)
                pos += 2
                name = bytes(view[pos : pos + nlen]).decode("utf-8")
                if len(name.encode("utf-8")) != nlen:
                    raise ValueError
                pos += nlen
                dt, ndim = struct.unpack_from(">BB", view, pos)
                pos += 2
                shape = struct.unpack_from(f">{ndim}Q", view, pos)
                pos += 8 * ndim
                specs.append(
                    TensorSpec(
                        name, tuple(int(d) for d in shape), _SUPPORTED_DTYPES[dt]
                    )
                )
            if pos != len(view):
                raise ValueError
            return cls(tuple(specs))
        except (
            struct.error,
            ValueError,
            IndexError,
            UnicodeDecodeError,
            ConfigurationError,
        ):
            raise DeserializationError() from None

    def __repr__(self) -> str:
        return f"Layout(tensors={len(self.specs)}, size={self.size}, fp={self.fingerprint[:4].hex()})"


def _name_key(name: object) -> str:
    if not isinstance(name, str):
        raise ConfigurationError(f"tensor names must be str, got {type(name).__name__}")
    return name


def _check_finite(vec: FloatVector, who: str) -> None:
    """Raise unless every value of ``vec`` is finite. A finite sum proves it in one pass
    without a temporary (NaN and infinities propagate into the sum); only a non-finite
    sum, which finite values can also give by overflow, is checked value by value."""
    if not np.isfinite(np.add.reduce(vec)) and not np.isfinite(vec).all():
        raise ConfigurationError(f"{who}: contains NaN or infinite values")
