"""TLS certificates and SuperNode authentication keys for a Flower deployment.

Flower secures the SuperLink <-> SuperNode link with TLS (the SuperLink presents a
certificate signed by a CA that every SuperNode and the ``flwr`` CLI trust) and
authenticates SuperNodes with an EC key pair each: the operator registers the public
key (``flwr supernode register KEY.pub``) with a SuperLink started with
``--enable-supernode-auth``, and the SuperNode signs its requests with the private key
(``--auth-supernode-private-key``); an unregistered key is refused. See Flower's
"Enable TLS connections" and "Authenticate SuperNodes" guides.

:func:`make_ca`, :func:`make_server_certificate` and :func:`make_node_key` write these
files with ``cryptography`` (private keys 0600, created exclusively). In production
each institution makes its own node key on its own machine and sends only the ``.pub``
file to the operator; :class:`fedtrain.flower.launch.LocalDeployment` makes them all
in one folder only because every process runs on this machine.

These keys are Flower's transport and node-admission credentials. They are separate
from privagg's key material (CKKS/Paillier holder keys, SecAgg+ identities), which
protects the updates end to end even from the SuperLink.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedtrain.flower.errors import FlowerConfigError

__all__ = [
    "TlsFiles",
    "make_ca",
    "make_node_key",
    "make_server_certificate",
    "make_tls",
]

_VALIDITY = datetime.timedelta(days=30)


@dataclass(frozen=True)
class TlsFiles:
    """The files a TLS-enabled SuperLink and its clients need.

    Attributes:
        ca_cert: the CA certificate (PEM): given to every SuperNode
            (``--root-certificates``) and the ``flwr`` CLI (``root-certificates``), and
            to the SuperLink (``--ssl-ca-certfile``).
        server_cert: the SuperLink's certificate (PEM, ``--ssl-certfile``).
        server_key: the SuperLink's private key (PEM, 0600, ``--ssl-keyfile``).
    """

    ca_cert: Path
    server_cert: Path
    server_key: Path


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` exclusively with mode 0600 and write ``data``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_ca(folder: str | os.PathLike[str]) -> tuple[Path, Path]:
    """A self-signed CA (EC P-256): ``(ca.crt, ca.key)`` in ``folder``."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedtrain local CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    crt, kp = out / "ca.crt", out / "ca.key"
    _write_private(kp, _pem_key(key))
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return crt, kp


def make_server_certificate(
    folder: str | os.PathLike[str],
    ca_cert: Path,
    ca_key: Path,
    hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
) -> tuple[Path, Path]:
    """The SuperLink's certificate for ``hosts``, signed by the CA.

    Returns:
        ``(server.pem, server.key)`` in ``folder``.

    Raises:
        FlowerConfigError: the CA key is not an EC key.
    """
    out = Path(folder)
    ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    ca_priv = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    if not isinstance(ca_priv, ec.EllipticCurvePrivateKey):
        raise FlowerConfigError(f"{ca_key}: the CA key is not an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_priv, hashes.SHA256())
    )
    crt, kp = out / "server.pem", out / "server.key"
    _write_private(kp, _pem_key(key))
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return crt, kp


def make_tls(folder: str | os.PathLike[str]) -> TlsFiles:
    """A CA and a SuperLink certificate for 127.0.0.1/localhost in ``folder``.

    The CA's private key is deleted once the server certificate is signed: nothing
    else can be issued under it.
    """
    ca_crt, ca_key = make_ca(folder)
    crt, key = make_server_certificate(folder, ca_crt, ca_key)
    ca_key.unlink()
    return TlsFiles(ca_cert=ca_crt, server_cert=crt, server_key=key)


def make_node_key(folder: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """A SuperNode authentication key pair (EC P-384, OpenSSH format, as Flower reads).

    Returns:
        ``(private key file (0600), public key file NAME.pub)``.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    priv = out / name
    pub = out / f"{name}.pub"
    _write_private(
        priv,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    return priv, pub
