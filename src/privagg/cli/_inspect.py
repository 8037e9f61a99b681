"""``privagg inspect``: what an envelope or key file is, without revealing a secret."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import click
from rich.text import Text

from privagg.cli._common import (
    _CKKS_PUBLIC_KIND,
    _IDENTITY_FORMAT,
    _PAILLIER_PK_TAG,
    _SECAGG_MATERIAL_KIND,
    _SECRET_KIND,
    MAX_INSPECT_BYTES,
    _console,
    _emit_json,
    _json_option,
    _print_fields,
    _safe,
    cli,
)
from privagg.cli._keygen import (
    _identity_fingerprint,
)
from privagg.envelope import MAGIC, PayloadReader, Scheme, open_envelope
from privagg.errors import (
    ConfigurationError,
    DeserializationError,
    PrivaggError,
    UnsupportedError,
    UnsupportedReason,
)

# -- inspect -------------------------------------------------------------------------------
_SCHEME_NAMES = {
    Scheme.CORE: "core",
    Scheme.PLAIN: "plain",
    Scheme.CKKS: "ckks",
    Scheme.PAILLIER: "paillier",
    Scheme.SECAGG: "secagg",
    Scheme.ADDITIVE: "additive",
}


def _kind_name(scheme: Scheme, kind: int) -> str:
    if scheme == Scheme.CORE and kind == _SECRET_KIND:
        return "exported secret key"
    if scheme == Scheme.CKKS and kind == _CKKS_PUBLIC_KIND:
        return "CKKS public context (parameters + public key)"
    if scheme == Scheme.SECAGG and kind == _SECAGG_MATERIAL_KIND:
        return "SecAgg+ dealt material"
    names: dict[int, str] = {}
    if scheme in (Scheme.PLAIN, Scheme.CKKS, Scheme.PAILLIER):
        from privagg.messages import OneShotKind

        names = {k.value: f"{k.name.lower()} message" for k in OneShotKind}
    elif scheme == Scheme.SECAGG:
        from privagg.backends.secagg import SecAggKind

        names = {k.value: f"{k.name.lower()} message" for k in SecAggKind}
    elif scheme == Scheme.ADDITIVE:
        from privagg.backends.additive import AdditiveKind

        names = {k.value: f"{k.name.lower()} message" for k in AdditiveKind}
    return names.get(kind, "unknown kind")


def _file_mode_fields(path: Path) -> tuple[dict[str, Any], int]:
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):
        raise ConfigurationError(f"{path} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    return {
        "file": str(path),
        "file_bytes": st.st_size,
        "file_mode": f"{mode:04o}",
    }, mode


def _read_limited(path: Path) -> bytes:
    with path.open("rb") as fh:
        data = fh.read(MAX_INSPECT_BYTES + 1)
    if len(data) > MAX_INSPECT_BYTES:
        raise ConfigurationError(
            f"{path} is larger than {MAX_INSPECT_BYTES} bytes: not a privagg file"
        )
    return data


def _describe_secret_envelope(data: bytes) -> dict[str, Any]:
    """Fields of a ``privagg.keys`` export; reads the method and scheme, not the secret."""
    header, payload = open_envelope(data)
    r = PayloadReader(payload)
    method = r.u8()
    scheme = r.text()
    out: dict[str, Any] = {
        "secret_scheme": scheme,
        "public_fingerprint": header.params_id.hex(),
    }
    if method == 0:
        out["protection"] = "none (the file mode protects it)"
        out["secret_bytes"] = len(r.blob_view())
    elif method == 1:
        out["protection"] = "password (scrypt + AES-256-GCM)"
    else:
        raise DeserializationError()
    return out


def _describe_envelope(data: bytes) -> dict[str, Any]:
    try:
        header, payload = open_envelope(data)
    except DeserializationError:
        raise DeserializationError(
            "corrupted or truncated privagg envelope (bad version, length or digest)"
        ) from None
    out: dict[str, Any] = {
        "format": "privagg envelope",
        "version": header.version,
        "scheme": _SCHEME_NAMES[header.scheme],
        "kind": header.kind,
        "kind_name": _kind_name(header.scheme, header.kind),
        "params_id": header.params_id.hex(),
        "round_id": header.round_id,
        "payload_bytes": len(payload),
    }
    if header.scheme == Scheme.CORE and header.kind == _SECRET_KIND:
        out["secret"] = True
        out.update(_describe_secret_envelope(data))
    elif header.scheme == Scheme.CKKS and header.kind == _CKKS_PUBLIC_KIND:
        out["secret"] = False
        out.update(_describe_ckks_public(data))
    elif header.scheme == Scheme.SECAGG and header.kind == _SECAGG_MATERIAL_KIND:
        out.update(_describe_secagg_material(data))
    else:
        out["secret"] = False
        out["decodes"] = _decodes(data)
    return out


def _decodes(data: bytes) -> bool:
    from privagg.envelope import from_bytes

    try:
        from_bytes(data)
    except PrivaggError:
        return False
    return True


def _describe_ckks_public(data: bytes) -> dict[str, Any]:
    try:
        from privagg.backends.ckks import CkksPublicContext
    except ImportError:
        return {"verified": "no (TenSEAL is not installed)"}
    ctx = CkksPublicContext.from_bytes(data)
    p = ctx.params
    return {
        "verified": "yes (parameters and public key load; fingerprint matches)",
        "public_fingerprint": ctx.fingerprint.hex(),
        "poly_modulus_degree": p.poly_modulus_degree,
        "data_bits": list(p.data_bits),
        "scale_bits": p.scale_bits,
        "value_bound": p.value_bound,
        "flood_bits": p.flood_bits,
    }


def _describe_secagg_material(data: bytes) -> dict[str, Any]:
    from privagg.backends.secagg.backend import _read_material

    _nonce, directory, secret = _read_material(data)
    parties = sorted(directory)
    return {
        "secret": bool(secret),
        "role": (
            "client (holds its Ed25519 identity secret key)"
            if secret
            else "aggregator or result holder (public only)"
        ),
        "directory_parties": len(parties),
        "directory": {
            pid: _identity_fingerprint(directory[pid]).hex() for pid in parties
        },
    }


def _describe_ckks_secret(data: bytes) -> dict[str, Any] | None:
    """A ``CkksSecretContext.to_bytes`` payload: public envelope + secret envelope."""
    try:
        r = PayloadReader(data)
        public, wrapped = r.blob(), r.blob()
        r.done()
    except DeserializationError:
        return None
    if not (public.startswith(MAGIC) and wrapped.startswith(MAGIC)):
        return None
    pub = _describe_envelope(public)
    sec = _describe_envelope(wrapped)
    if pub["scheme"] != "ckks" or pub["kind"] != _CKKS_PUBLIC_KIND or not sec["secret"]:
        return None
    out: dict[str, Any] = {
        "format": "CKKS secret context (result holder)",
        **{k: v for k, v in pub.items() if k not in ("format", "kind", "kind_name")},
        "secret": True,
        "protection": sec["protection"],
        "secret_scheme": sec["secret_scheme"],
    }
    if "secret_bytes" in sec:
        out["secret_bytes"] = sec["secret_bytes"]
    if sec["public_fingerprint"] != pub.get("public_fingerprint", pub["params_id"]):
        out["warning"] = "the secret key's fingerprint does not match the context"
    return out


def _describe_paillier_public(data: bytes) -> dict[str, Any] | None:
    try:
        if PayloadReader(data).text() != _PAILLIER_PK_TAG:
            return None
    except DeserializationError:
        return None
    from privagg.backends.paillier import PaillierPublicKey

    key = PaillierPublicKey.from_bytes(data)
    return {
        "format": "Paillier public key",
        "secret": False,
        "key_bits": key.key_bits,
        "public_fingerprint": key.fingerprint.hex(),
    }


def _describe_paillier_holder(data: bytes) -> dict[str, Any] | None:
    """fedtrain's Paillier holder material: u32 length, public key, exported secret."""
    n = int.from_bytes(data[:4], "big")
    public, wrapped = data[4 : 4 + n], data[4 + n :]
    if len(data) < 4 or not wrapped.startswith(MAGIC):
        return None
    pub = _describe_paillier_public(public)
    if pub is None:
        return None
    sec = _describe_envelope(wrapped)
    if not sec.get("secret") or sec.get("secret_scheme") != "paillier":
        return None
    out = {
        **pub,
        "format": "Paillier holder material (fedtrain.flower.material: public key + "
        "exported secret key)",
        "secret": True,
        "protection": sec["protection"],
    }
    if sec["public_fingerprint"] != pub["public_fingerprint"]:
        out["warning"] = "the secret key's fingerprint does not match the public key"
    return out


def _describe_identity_public(data: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or record.get("format") != _IDENTITY_FORMAT:
        return None
    try:
        public = bytes.fromhex(str(record["ed25519_public_key"]))
        claimed = str(record["fingerprint"])
        party = str(record["party_id"])
    except (KeyError, ValueError):
        raise DeserializationError(
            "malformed SecAgg+ identity public key file"
        ) from None
    if len(public) != 32:
        raise DeserializationError("malformed SecAgg+ identity public key file")
    fp = _identity_fingerprint(public).hex()
    return {
        "format": "SecAgg+ identity public key",
        "secret": False,
        "party_id": party,
        "public_fingerprint": fp,
        "fingerprint_matches": fp == claimed,
    }


def _describe_bytes(data: bytes) -> dict[str, Any] | None:
    if data.startswith(MAGIC):
        return _describe_envelope(data)
    for probe in (
        _describe_ckks_secret,
        _describe_paillier_public,
        _describe_paillier_holder,
        _describe_identity_public,
    ):
        found = probe(data)
        if found is not None:
            return found
    return None


def describe_file(path: Path) -> dict[str, Any]:
    """Describe a privagg envelope or key file without decrypting or revealing secrets.

    Raises:
        DeserializationError: the file is not a privagg file, or is corrupted.
        ConfigurationError: the file is too large to be one.
        UnsupportedError: describing it needs a backend that is not installed.
    """
    fields, mode = _file_mode_fields(path)
    data = _read_limited(path)
    try:
        desc = _describe_bytes(data)
    except PrivaggError:
        raise
    except ImportError as exc:
        raise UnsupportedError(
            f"{path}: describing this file needs an optional dependency: {exc}",
            UnsupportedReason.BACKEND_UNAVAILABLE,
        ) from None
    except Exception:  # hostile bytes must give a one-line report, not a traceback
        raise DeserializationError(f"{path}: malformed privagg file") from None
    if desc is None:
        raise DeserializationError(
            f"{path}: not a privagg envelope or key file (unknown format)"
        )
    warnings = [desc.pop("warning")] if "warning" in desc else []
    if desc.get("secret") and mode & 0o077:
        warnings.append(
            f"holds a secret but is accessible by group/others (mode {mode:04o}): "
            "chmod 600 it"
        )
    out = {**fields, **desc}
    if warnings:
        out["warnings"] = warnings
    return out


@cli.command(short_help="Describe an envelope or key file (no secret is shown).")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_json_option
def inspect(file: Path, as_json: bool) -> None:
    """Describe FILE: a privagg envelope (message, public context, dealt material) or a
    key file written by keygen or a backend's export.

    Shows scheme, format version, kind, params id / fingerprints, round id and sizes.
    Nothing is decrypted and no secret is printed.
    """
    desc = describe_file(file)
    if as_json:
        _emit_json({"command": "inspect", **desc})
        return
    console = _console()
    title = desc.get("format", "privagg file")
    if "kind_name" in desc:
        title = f"{title}: {desc['kind_name']}"
    console.print(Text(_safe(title), "bold"))
    skip = {"format", "kind_name", "warnings", "directory"}
    _print_fields(console, [(k, v) for k, v in desc.items() if k not in skip])
    directory = desc.get("directory")
    if isinstance(directory, dict):
        for pid, fp in list(directory.items())[:20]:
            _print_fields(console, [(f"  party {_safe(pid)}", fp)])
        if len(directory) > 20:
            console.print(f"  ... and {len(directory) - 20} more (--json lists all)")
    for warning in desc.get("warnings", []):
        console.print(Text(f"warning: {_safe(warning)}", "bold red"))
