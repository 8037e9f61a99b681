"""``privagg directory``: the SecAgg+ public-key directory (build it, show its pin),
and the pin of an additive key directory."""

from __future__ import annotations

import os
from pathlib import Path

import click

from privagg.cli._common import (
    OutputExistsError,
    _console,
    _emit_json,
    _json_option,
    _print_fields,
    cli,
)
from privagg.distribution import directory_fingerprint
from privagg.envelope import MAGIC
from privagg.errors import ConfigurationError
from privagg.identity import MAX_DIRECTORY_BYTES, IdentityDirectory

_MAX_RECORD_FILE = 1 << 16
_MAX_OWN_KEYS_DIRECTORY = 1 << 20


def _read(path: Path, limit: int) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > limit:
        raise ConfigurationError(f"{path} is larger than {limit} bytes")
    return data


def _report(
    path: Path, as_json: bool, fp: bytes, parties: list[str], kind: str
) -> None:
    """Show a directory's parties and fingerprint (``kind``: ``identity`` for a
    SecAgg+ identity directory, ``own-keys`` for an additive key directory)."""
    record = {
        "command": "directory",
        "path": str(path),
        "kind": kind,
        "fingerprint": fp.hex(),
        "parties": parties,
    }
    if as_json:
        _emit_json(record)
        return
    console = _console()
    _print_fields(
        console,
        [
            ("directory", f"{path} ({kind})"),
            ("parties", ", ".join(parties)),
            ("fingerprint", fp.hex()),
        ],
    )
    console.print(
        "Give every node this fingerprint over a channel the server does not "
        "control; each pins it (node config privagg-directory-fingerprint; the "
        "ServerApp: run config directory-fingerprint)."
    )


def _show(directory: IdentityDirectory, path: Path, as_json: bool) -> None:
    _report(path, as_json, directory.fingerprint, list(directory.parties), "identity")


def _own_keys_directory(data: bytes) -> tuple[bytes, list[str]]:
    """``(fingerprint, parties)`` of an additive key directory file (checked)."""
    from privagg.backends.additive._material import parse_directory

    return directory_fingerprint(data), sorted(parse_directory(data))


@cli.command(short_help="Build or check a public-key directory; print its pin.")
@click.argument("directory", type=click.Path(dir_okay=False, path_type=Path))
@click.argument(
    "records", nargs=-1, type=click.Path(dir_okay=False, exists=True, path_type=Path)
)
@click.option("--force", is_flag=True, help="Overwrite an existing directory file.")
@_json_option
def directory(
    directory: Path, records: tuple[Path, ...], force: bool, as_json: bool
) -> None:
    """Build DIRECTORY from the clients' RECORDS (``secagg-identity-P.pub`` files of
    ``privagg keygen --backend secagg``), or, without RECORDS, check DIRECTORY and
    print its fingerprint (what every client pins). Without RECORDS, DIRECTORY may
    also be an additive key directory (``fedtrain.flower.material.write_directory``):
    its fingerprint, which every node and the ServerApp pin, is printed the same way.

    A new directory gets a fresh random nonce, hence a new fingerprint: rebuilding it
    (a rotated key, a new party) means every client pins the new fingerprint.
    """
    if not records:
        data = _read(directory, max(MAX_DIRECTORY_BYTES, _MAX_OWN_KEYS_DIRECTORY))
        if data.startswith(MAGIC):  # a privagg envelope: an additive key directory
            fp, parties = _own_keys_directory(data)
            _report(directory, as_json, fp, parties, "own-keys")
            return
        if len(data) > MAX_DIRECTORY_BYTES:
            raise ConfigurationError(
                f"{directory} is larger than {MAX_DIRECTORY_BYTES} bytes"
            )
        _show(IdentityDirectory.from_bytes(data), directory, as_json)
        return
    if (directory.exists() or directory.is_symlink()) and not force:
        raise OutputExistsError(
            f"refusing to overwrite {directory} (pass --force to replace it)"
        )
    built = IdentityDirectory.build(_read(p, _MAX_RECORD_FILE) for p in records)
    tmp = directory.with_name(directory.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(built.to_bytes())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, directory)
    _show(built, directory, as_json)
