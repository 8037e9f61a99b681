"""``privagg keygen``: key files for one deployment role set or one client identity."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from privagg.cli._common import (
    _IDENTITY_FORMAT,
    _IDENTITY_SCHEME,
    OutputExistsError,
    _console,
    _emit_json,
    _json_option,
    _print_fields,
    _safe,
    cli,
)
from privagg.errors import (
    ConfigurationError,
)
from privagg.identity import _IDENTITY_FP_DOMAIN, _PARTY_ID
from privagg.keys import (
    NoProtection,
    PasswordProtection,
    Protection,
    SecretBytes,
    SecretKey,
    fingerprint,
    write_secret_file,
)


# -- keygen ----------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)  # data may be a secret key: no field-wise ==
class _KeyFile:
    """One file ``keygen`` writes: name, bytes, secret or not, who gets it, how it loads."""

    name: str
    data: bytes = field(repr=False)
    secret: bool
    recipient: str
    load_with: str


@dataclass(frozen=True)
class _KeySet:
    """What ``keygen`` made for one backend."""

    backend: str
    files: tuple[_KeyFile, ...]
    public_fingerprint: bytes
    details: dict[str, Any]
    notes: tuple[str, ...]


def _protection(password_env: str | None) -> Protection:
    if password_env is None:
        return NoProtection()
    password = os.environ.get(password_env)
    if password is None:
        raise ConfigurationError(
            f"--password-env {password_env}: the environment variable is not set"
        )
    return PasswordProtection(password)


def _keys_ckks(preset: str | None, protection: Protection) -> _KeySet:
    from privagg.backends.ckks import CkksBackend

    backend = CkksBackend(preset=preset or "secure")
    secret = backend.keygen()
    public = secret.public
    p = public.params
    return _KeySet(
        "ckks",
        (
            _KeyFile(
                "ckks-holder.key",
                secret.to_bytes(protection=protection),
                True,
                "the result holder only",
                "CkksSecretContext.load(path, protection=...), or "
                "CkksBackend.load_role(layout, 'holder', None, data, ...)",
            ),
            _KeyFile(
                "ckks-public.key",
                public.to_bytes(),
                False,
                "the aggregator and every client",
                "CkksPublicContext.from_bytes(data), or "
                "CkksBackend.load_role(layout, 'aggregator' | 'client', ...)",
            ),
        ),
        public.fingerprint,
        {
            "preset": backend.preset,
            "poly_modulus_degree": p.poly_modulus_degree,
            "data_bits": list(p.data_bits),
            "scale_bits": p.scale_bits,
            "value_bound": p.value_bound,
            "flood_bits": p.flood_bits,
        },
        (
            "Clients and the aggregator must compare the public fingerprint with the "
            "one the result holder sends them over an authenticated channel: a "
            "substituted public key cannot be detected from its bytes.",
        ),
    )


def _keys_paillier(key_bits: int | None, protection: Protection) -> _KeySet:
    from privagg.backends.paillier import PaillierBackend

    backend = (
        PaillierBackend() if key_bits is None else PaillierBackend(key_bits=key_bits)
    )
    public, secret = backend.keygen()
    return _KeySet(
        "paillier",
        (
            _KeyFile(
                "paillier-holder.key",
                secret.to_bytes(protection=protection),
                True,
                "the result holder only",
                "privagg.backends.paillier.load_secret_key(data, protection)",
            ),
            _KeyFile(
                "paillier-public.key",
                public.to_bytes(),
                False,
                "the aggregator and every client",
                "PaillierPublicKey.from_bytes(data, expected_fingerprint=...)",
            ),
        ),
        public.fingerprint,
        {"key_bits": public.key_bits},
        (
            "Clients must load the public key with expected_fingerprint set to the "
            "fingerprint the result holder sends them over an authenticated channel.",
        ),
    )


def _identity_fingerprint(public_key: bytes) -> bytes:
    return fingerprint(_IDENTITY_FP_DOMAIN, public_key)


def _check_party_id(party_id: str | None) -> str:
    if party_id is None:
        raise ConfigurationError(
            "--backend secagg makes one client's identity key: give --party-id"
        )
    if not _PARTY_ID.fullmatch(party_id):
        raise ConfigurationError(
            "--party-id must be 1-64 characters of A-Z a-z 0-9 . _ - "
            "(not starting with . _ -)"
        )
    return party_id


def _keys_secagg(party_id: str | None, protection: Protection) -> _KeySet:
    from privagg._rng import SystemRng
    from privagg.backends._primitives import ed25519_public, new_ed25519

    party_id = _check_party_id(party_id)
    private = SecretBytes(new_ed25519(SystemRng()), label="secagg identity key")
    public = ed25519_public(private.reveal())
    fp = _identity_fingerprint(public)
    key: SecretKey[SecretBytes] = SecretKey(
        _IDENTITY_SCHEME,
        private,
        public_fingerprint=fp,
        export=lambda m: m.reveal(),
    )
    public_record = {
        "format": _IDENTITY_FORMAT,
        "party_id": party_id,
        "ed25519_public_key": public.hex(),
        "fingerprint": fp.hex(),
    }
    return _KeySet(
        "secagg",
        (
            _KeyFile(
                f"secagg-identity-{party_id}.key",
                key.to_bytes(protection=protection),
                True,
                f"client {party_id} only",
                "NoProtection().unwrap(data) or PasswordProtection(pw).unwrap(data) "
                "-> (scheme, public fingerprint, 32-byte Ed25519 private key)",
            ),
            _KeyFile(
                f"secagg-identity-{party_id}.pub",
                (json.dumps(public_record, indent=2, sort_keys=True) + "\n").encode(),
                False,
                "the operator (public-key directory)",
                "json.loads: party_id, ed25519_public_key (hex), fingerprint",
            ),
        ),
        fp,
        {"party_id": party_id, "ed25519_public_key": public.hex()},
        (
            "SecAgg+ has no long-term key for the aggregator or the result holder: "
            "run keygen once per client, on that client's machine. The operator "
            "builds the public-key directory from the collected .pub files with "
            "'privagg directory DIR.json *.pub' and every client pins its "
            "fingerprint (privagg.identity).",
        ),
    )


def _check_targets(out_dir: Path, names: Sequence[str], force: bool) -> None:
    existing = [
        n for n in names if (out_dir / n).exists() or (out_dir / n).is_symlink()
    ]
    if existing and not force:
        raise OutputExistsError(
            f"refusing to overwrite {', '.join(existing)} in {out_dir} "
            "(pass --force to replace them)"
        )


def _write_key_files(out_dir: Path, files: Sequence[_KeyFile]) -> None:
    if not out_dir.exists():
        out_dir.mkdir(mode=0o700, parents=True)
    for f in files:
        path = write_secret_file(out_dir / f.name, f.data)  # atomic, 0600
        if not f.secret:
            os.chmod(path, 0o644)  # public material: readable by anyone


@cli.command(short_help="Write key files (secrets 0600) and say who gets which.")
@click.option(
    "--backend",
    type=click.Choice(["ckks", "paillier", "secagg"]),
    required=True,
    help="Which backend's keys to make.",
)
@click.argument(
    "out_dir", type=click.Path(file_okay=False, dir_okay=True, path_type=Path)
)
@click.option("--preset", help="CKKS parameter preset (default: secure).")
@click.option(
    "--key-bits",
    type=click.Choice(["2048", "3072"]),
    help="Paillier modulus size (default: the backend's, 3072).",
)
@click.option("--party-id", help="SecAgg+: the client whose identity key to make.")
@click.option(
    "--password-env",
    metavar="VAR",
    help="Encrypt the secret file under the password in environment variable VAR "
    "(scrypt + AES-256-GCM); without it the secret is protected by its 0600 mode only.",
)
@click.option("--force", is_flag=True, help="Overwrite existing files.")
@_json_option
def keygen(
    backend: str,
    out_dir: Path,
    preset: str | None,
    key_bits: str | None,
    party_id: str | None,
    password_env: str | None,
    force: bool,
    as_json: bool,
) -> None:
    """Make key files in OUT_DIR: secrets with mode 0600, public material separately.

    \b
    ckks      ckks-holder.key (secret context: result holder only)
              ckks-public.key (public context: aggregator and clients)
    paillier  paillier-holder.key (secret key: result holder only)
              paillier-public.key (public key: aggregator and clients)
    secagg    secagg-identity-PARTY.key (one client's Ed25519 identity key)
              secagg-identity-PARTY.pub (its public key, for the operator's directory)

    Existing files are never overwritten without --force.
    """
    _check_options(backend, preset=preset, key_bits=key_bits, party_id=party_id)
    protection = _protection(password_env)
    if backend == "secagg":
        _check_party_id(party_id)  # before any I/O
    names = _file_names(backend, party_id)
    _check_targets(out_dir, names, force)
    keys = _make_keys(backend, preset, key_bits, party_id, protection)
    _write_key_files(out_dir, keys.files)
    protected = "password" if isinstance(protection, PasswordProtection) else "none"
    record = {
        "command": "keygen",
        "backend": keys.backend,
        "out_dir": str(out_dir),
        "public_fingerprint": keys.public_fingerprint.hex(),
        "secret_protection": protected,
        "files": [
            {
                "path": str(out_dir / f.name),
                "secret": f.secret,
                "mode": "0600" if f.secret else "0644",
                "bytes": len(f.data),
                "give_to": f.recipient,
                "load_with": f.load_with,
            }
            for f in keys.files
        ],
        "details": keys.details,
        "notes": list(keys.notes),
    }
    if as_json:
        _emit_json(record)
        return
    _print_keygen(keys, out_dir, protected)


def _check_options(
    backend: str, *, preset: str | None, key_bits: str | None, party_id: str | None
) -> None:
    wrong = [
        opt
        for opt, value, owner in (
            ("--preset", preset, "ckks"),
            ("--key-bits", key_bits, "paillier"),
            ("--party-id", party_id, "secagg"),
        )
        if value is not None and backend != owner
    ]
    if wrong:
        raise ConfigurationError(
            f"{', '.join(wrong)} does not apply to --backend {backend}"
        )


def _file_names(backend: str, party_id: str | None) -> list[str]:
    if backend == "secagg":
        return [f"secagg-identity-{party_id}.key", f"secagg-identity-{party_id}.pub"]
    return [f"{backend}-holder.key", f"{backend}-public.key"]


def _make_keys(
    backend: str,
    preset: str | None,
    key_bits: str | None,
    party_id: str | None,
    protection: Protection,
) -> _KeySet:
    if backend == "ckks":
        return _keys_ckks(preset, protection)
    if backend == "paillier":
        return _keys_paillier(None if key_bits is None else int(key_bits), protection)
    return _keys_secagg(party_id, protection)


def _print_keygen(keys: _KeySet, out_dir: Path, protected: str) -> None:
    console = _console()
    console.print(
        Text.assemble(
            ("Wrote ", "bold"),
            (keys.backend, "bold cyan"),
            f" keys to {_safe(out_dir)}",  # escaped: a lone surrogate broke stdout
        )
    )
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    table.add_column("file")
    table.add_column("kind")
    table.add_column("copy to")
    for f in keys.files:
        kind = Text("SECRET 0600", "bold red") if f.secret else Text("public 0644")
        table.add_row(_safe(f.name), kind, f.recipient)
    console.print(table)
    _print_fields(
        console,
        [
            ("public fingerprint", keys.public_fingerprint.hex()),
            (
                "secret protection",
                "password (scrypt + AES-256-GCM)"
                if protected == "password"
                else "none: the 0600 file mode only",
            ),
            *keys.details.items(),
        ],
    )
    for note in keys.notes:
        console.print(Text(f"note: {note}", "yellow"))
