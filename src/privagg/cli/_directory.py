"""``privagg directory``: the public directories of the self-keyed backends.

Builds the SecAgg+ public-key directory, or checks a directory file and prints the
fingerprint every party pins: the SecAgg+ identity directory (canonical JSON) or the
additive backend's key directory (a privagg envelope).
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from privagg.backends.additive import _material as additive_material
from privagg.cli._common import (
    OutputExistsError,
    _console,
    _emit_json,
    _json_option,
    _print_fields,
    cli,
)
from privagg.envelope import MAGIC
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


def _report_keys(data: bytes, path: Path, as_json: bool) -> None:
    """An additive key directory: its key holders and the fingerprint they pin."""
    entries = additive_material._parse_directory(data)
    fp = additive_material.directory_fingerprint(data).hex()
    holders = [f"{party} ({role})" for party, (role, _) in entries.items()]
    if as_json:
        _emit_json(
            {
                "command": "directory",
                "path": str(path),
                "backend": "additive",
                "fingerprint": fp,
                "key_holders": {p: role for p, (role, _) in entries.items()},
            }
        )
        return
    console = _console()
    _print_fields(
        console,
        [
            ("directory", str(path)),
            ("backend", "additive"),
            ("key holders", ", ".join(holders)),
            ("fingerprint", fp),
        ],
    )
    console.print(
        "Give every client, server and the result holder this fingerprint over a "
        "channel the coordinator does not control; each pins it (node config "
        "privagg-directory-fingerprint)."
    )


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
    print its fingerprint (what every party pins). Without RECORDS, DIRECTORY may also
    be an additive key directory (``fedtrain.flower.material.write_directory``).

    A new directory gets a fresh random nonce, hence a new fingerprint: rebuilding it
    (a rotated key, a new party) means every client pins the new fingerprint.
    """
    if not records:
        data = _read(directory, MAX_DIRECTORY_BYTES)
        if data.startswith(MAGIC):
            _report_keys(data, directory, as_json)
        else:
            _report(IdentityDirectory.from_bytes(data), directory, as_json)
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
