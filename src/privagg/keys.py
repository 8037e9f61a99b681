"""Secret material as its own types: never pickled, never printed, exported only on purpose.

* :class:`SecretBytes` holds raw secret bytes (seeds, shares, symmetric keys).
* :class:`SecretKey` holds a backend's secret-key object (a private TenSEAL context, a
  Paillier private key) next to a public fingerprint.

Both refuse ``pickle``/``copy``, show only a fingerprint in ``repr``/``str``, and compare
in constant time. Exporting requires an explicit :class:`Protection`:
``NoProtection()`` to write the key in the clear on purpose, or
``PasswordProtection(password)`` (scrypt + AES-256-GCM). :func:`write_secret_file`
writes key files with mode 0600, atomically.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, NoReturn, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from privagg._rng import Rng, SystemRng
from privagg.envelope import (
    Header,
    PayloadReader,
    PayloadWriter,
    Scheme,
    open_envelope,
    seal,
)
from privagg.errors import ConfigurationError, DeserializationError

__all__ = [
    "NoProtection",
    "PasswordProtection",
    "Protection",
    "SecretBytes",
    "SecretKey",
    "fingerprint",
    "read_secret_file",
    "write_secret_file",
]

_SECRET_KIND = 1  # Scheme.CORE kind for an exported secret
_NONE, _PASSWORD = 0, 1


def fingerprint(*parts: bytes) -> bytes:
    """SHA-256 over length-prefixed parts: a public identifier, safe to show and log."""
    h = hashlib.sha256(b"privagg/fp/v1")
    for p in parts:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
    return h.digest()


class _NoCopy:
    __slots__ = ()

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            f"{type(self).__name__} holds secret material and cannot be pickled"
        )

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        self.__reduce__()
        raise AssertionError  # unreachable

    def __getstate__(self) -> NoReturn:
        self.__reduce__()
        raise AssertionError

    def __copy__(self) -> NoReturn:
        raise TypeError(f"{type(self).__name__} cannot be copied")

    def __deepcopy__(self, memo: object) -> NoReturn:
        raise TypeError(f"{type(self).__name__} cannot be copied")


class SecretBytes(_NoCopy):
    """Raw secret bytes. ``reveal()`` is the only way to read them."""

    __slots__ = ("_data", "_label")

    def __init__(self, data: bytes, *, label: str = "secret") -> None:
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError("SecretBytes takes bytes")
        self._data = bytes(data)
        self._label = label

    @classmethod
    def random(
        cls, n: int, rng: Rng | None = None, *, label: str = "secret"
    ) -> SecretBytes:
        """``n`` fresh random bytes from ``rng`` (the OS CSPRNG by default)."""
        return cls((rng or SystemRng()).random_bytes(n), label=label)

    def reveal(self) -> bytes:
        """The secret bytes. Call only where the secret is used."""
        return self._data

    def __len__(self) -> int:
        return len(self._data)

    @property
    def fingerprint(self) -> bytes:
        """A one-way public identifier of the secret (SHA-256, domain separated)."""
        return fingerprint(b"secret-bytes", self._data)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretBytes):
            return NotImplemented
        return hmac.compare_digest(self._data, other._data)

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __repr__(self) -> str:
        return f"<SecretBytes {self._label} len={len(self._data)} fp={self.fingerprint[:4].hex()}…>"

    __str__ = __repr__


_M = TypeVar("_M")


class SecretKey(_NoCopy, Generic[_M]):
    """A backend's secret key. The material stays inside; only a public fingerprint shows.

    Args:
        scheme: the backend's name ("ckks", "paillier", ...).
        material: the backend's secret-key object.
        public_fingerprint: fingerprint of the matching *public* parameters.
        export: turns the material into bytes (used only by :meth:`to_bytes`).
    """

    __slots__ = ("_export", "_material", "_public_fingerprint", "_scheme")

    def __init__(
        self,
        scheme: str,
        material: _M,
        *,
        public_fingerprint: bytes,
        export: Callable[[_M], bytes] | None = None,
    ) -> None:
        self._scheme = scheme
        self._material = material
        self._public_fingerprint = public_fingerprint
        self._export = export

    @property
    def scheme(self) -> str:
        """The backend this key belongs to."""
        return self._scheme

    @property
    def public_fingerprint(self) -> bytes:
        """Fingerprint of the matching public parameters (safe to show)."""
        return self._public_fingerprint

    def unsafe_material(self) -> _M:
        """The raw secret-key object. Hazmat: for the backend that owns it."""
        return self._material

    def to_bytes(self, *, protection: Protection) -> bytes:
        """Export the key; ``protection`` is mandatory (pass NoProtection() on purpose)."""
        if self._export is None:
            raise ConfigurationError(f"{self._scheme} secret keys cannot be exported")
        return protection.wrap(
            self._scheme, self._public_fingerprint, self._export(self._material)
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretKey):
            return NotImplemented
        return self._scheme == other._scheme and hmac.compare_digest(
            self._public_fingerprint, other._public_fingerprint
        )

    def __hash__(self) -> int:
        return hash((self._scheme, self._public_fingerprint))

    def __repr__(self) -> str:
        return f"<SecretKey {self._scheme} fp={self._public_fingerprint[:4].hex()}…>"

    __str__ = __repr__


class Protection:
    """How an exported secret is protected. Use a subclass."""

    def wrap(self, scheme: str, public_fp: bytes, secret: bytes) -> bytes:
        """Return an envelope holding ``secret`` under this protection."""
        raise NotImplementedError

    def unwrap(self, data: bytes) -> tuple[str, bytes, bytes]:
        """Return ``(scheme, public_fingerprint, secret)`` from :meth:`wrap`'s output."""
        header, payload = open_envelope(data)
        if header.scheme != Scheme.CORE or header.kind != _SECRET_KIND:
            raise DeserializationError()
        r = PayloadReader(payload)
        try:
            method = r.u8()
            scheme = r.text()
            if method == _NONE:
                secret = r.blob()
            elif method == _PASSWORD:
                salt, nonce, ct = r.blob(), r.blob(), r.blob()
                secret = self._decrypt(scheme, header.params_id, salt, nonce, ct)
            else:
                raise DeserializationError()
            r.done()
        except DeserializationError:
            raise
        except Exception:
            raise DeserializationError() from None
        return scheme, header.params_id, secret

    def _decrypt(
        self, scheme: str, public_fp: bytes, salt: bytes, nonce: bytes, ct: bytes
    ) -> bytes:
        raise DeserializationError(
            "this secret is password-protected: use PasswordProtection"
        )


@dataclass(frozen=True, repr=False)
class NoProtection(Protection):
    """Export in the clear, on purpose (for a key that goes into an HSM/KMS, say)."""

    def wrap(self, scheme: str, public_fp: bytes, secret: bytes) -> bytes:
        """Return an envelope holding ``secret`` unprotected."""
        payload = PayloadWriter().u8(_NONE).text(scheme).blob(secret).getvalue()
        return seal(Header(Scheme.CORE, _SECRET_KIND, public_fp, 0), payload)

    def __repr__(self) -> str:
        return "NoProtection()"


class PasswordProtection(Protection):
    """scrypt(password) -> AES-256-GCM key; the scheme and public fingerprint are AAD."""

    __slots__ = ("_password", "_rng")

    def __init__(self, password: bytes | str, *, rng: Rng | None = None) -> None:
        pw = password.encode("utf-8") if isinstance(password, str) else bytes(password)
        if len(pw) < 8:
            raise ConfigurationError("password must be at least 8 bytes")
        self._password = pw
        self._rng = rng or SystemRng()

    def _key(self, salt: bytes) -> bytes:
        return Scrypt(salt=salt, length=32, n=1 << 15, r=8, p=1).derive(self._password)

    def wrap(self, scheme: str, public_fp: bytes, secret: bytes) -> bytes:
        """Return an envelope holding ``secret`` encrypted under the password."""
        salt, nonce = self._rng.random_bytes(16), self._rng.random_bytes(12)
        aad = scheme.encode("utf-8") + public_fp
        ct = AESGCM(self._key(salt)).encrypt(nonce, secret, aad)
        payload = (
            PayloadWriter()
            .u8(_PASSWORD)
            .text(scheme)
            .blob(salt)
            .blob(nonce)
            .blob(ct)
            .getvalue()
        )
        return seal(Header(Scheme.CORE, _SECRET_KIND, public_fp, 0), payload)

    def _decrypt(
        self, scheme: str, public_fp: bytes, salt: bytes, nonce: bytes, ct: bytes
    ) -> bytes:
        try:
            return AESGCM(self._key(salt)).decrypt(
                nonce, ct, scheme.encode("utf-8") + public_fp
            )
        except InvalidTag:
            raise DeserializationError("wrong password or tampered key file") from None

    def __repr__(self) -> str:
        return "PasswordProtection(<password hidden>)"

    def __reduce__(self) -> NoReturn:
        raise TypeError("PasswordProtection cannot be pickled")


def write_secret_file(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically with mode 0600 (owner read/write only).

    The bytes go to a fresh 0600 temporary file in the same directory (created with
    ``O_EXCL``, so never through a planted file or link), are fsynced, and replace
    ``path`` in one ``os.replace``; the directory is fsynced too, so a crash leaves the
    old file or the new one, never a partial key. A symbolic link planted at ``path``
    is replaced itself; its target is never written. A missing directory is created
    with mode 0700.
    """
    target = Path(path)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkstemp opens O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW with mode 0600 under a random
    # name (non-inheritable, PEP 446); fchmod makes the mode exact whatever the umask.
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return target


def _fsync_dir(directory: Path) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # not supported on this platform: the file itself was fsynced
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


#: Largest key file read (a CKKS secret context is a few MB; 64 MiB is generous).
MAX_SECRET_FILE_BYTES = 64 << 20


def read_secret_file(
    path: str | os.PathLike[str], *, max_bytes: int = MAX_SECRET_FILE_BYTES
) -> bytes:
    """Read a key file safely.

    The file is opened once, without following a symbolic link (``O_NOFOLLOW``), and
    every check runs on the open descriptor (``fstat``), so nothing can be swapped
    between the check and the read (security review #11, finding 9). Refused, with
    :class:`ConfigurationError`: a symbolic link, anything but a regular file (a FIFO
    or device is opened non-blocking, then refused), a file that group or others can
    read, write or execute, a file not owned by the effective uid (on POSIX), or one
    larger than ``max_bytes`` (read through the descriptor, at most ``max_bytes + 1``
    bytes, so a file that grows after ``fstat`` is refused too).

    ``O_NOFOLLOW`` covers the last path component; the directories leading to it are
    trusted as usual (keep key files in a directory only their owner can write).
    """
    p = Path(path)
    # O_NONBLOCK: opening a FIFO (or a device) must not block before fstat refuses it;
    # it changes nothing for a regular file.
    flags = (
        os.O_RDONLY
        | getattr(os, "O_NOFOLLOW", 0)
        | getattr(os, "O_CLOEXEC", 0)
        | getattr(os, "O_NONBLOCK", 0)
    )
    try:
        fd = os.open(p, flags)
    except OSError as exc:
        if p.is_symlink():
            raise ConfigurationError(
                f"{p} is a symbolic link; key files must be regular files"
            ) from None
        raise ConfigurationError(f"cannot open key file {p}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigurationError(f"{p} is not a regular file")
        mode = st.st_mode & 0o777
        if mode & 0o077:
            raise ConfigurationError(
                f"{p} is accessible by group/others (mode {oct(mode)}); chmod 600 it"
            )
        geteuid = getattr(os, "geteuid", None)
        if geteuid is not None and st.st_uid != geteuid():
            raise ConfigurationError(
                f"{p} is owned by uid {st.st_uid}, not by this user; refusing to read it"
            )
        if st.st_size > max_bytes:
            raise ConfigurationError(
                f"{p} is {st.st_size} bytes, more than max_bytes={max_bytes}"
            )
        chunks = []
        left = max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > max_bytes:
            raise ConfigurationError(f"{p} grew beyond max_bytes={max_bytes}")
        return data
    finally:
        os.close(fd)
