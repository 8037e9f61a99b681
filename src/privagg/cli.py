"""The ``privagg`` command line: DP accounting, key generation, file inspection, benchmarks.

Commands (``privagg COMMAND --help`` for each):

* ``epsilon``: the epsilon of a Poisson-subsampled Gaussian mechanism (DP-SGD).
* ``sigma``: the smallest noise multiplier that meets a target epsilon.
* ``keygen``: key files for one deployment role set (CKKS, Paillier) or one SecAgg+
  client identity, secrets with mode 0600, never overwriting without ``--force``.
* ``inspect``: what an envelope or key file is (scheme, kind, fingerprints, sizes),
  without decrypting anything or printing a secret.
* ``bench``: a quick timing of one or every backend.

Every command takes ``--json`` (one JSON object on stdout, for scripts). A
:class:`~privagg.errors.PrivaggError` is reported as one line, ``privagg: Type:
message``, with exit status 2 when the input was wrong (a bad parameter, a malformed
file, an output that already exists) and 1 when the operation itself failed.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import re
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from privagg.envelope import MAGIC, PayloadReader, Scheme, open_envelope
from privagg.errors import (
    ConfigurationError,
    DeserializationError,
    EncodingOverflowError,
    ParameterMismatchError,
    PrivaggError,
    UnsupportedError,
    UnsupportedReason,
)
from privagg.keys import (
    NoProtection,
    PasswordProtection,
    Protection,
    SecretBytes,
    SecretKey,
    fingerprint,
    write_secret_file,
)

__all__ = [
    "BenchmarkFailedError",
    "OutputExistsError",
    "cli",
    "exit_code_for",
    "main",
]

#: Largest file ``inspect`` reads (a CKKS secret context is a few MB).
MAX_INSPECT_BYTES = 64 << 20
_SECRET_KIND = 1  # Scheme.CORE kind of an exported secret (privagg.keys)
_CKKS_PUBLIC_KIND = 0x20  # Scheme.CKKS kind of a public context (backends/ckks.py)
_SECAGG_MATERIAL_KIND = 12  # Scheme.SECAGG kind of dealt material (backends/secagg.py)
_PAILLIER_PK_TAG = "paillier-pk/v2"
_IDENTITY_FORMAT = "privagg/secagg-identity-public/v1"
_IDENTITY_SCHEME = "secagg-identity"
_IDENTITY_FP_DOMAIN = b"secagg/identity-public-key"
_PARTY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_BENCH_SCRIPTS = {
    "plain": "plain",
    "ckks": "ckks",
    "paillier": "paillier",
    "secagg": "secagg",
    "additive": "secagg",  # benchmarks/secagg.py measures the additive backend too
}


# -- errors ------------------------------------------------------------------------------
class OutputExistsError(ConfigurationError):
    """``keygen`` would overwrite an existing file (pass ``--force`` to allow it)."""


class BenchmarkFailedError(PrivaggError):
    """A benchmark script failed or printed no closing JSON line."""


_BAD_INPUT: tuple[type[PrivaggError], ...] = (
    ConfigurationError,
    DeserializationError,
    ParameterMismatchError,
    EncodingOverflowError,
)


def exit_code_for(exc: PrivaggError) -> int:
    """The exit status for a privagg error: 2 for bad input, 1 otherwise.

    >>> exit_code_for(ConfigurationError("delta must be in (0, 1)"))
    2
    >>> exit_code_for(BenchmarkFailedError("no JSON line"))
    1
    """
    return 2 if isinstance(exc, _BAD_INPUT) else 1


def _safe(text: object) -> str:
    """``text`` with control characters escaped, so a file cannot drive the terminal.

    >>> _safe("party\\x1b[31m")
    'party\\\\x1b[31m'
    """
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
        for ch in str(text)
    )


class _ReportedError(click.ClickException):
    """A privagg error (or an OS error), shown as one line with its type; exit 1."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    def show(self, file: Any = None) -> None:
        click.echo(f"privagg: {self.kind}: {_safe(self.message)}", err=True)


class _BadInputReportError(_ReportedError):
    """Exit 2: the input was wrong."""

    exit_code = 2


def _report(exc: PrivaggError) -> _ReportedError:
    cls = _BadInputReportError if exit_code_for(exc) == 2 else _ReportedError
    return cls(type(exc).__name__, str(exc))


class _Group(click.Group):
    """The command group: turns privagg and OS errors into one-line reports."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PrivaggError as exc:
            raise _report(exc) from None
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            raise _ReportedError(
                type(exc).__name__, f"{exc.strerror or exc}{where}"
            ) from None


# -- output ------------------------------------------------------------------------------
def _console() -> Console:
    # Created per call so that it writes to the current sys.stdout (CliRunner swaps it).
    return Console(highlight=False, soft_wrap=True)


def _jsonable(value: Any) -> Any:
    """Plain JSON values: non-finite floats become strings, tuples become lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _emit_json(record: Mapping[str, Any]) -> None:
    click.echo(json.dumps(_jsonable(record), sort_keys=True, allow_nan=False))


def _print_fields(console: Console, fields: Iterable[tuple[str, Any]]) -> None:
    for key, value in fields:
        console.print(
            Text.assemble((f"  {key:<22}", "bold"), _format_value(value)),
        )


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_safe(v) for v in value)
    return _safe(value)


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("privagg", "dp-accounting", "numpy", "scipy"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


# -- the group ---------------------------------------------------------------------------
@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="privagg", prog_name="privagg")
def cli() -> None:
    """privagg: secure aggregation and differential privacy from the command line.

    Exit status: 0 success, 2 bad input (an invalid parameter, a malformed file, an
    output that already exists), 1 the operation failed.
    """


_json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object (for scripts)."
)
_accountant_option = click.option(
    "--accountant",
    type=click.Choice(["pld", "rdp"]),
    default="pld",
    show_default=True,
    help="PLD (tightest) or RDP (faster, slightly looser).",
)
_q_option = click.option(
    "--q",
    "--sample-rate",
    "q",
    type=float,
    required=True,
    help="Poisson sampling probability per step, in (0, 1].",
)
_steps_option = click.option(
    "--steps", "-T", type=int, required=True, help="Number of steps (releases), >= 1."
)
_delta_option = click.option(
    "--delta", type=float, required=True, help="Target delta, in (0, 1)."
)


# -- epsilon / sigma -----------------------------------------------------------------------
@cli.command(short_help="Epsilon of a Poisson-subsampled Gaussian mechanism (DP-SGD).")
@click.option(
    "--sigma",
    "--noise-multiplier",
    "sigma",
    type=float,
    required=True,
    help="Noise multiplier: noise std / L2 clip norm, > 0.",
)
@_q_option
@_steps_option
@_delta_option
@_accountant_option
@_json_option
def epsilon(
    sigma: float, q: float, steps: int, delta: float, accountant: str, as_json: bool
) -> None:
    """Epsilon of STEPS Poisson-subsampled Gaussian releases (DP-SGD, DP-FedAvg).

    Calls privagg.dp.epsilon(noise_multiplier=SIGMA, sample_rate=Q, steps=STEPS,
    delta=DELTA, accountant=ACCOUNTANT).
    """
    from privagg import dp

    eps = dp.epsilon(
        noise_multiplier=sigma,
        sample_rate=q,
        steps=steps,
        delta=delta,
        accountant=accountant,
    )
    record = {
        "command": "epsilon",
        "mechanism": "poisson-subsampled-gaussian",
        "noise_multiplier": sigma,
        "sample_rate": q,
        "steps": steps,
        "delta": delta,
        "accountant": accountant,
        "epsilon": eps,
        "versions": _versions(),
    }
    if as_json:
        _emit_json(record)
        return
    console = _console()
    console.print(Text.assemble(("epsilon = ", "bold"), (f"{eps:.6g}", "bold green")))
    _print_fields(
        console,
        [
            ("delta", delta),
            ("noise multiplier", sigma),
            ("sample rate q", q),
            ("steps", steps),
            ("accountant", accountant.upper()),
        ],
    )


@cli.command(short_help="Noise multiplier that meets a target epsilon.")
@click.option(
    "--epsilon",
    "target_epsilon",
    type=float,
    required=True,
    help="Target epsilon, > 0.",
)
@_q_option
@_steps_option
@_delta_option
@_accountant_option
@_json_option
def sigma(
    target_epsilon: float,
    q: float,
    steps: int,
    delta: float,
    accountant: str,
    as_json: bool,
) -> None:
    """The smallest noise multiplier whose epsilon is at most EPSILON.

    Calls privagg.dp.noise_multiplier(target_epsilon=EPSILON, delta=DELTA,
    sample_rate=Q, steps=STEPS, accountant=ACCOUNTANT); the result is rounded up
    (relative precision 1e-4), so it always meets the target.
    """
    from privagg import dp

    z = dp.noise_multiplier(
        target_epsilon=target_epsilon,
        delta=delta,
        sample_rate=q,
        steps=steps,
        accountant=accountant,
    )
    record = {
        "command": "sigma",
        "mechanism": "poisson-subsampled-gaussian",
        "target_epsilon": target_epsilon,
        "sample_rate": q,
        "steps": steps,
        "delta": delta,
        "accountant": accountant,
        "noise_multiplier": z,
        "versions": _versions(),
    }
    if as_json:
        _emit_json(record)
        return
    console = _console()
    console.print(
        Text.assemble(("noise multiplier = ", "bold"), (f"{z:.6g}", "bold green"))
    )
    _print_fields(
        console,
        [
            ("target epsilon", target_epsilon),
            ("delta", delta),
            ("sample rate q", q),
            ("steps", steps),
            ("accountant", accountant.upper()),
        ],
    )


# -- keygen ----------------------------------------------------------------------------------
@dataclass(frozen=True)
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
    from privagg.backends._secagg_crypto import ed25519_public, new_ed25519

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
            "run keygen once per client. privagg's SecAggBackend.deal makes the "
            "identity keys itself; it has no API yet to build the dealt material from "
            "a directory of collected .pub files.",
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
            ("Wrote ", "bold"), (keys.backend, "bold cyan"), f" keys to {out_dir}"
        )
    )
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    table.add_column("file")
    table.add_column("kind")
    table.add_column("copy to")
    for f in keys.files:
        kind = Text("SECRET 0600", "bold red") if f.secret else Text("public 0644")
        table.add_row(f.name, kind, f.recipient)
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
    from privagg.backends.secagg import _read_material

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


# -- bench ---------------------------------------------------------------------------------
def _benchmarks_dir() -> Path | None:
    """``benchmarks/`` of a source checkout (not installed with the package)."""
    root = Path(__file__).resolve().parents[2]
    d = root / "benchmarks"
    return d if (d / "_common.py").is_file() else None


def _run_script(name: str, bench_dir: Path) -> dict[str, Any]:
    script = bench_dir / f"{_BENCH_SCRIPTS[name]}.py"
    if not script.is_file():
        raise BenchmarkFailedError(f"no benchmark script {script}")
    try:
        proc = subprocess.run(
            [sys.executable, str(script), "--quick"],
            cwd=bench_dir.parent,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BenchmarkFailedError(f"{script.name} --quick ran over 900 s") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchmarkFailedError(
            f"{script.name} --quick exited with {proc.returncode}: {tail}"
        )
    try:
        record = json.loads(lines[-1])
    except ValueError:
        raise BenchmarkFailedError(
            f"{script.name} --quick printed no closing JSON line"
        ) from None
    if not isinstance(record, dict):
        raise BenchmarkFailedError(
            f"{script.name} --quick: closing line is not an object"
        )
    return {
        "backend": name,
        "source": f"benchmarks/{script.name} --quick",
        "figures": record,
    }


def _run_builtin(name: str, clients: int, values: int) -> dict[str, Any]:
    import numpy as np

    import privagg

    gen = np.random.default_rng(0)  # public benchmark data, not a secret
    updates = {
        f"client-{i}": {"w": gen.uniform(-1.0, 1.0, size=values)}
        for i in range(clients)
    }
    layout = privagg.Layout.from_arrays(updates["client-0"])
    backend = privagg.get_backend(name)
    t0 = time.perf_counter()
    session = backend.setup(layout, max_clients=clients)
    setup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = privagg.run_round(session, updates)
    round_s = time.perf_counter() - t0
    ref = np.sum([u["w"] for u in updates.values()], axis=0)
    uploaded = sum(result.bytes_sent.values()) / max(len(result.bytes_sent), 1)
    return {
        "backend": name,
        "source": "builtin run_round",
        "figures": {
            "clients": clients,
            "values": values,
            "setup_s": setup_s,
            "round_s": round_s,
            **{f"{k}_s": v for k, v in result.timings.items()},
            "bytes_per_value": uploaded / values,
            "max_abs_error": float(np.max(np.abs(result.aggregate["w"] - ref))),
        },
    }


def _flatten(record: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested mappings as dotted keys.

    >>> _flatten({"a": 1, "b": {"c": 2.5}})
    [('a', 1), ('b.c', 2.5)]
    """
    out: list[tuple[str, Any]] = []
    for k, v in record.items():
        if isinstance(v, Mapping):
            out.extend(_flatten(v, f"{prefix}{k}."))
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _print_builtin_table(console: Console, rows: Sequence[Mapping[str, Any]]) -> None:
    table = Table(
        title="privagg.run_round, every role in this process",
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),
    )
    columns: list[tuple[str, str, Callable[[float], str]]] = [
        ("setup ms", "setup_s", _ms),
        ("protect ms", "protect_s", _ms),
        ("aggr. ms", "aggregate_s", _ms),
        ("recover ms", "recover_s", _ms),
        ("round ms", "round_s", _ms),
        ("B/value", "bytes_per_value", lambda v: f"{v:.2f}"),
        ("max error", "max_abs_error", lambda v: f"{v:.1e}"),
    ]
    table.add_column("backend")
    for title, _, _ in columns:
        table.add_column(title, justify="right", min_width=len(title))
    for row in rows:
        figures = row["figures"]
        cells = [_safe(row["backend"])]
        for _, key, fmt in columns:
            value = figures.get(key)
            cells.append("-" if value is None else fmt(float(value)))
        table.add_row(*cells)
    console.print(table)
    first = rows[0]["figures"]
    console.print(
        f"{first['clients']} clients x {first['values']} values, default backend "
        "options; one run on this machine: compare backends within a run."
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def _print_script_table(console: Console, row: Mapping[str, Any]) -> None:
    table = Table(title=f"{row['backend']}: {row['source']}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in _flatten(row["figures"]):
        text = f"{value:.4g}" if isinstance(value, float) else _safe(value)
        table.add_row(_safe(key), text)
    console.print(table)


@cli.command(short_help="Time backends quickly and print a table.")
@click.option(
    "--backend",
    "backends",
    multiple=True,
    help="Backend to time (repeatable; default: every installed backend).",
)
@click.option(
    "--source",
    type=click.Choice(["auto", "script", "builtin"]),
    default="auto",
    show_default=True,
    help="script: benchmarks/NAME.py --quick of a source checkout; builtin: a timing "
    "of privagg.run_round; auto: the script when the checkout has it.",
)
@click.option(
    "--clients",
    type=click.IntRange(2, 1000),
    default=3,
    show_default=True,
    help="builtin: clients per round.",
)
@click.option(
    "--values",
    type=click.IntRange(1, 10_000_000),
    default=10_000,
    show_default=True,
    help="builtin: values per update.",
)
@_json_option
def bench(
    backends: tuple[str, ...], source: str, clients: int, values: int, as_json: bool
) -> None:
    """Time backends quickly and print a table of the figures.

    With a source checkout (benchmarks/ next to src/), runs the backend's
    benchmarks/NAME.py --quick, whose figures the docs quote (additive is measured
    by benchmarks/secagg.py). Otherwise, or with --source builtin, times one
    privagg.run_round with default backend options on uniform values in [-1, 1].
    """
    import privagg

    names = list(backends) or privagg.available_backends()
    for name in names:
        privagg.get_backend(name)  # unknown or unavailable: a typed error, now
    bench_dir = _benchmarks_dir()
    if source == "script" and bench_dir is None:
        raise BenchmarkFailedError(
            "no benchmarks/ directory (it ships with the source checkout only); "
            "use --source builtin"
        )
    use_script = source == "script" or (source == "auto" and bench_dir is not None)
    rows = [
        _run_script(name, bench_dir)
        if use_script and bench_dir is not None
        else _run_builtin(name, clients, values)
        for name in names
    ]
    if as_json:
        _emit_json({"command": "bench", "results": rows, "versions": _versions()})
        return
    console = _console()
    if use_script:
        for row in rows:
            _print_script_table(console, row)
    else:
        _print_builtin_table(console, rows)


# -- entry point ---------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI (the ``privagg`` console script) and return its exit status."""
    try:
        cli.main(
            args=None if argv is None else list(argv),
            prog_name="privagg",
            standalone_mode=True,
        )
    except SystemExit as exc:
        return _status(exc.code)
    return 0


def _status(code: object) -> int:
    if code is None:
        return 0
    return code if isinstance(code, int) else 1
