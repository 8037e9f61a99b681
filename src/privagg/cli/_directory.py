"""``privagg directory``: the SecAgg+ public-key directory (build it, show its pin)."""

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
from privagg.errors import ConfigurationError
from privagg.identity import MAX_DIRECTORY_BYTES, IdentityDirectory

_MAX_RECORD_FILE = 1 << 16


def _read(path: Path, limit: int) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > limit:
        raise ConfigurationError(f"{path} is larger than {limit} bytes")
    return data


def _report(directory: IdentityDirectory, path: Path, as_json: bool) -> None:
    record = {
        "command": "directory",
        "path": str(path),
        "fingerprint": directory.fingerprint.hex(),
        "parties": list(directory.parties),
    }
    if as_json:
        _emit_json(record)
        return
    console = _console()
    _print_fields(
        console,
        [
            ("directory", str(path)),
            ("parties", ", ".join(directory.parties)),
            ("fingerprint", directory.fingerprint.hex()),
        ],
    )
    console.print(
        "Give every client this fingerprint over a channel the server does not "
        "control; each pins it (node config privagg-directory-fingerprint)."
    )


@cli.command(short_help="Build or check a SecAgg+ public-key directory.")
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
    print its fingerprint (what every client pins).

    A new directory gets a fresh random nonce, hence a new fingerprint: rebuilding it
    (a rotated key, a new party) means every client pins the new fingerprint.
    """
    if not records:
        _report(
            IdentityDirectory.from_bytes(_read(directory, MAX_DIRECTORY_BYTES)),
            directory,
            as_json,
        )
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
    _report(built, directory, as_json)
