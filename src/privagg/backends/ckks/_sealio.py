"""SEAL objects <-> bytes in memory: scratch files, SEAL's serialization header,
zstd frames and error translation."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import struct
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt

from privagg.errors import (
    ConfigurationError,
)

try:
    import tenseal.sealapi as sealapi
except ImportError as _exc:  # pragma: no cover - the registry reports this
    raise ImportError(f"the ckks backend needs TenSEAL: {_exc}") from _exc

__all__ = ["sealapi"]

_SEAL_MAGIC = 0xA15E
_SEAL_HEADER = struct.Struct("<HBBBBHQ")
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


# -- SEAL object <-> bytes (in memory) ----------------------------------------------
@contextlib.contextmanager
def _scratch_path() -> Iterator[str]:
    """A path SEAL can ``save``/``load`` through: an anonymous memory file on Linux.

    TenSEAL's ``sealapi`` binds SEAL's ``save``/``load`` on file paths only (SEAL's
    stream overloads are not exposed, and ``tenseal.context_from`` reads TenSEAL's own
    context format, not the bare SEAL objects this backend uses), so SEAL objects, the
    secret key included, pass through a path. On Linux it is a ``memfd`` (anonymous
    memory, never on a file system; ``/proc/self/fd/N`` is private to this process).
    """
    memfd = getattr(os, "memfd_create", None)
    fd = -1
    if memfd is not None:
        try:
            fd = memfd("privagg-ckks", getattr(os, "MFD_CLOEXEC", 0))
        except OSError:  # e.g. refused by a seccomp filter: take the file path
            fd = -1
    if fd >= 0:
        try:
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    # Without memfd: a 0600 file in a fresh 0700 directory (mkdtemp), overwritten with
    # zeros and removed in ``finally`` (security review #11, finding 9). Best effort:
    # the file system may keep old blocks (use an encrypted or RAM-backed TMPDIR
    # where that matters).
    d = tempfile.mkdtemp(prefix="privagg-ckks-")
    try:
        os.chmod(d, 0o700)
        path = os.path.join(d, "obj")
        os.close(
            os.open(
                path,
                os.O_CREAT
                | os.O_EXCL
                | os.O_RDWR
                | getattr(os, "O_NOFOLLOW", 0)
                | getattr(os, "O_CLOEXEC", 0),
                0o600,
            )
        )
        try:
            yield path
        finally:
            _wipe(path)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _wipe(path: str) -> None:
    """Overwrite a scratch file with zeros and fsync it before it is removed."""
    try:
        with open(path, "r+b") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(0)
            fh.write(bytes(size))
            fh.flush()
            os.fsync(fh.fileno())
    except OSError:
        pass


_FD_PREFIX = "/proc/self/fd/"


def _read(path: str) -> bytes:
    if path.startswith(_FD_PREFIX):  # our memfd: read it without reopening
        fd = int(path[len(_FD_PREFIX) :])
        size = os.fstat(fd).st_size
        data = os.pread(fd, size, 0)
        if len(data) == size:
            return data
    with open(path, "rb") as fh:  # pragma: no cover - non-Linux or short read
        return fh.read()


def _write(path: str, *parts: bytes | npt.NDArray[Any]) -> None:
    """Replace the file's content by the concatenation of ``parts`` (no joining copy)."""
    bufs = [
        memoryview(p).cast("B")
        if isinstance(p, bytes)
        else np.ascontiguousarray(p).reshape(-1).view(np.uint8).data
        for p in parts
    ]
    total = sum(len(b) for b in bufs)
    if path.startswith(_FD_PREFIX) and hasattr(os, "pwritev"):
        fd = int(path[len(_FD_PREFIX) :])
        done = os.pwritev(fd, bufs, 0)
        if done < total:  # pragma: no cover - short write: finish it piece by piece
            joined = memoryview(b"".join(bufs))
            while done < total:
                done += os.pwrite(fd, joined[done:], done)
        os.ftruncate(fd, total)
        return
    with open(path, "wb") as fh:  # pragma: no cover - non-Linux
        for b in bufs:
            fh.write(b)


def _seal_save(obj: Any) -> bytes:
    with _scratch_path() as p:
        obj.save(p)
        return _read(p)


def _seal_load(obj: Any, context: Any, data: bytes) -> None:
    with _scratch_path() as p:
        _write(p, data)
        obj.load(context, p)


class _CompressedError(Exception):
    """SEAL compressed this object (not a raw zstd frame): take the slow path."""


def _seal_body(blob: bytes) -> bytes:
    """The uncompressed body of a SEAL serialization (after its 16-byte header).

    SEAL compresses with zstd; random ciphertext words are incompressible, so zstd
    stores them as raw (or RLE) blocks, which this reads. A compressed block raises
    :class:`_CompressedError` and the caller falls back to reading words one by one.
    """
    magic, hsize, _vmaj, _vmin, mode, _res, size = _SEAL_HEADER.unpack_from(blob, 0)
    if magic != _SEAL_MAGIC or hsize != 16 or size != len(blob):
        raise _CompressedError
    body = memoryview(blob)[16:]
    if mode == 0:
        return bytes(body)
    if mode != 2 or bytes(body[:4]) != _ZSTD_MAGIC:
        raise _CompressedError
    fhd = body[4]
    pos = 5
    single = (fhd >> 5) & 1
    if not single:
        pos += 1
    pos += (0, 1, 2, 4)[fhd & 3]
    pos += (1 if single else 0, 2, 4, 8)[fhd >> 6]
    out: list[bytes] = []
    while True:
        if pos + 3 > len(body):
            raise _CompressedError
        h = int.from_bytes(body[pos : pos + 3], "little")
        pos += 3
        last, btype, bsize = h & 1, (h >> 1) & 3, h >> 3
        if btype == 0:
            out.append(bytes(body[pos : pos + bsize]))
            pos += bsize
        elif btype == 1:
            out.append(bytes(body[pos : pos + 1]) * bsize)
            pos += 1
        else:
            raise _CompressedError
        if last:
            break
    return b"".join(out)


def _load_zstd() -> Callable[[bytes, int], bytes | None] | None:
    """``ZSTD_decompress`` from the zstd SEAL itself links (or the system's), or None.

    TenSEAL's ``_sealapi_cpp`` extension links zstd statically and exports its
    symbols; SEAL compresses with it, so decompressing with the same library is
    exact. Without it the caller falls back to reading words one by one.
    """
    names: list[str] = []
    mod = sys.modules.get("_sealapi_cpp")
    if mod is not None and getattr(mod, "__file__", None):
        names.append(str(mod.__file__))
    system = ctypes.util.find_library("zstd")
    if system:
        names.append(system)
    for name in names:
        try:
            lib = ctypes.CDLL(name)
            fn = lib.ZSTD_decompress
            is_error = lib.ZSTD_isError
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_size_t
        fn.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_char_p,
            ctypes.c_size_t,
        ]
        is_error.restype = ctypes.c_uint
        is_error.argtypes = [ctypes.c_size_t]

        def decompress(
            frame: bytes, size: int, fn: Any = fn, err: Any = is_error
        ) -> bytes | None:
            out = ctypes.create_string_buffer(size)
            got = fn(out, size, frame, len(frame))
            if err(got) or got != size:
                return None
            return out.raw

        return decompress
    return None  # pragma: no cover - TenSEAL always ships zstd


_ZSTD = _load_zstd()


def _translate(what: str) -> Callable[[BaseException], NoReturn]:
    def raise_(exc: BaseException) -> NoReturn:
        # SEAL messages describe parameters, never values; keep them out anyway.
        raise ConfigurationError(f"CKKS {what} failed ({type(exc).__name__})") from None

    return raise_
