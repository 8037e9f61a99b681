"""A Flower deployment secured as Flower documents it: TLS and SuperNode authentication.

``LocalDeployment`` (the deployment every e2e test uses) makes a CA and a SuperLink
certificate with ``cryptography``, starts the SuperLink with TLS and
``--enable-supernode-auth``, registers each SuperNode's EC key with
``flwr supernode register`` and starts the SuperNodes with ``--root-certificates`` and
their private key. These tests check each part from the outside.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedtrain.flower.credentials import make_node_key, make_tls
from fedtrain.flower.launch import LocalDeployment

APP = Path(__file__).resolve().parents[2] / "examples" / "flower_deployment"


def _private(p: Path) -> bool:
    return stat.S_IMODE(os.stat(p).st_mode) == 0o600


def test_credentials_files(tmp_path: Path) -> None:
    tls = make_tls(tmp_path / "certs")
    assert _private(tls.server_key)
    assert not (tmp_path / "certs" / "ca.key").exists()  # nothing more can be issued
    ca = x509.load_pem_x509_certificate(tls.ca_cert.read_bytes())
    srv = x509.load_pem_x509_certificate(tls.server_cert.read_bytes())
    srv.verify_directly_issued_by(ca)
    sans = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    priv, pub = make_node_key(tmp_path / "keys", "node-0")
    assert _private(priv) and pub.read_text().startswith("ecdsa-sha2-nistp384 ")
    key = serialization.load_ssh_private_key(priv.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    with pytest.raises(FileExistsError):  # never overwrites a key
        make_node_key(tmp_path / "keys", "node-0")


@pytest.mark.e2e
@pytest.mark.slow
def test_tls_and_supernode_authentication(tmp_path: Path) -> None:
    nodes = [{"party-id": f"client-{i}", "privagg-backends": "plain"} for i in range(2)]
    with LocalDeployment(tmp_path, nodes) as d:
        assert d.tls is not None
        assert all(_private(k) for k, _ in d.node_keys)
        # TLS: the SuperLink's certificate verifies against the deployment's CA ...
        ctx = ssl.create_default_context(cafile=str(d.tls.ca_cert))
        with socket.create_connection(("127.0.0.1", d.port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls_sock:
                assert tls_sock.version() in ("TLSv1.2", "TLSv1.3")
        # ... and not against the system's trust store
        with socket.create_connection(("127.0.0.1", d.port), timeout=10) as raw:
            with pytest.raises(ssl.SSLCertVerificationError):
                ssl.create_default_context().wrap_socket(
                    raw, server_hostname="127.0.0.1"
                )
        # a SuperNode whose key was never registered is refused and exits
        intruder = d.start_extra_node({"party-id": "intruder"}, register=False)
        assert intruder.wait(timeout=120) != 0
        log = (tmp_path / "supernode-2.log").read_text(errors="replace")
        assert "Failed to activate SuperNode" in log
        # the registered SuperNodes run a whole round over TLS
        result = tmp_path / "result.json"
        d.run_app(
            APP,
            {
                "backend": "plain",
                "rounds": 1,
                "min-nodes": 2,
                "result-path": str(result),
            },
            timeout=240,
        )
        parties = json.loads(result.read_text())["parties"]
        assert sorted(parties) == ["client-0", "client-1"]
        listed = subprocess.run(
            [str(d.bin_dir / "flwr"), "supernode", "list", "local", "--format", "json"],
            capture_output=True,
            env=d.env,
            cwd=d.workdir,
            timeout=60,
            check=True,
        )
        assert len(json.loads(listed.stdout)["nodes"]) == 2  # the intruder is not one
