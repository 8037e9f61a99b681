"""The ``privagg`` command line: every command, its JSON output, its errors."""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import privagg
import privagg.dp as dp
from privagg.cli import cli, exit_code_for, main
from privagg.envelope import Scheme
from privagg.errors import ConfigurationError, ProtocolError
from privagg.keys import NoProtection, PasswordProtection, read_secret_file
from privagg.messages import RoundRequest

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def run_json(*args: str) -> dict[str, Any]:
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert isinstance(record, dict)
    return record


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- help, entry points, errors ------------------------------------------------------------
def test_python_dash_m_help_in_a_subprocess() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "privagg", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for command in ("epsilon", "sigma", "keygen", "inspect", "bench"):
        assert command in proc.stdout


def test_console_script_when_installed() -> None:
    script = Path(sys.executable).parent / "privagg"
    if not script.is_file():
        pytest.skip("the privagg console script is not installed in this environment")
    proc = subprocess.run(
        [str(script), "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0 and privagg.__version__ in proc.stdout


@pytest.mark.parametrize("command", ["epsilon", "sigma", "keygen", "inspect", "bench"])
def test_every_command_has_help(command: str) -> None:
    result = run(command, "--help")
    assert result.exit_code == 0
    assert "Usage: " in result.output and "--json" in result.output


def test_main_returns_the_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert (
        main(["epsilon", "--sigma", "0", "--q", "0.1", "-T", "1", "--delta", "0.1"])
        == 2
    )
    err = capsys.readouterr().err
    assert (
        err.strip()
        == "privagg: ConfigurationError: noise_multiplier must be > 0, got 0.0"
    )


def test_exit_codes_split_bad_input_from_failures() -> None:
    assert exit_code_for(ConfigurationError("x")) == 2
    assert exit_code_for(ProtocolError("x")) == 1


def test_usage_errors_exit_2_without_traceback() -> None:
    result = run("epsilon", "--sigma", "1.0")
    assert result.exit_code == 2
    assert "Traceback" not in result.output


# -- epsilon / sigma -------------------------------------------------------------------------
@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_epsilon_matches_the_library(accountant: str) -> None:
    args = dict(noise_multiplier=1.1, sample_rate=0.05, steps=20, delta=1e-5)
    record = run_json(
        "epsilon",
        "--sigma", "1.1", "--q", "0.05", "--steps", "20", "--delta", "1e-5",
        "--accountant", accountant,
    )  # fmt: skip
    expected = dp.epsilon(**args, accountant=accountant)  # type: ignore[arg-type]
    assert record["epsilon"] == expected
    assert record["accountant"] == accountant
    assert record["noise_multiplier"] == 1.1 and record["sample_rate"] == 0.05
    assert record["steps"] == 20 and record["delta"] == 1e-5
    assert record["versions"]["privagg"] == privagg.__version__
    assert "dp-accounting" in record["versions"]


def test_epsilon_defaults_to_pld_and_prints_it() -> None:
    result = run(
        "epsilon", "--sigma", "2", "--q", "0.1", "--steps", "5", "--delta", "1e-6"
    )
    assert result.exit_code == 0
    eps = dp.epsilon(noise_multiplier=2, sample_rate=0.1, steps=5, delta=1e-6)
    assert f"{eps:.6g}" in result.output and "PLD" in result.output


def test_sigma_round_trips_through_epsilon() -> None:
    record = run_json(
        "sigma", "--epsilon", "2.0", "--q", "0.02", "--steps", "50",
        "--delta", "1e-5", "--accountant", "rdp",
    )  # fmt: skip
    z = record["noise_multiplier"]
    assert z == dp.noise_multiplier(
        target_epsilon=2.0, delta=1e-5, sample_rate=0.02, steps=50, accountant="rdp"
    )
    eps = dp.epsilon(
        noise_multiplier=z, sample_rate=0.02, steps=50, delta=1e-5, accountant="rdp"
    )
    assert eps <= 2.0
    assert eps >= 2.0 * (1 - 1e-3)
    assert record["target_epsilon"] == 2.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--q", "1.5"], "sample_rate must be in (0, 1]"),
        (["--delta", "0"], "delta must be in (0, 1)"),
        (["--steps", "0"], "steps must be an integer >= 1"),
        (["--sigma", "nan"], "noise_multiplier must be a finite number"),
    ],
)
def test_epsilon_bad_input_is_one_line_exit_2(args: list[str], message: str) -> None:
    base = {"--sigma": "1", "--q": "0.1", "--steps": "3", "--delta": "1e-5"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    result = run(
        "epsilon", *[x for kv in base.items() for x in kv], "--accountant", "rdp"
    )
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("privagg: ConfigurationError: ")
    assert message in lines[0]


def test_sigma_unattainable_target_is_reported() -> None:
    result = run(
        "sigma", "--epsilon", "1e-9", "--q", "1", "--steps", "1000",
        "--delta", "1e-9", "--accountant", "rdp",
    )  # fmt: skip
    assert result.exit_code == 2
    assert result.stderr.startswith("privagg: ConfigurationError: ")
    assert "unattainable" in result.stderr


# -- keygen ----------------------------------------------------------------------------------
def keygen(tmp_path: Path, *args: str) -> dict[str, Any]:
    return run_json("keygen", *args, str(tmp_path))


def test_keygen_ckks_writes_loadable_files_with_0600_secret(tmp_path: Path) -> None:
    pytest.importorskip("tenseal")
    from privagg.backends.ckks import CkksPublicContext, CkksSecretContext

    record = keygen(tmp_path, "--backend", "ckks", "--preset", "test-fast")
    holder, public = tmp_path / "ckks-holder.key", tmp_path / "ckks-public.key"
    assert mode(holder) == 0o600
    assert mode(public) == 0o644
    assert [f["secret"] for f in record["files"]] == [True, False]
    assert "result holder" in record["files"][0]["give_to"]
    assert "aggregator" in record["files"][1]["give_to"]
    secret = CkksSecretContext.load(holder, protection=NoProtection())
    pub = CkksPublicContext.from_bytes(public.read_bytes())
    assert pub.fingerprint == secret.public.fingerprint
    assert record["public_fingerprint"] == pub.fingerprint.hex()
    assert record["details"]["preset"] == "test-fast"


def test_keygen_paillier_files_and_fingerprint(tmp_path: Path) -> None:
    pytest.importorskip("phe")
    from privagg.backends.paillier import PaillierPublicKey, load_secret_key

    record = keygen(tmp_path, "--backend", "paillier", "--key-bits", "2048")
    holder = tmp_path / "paillier-holder.key"
    assert mode(holder) == 0o600
    fp = bytes.fromhex(record["public_fingerprint"])
    public = PaillierPublicKey.from_bytes(
        (tmp_path / "paillier-public.key").read_bytes(), expected_fingerprint=fp
    )
    assert public.key_bits == 2048
    secret = load_secret_key(read_secret_file(holder))
    assert secret.public_fingerprint == fp


def test_keygen_secagg_identity_and_public_file(tmp_path: Path) -> None:
    result = run("keygen", "--backend", "secagg", "--party-id", "bank", str(tmp_path))
    assert result.exit_code == 0, result.output
    key, pub = (
        tmp_path / "secagg-identity-bank.key",
        tmp_path / "secagg-identity-bank.pub",
    )
    assert mode(key) == 0o600 and mode(pub) == 0o644
    scheme, fp, secret = NoProtection().unwrap(read_secret_file(key))
    assert scheme == "secagg-identity" and len(secret) == 32
    from privagg.backends._primitives import ed25519_public

    record = json.loads(pub.read_text())
    assert record["party_id"] == "bank"
    assert bytes.fromhex(record["ed25519_public_key"]) == ed25519_public(secret)
    assert record["fingerprint"] == fp.hex()
    assert secret.hex() not in result.output  # the secret is never printed
    assert "once per client" in result.output  # says what it made and what it did not


def test_keygen_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    args = ["keygen", "--backend", "secagg", "--party-id", "c1", str(tmp_path)]
    assert run(*args).exit_code == 0
    before = (tmp_path / "secagg-identity-c1.key").read_bytes()
    result = run(*args)
    assert result.exit_code == 2
    assert result.stderr.startswith("privagg: OutputExistsError: refusing to overwrite")
    assert (tmp_path / "secagg-identity-c1.key").read_bytes() == before
    assert run(*args, "--force").exit_code == 0
    assert (tmp_path / "secagg-identity-c1.key").read_bytes() != before
    assert mode(tmp_path / "secagg-identity-c1.key") == 0o600


def test_keygen_refuses_when_only_the_public_file_exists(tmp_path: Path) -> None:
    (tmp_path / "secagg-identity-c1.pub").write_text("mine")
    result = run("keygen", "--backend", "secagg", "--party-id", "c1", str(tmp_path))
    assert result.exit_code == 2
    assert not (tmp_path / "secagg-identity-c1.key").exists()
    assert (tmp_path / "secagg-identity-c1.pub").read_text() == "mine"


def test_keygen_password_protection(tmp_path: Path) -> None:
    result = run(
        "keygen", "--backend", "secagg", "--party-id", "c2",
        "--password-env", "PRIVAGG_TEST_PW", str(tmp_path),
        env={"PRIVAGG_TEST_PW": "correct horse battery"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = read_secret_file(tmp_path / "secagg-identity-c2.key")
    with pytest.raises(privagg.DeserializationError):
        NoProtection().unwrap(data)
    scheme, _, secret = PasswordProtection("correct horse battery").unwrap(data)
    assert scheme == "secagg-identity" and len(secret) == 32
    desc = run_json("inspect", str(tmp_path / "secagg-identity-c2.key"))
    assert desc["protection"].startswith("password")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "secagg"], "give --party-id"),
        (["--backend", "secagg", "--party-id", "../x"], "--party-id must be"),
        (["--backend", "ckks", "--party-id", "a"], "--party-id does not apply"),
        (["--backend", "secagg", "--party-id", "a", "--preset", "x"], "--preset"),
        (
            ["--backend", "secagg", "--party-id", "a", "--password-env", "NOPE_X"],
            "not set",
        ),
    ],
)
def test_keygen_bad_options(tmp_path: Path, args: list[str], message: str) -> None:
    result = run("keygen", *args, str(tmp_path / "out"))
    assert result.exit_code == 2
    assert result.stderr.startswith("privagg: ConfigurationError: ")
    assert message in result.stderr
    assert not (tmp_path / "out").exists()


def test_keygen_unknown_ckks_preset(tmp_path: Path) -> None:
    pytest.importorskip("tenseal")
    result = run("keygen", "--backend", "ckks", "--preset", "nope", str(tmp_path))
    assert result.exit_code == 2
    assert "preset must be one of" in result.stderr


# -- inspect ---------------------------------------------------------------------------------
def test_inspect_a_message_envelope(tmp_path: Path) -> None:
    msg = RoundRequest(Scheme.PLAIN, bytes(range(32)), 7, "client-0").to_bytes()
    path = tmp_path / "request.bin"
    path.write_bytes(msg)
    desc = run_json("inspect", str(path))
    assert desc["format"] == "privagg envelope"
    assert desc["scheme"] == "plain" and desc["version"] == privagg.FORMAT_VERSION
    assert desc["kind_name"] == "request message" and desc["decodes"] is True
    assert desc["params_id"] == bytes(range(32)).hex()
    assert desc["round_id"] == 7 and desc["file_bytes"] == len(msg)
    human = run("inspect", str(path))
    assert human.exit_code == 0 and "request message" in human.output


def test_inspect_secagg_dealt_material(tmp_path: Path) -> None:
    from privagg.backends.secagg import SecAggBackend

    layout = privagg.Layout.from_arrays({"w": [0.0, 0.0]})
    dealt = SecAggBackend().deal(layout, ["a", "b", "c"], max_clients=3)
    (tmp_path / "client.key").write_bytes(dealt.clients["a"])
    (tmp_path / "agg.key").write_bytes(dealt.aggregator)
    os.chmod(tmp_path / "client.key", 0o644)
    client = run_json("inspect", str(tmp_path / "client.key"))
    assert client["secret"] is True and client["directory_parties"] == 3
    assert sorted(client["directory"]) == ["a", "b", "c"]
    assert "chmod 600" in client["warnings"][0]  # a group-readable secret is flagged
    agg = run_json("inspect", str(tmp_path / "agg.key"))
    assert agg["secret"] is False and "warnings" not in agg


def test_inspect_every_keygen_file_without_printing_secrets(tmp_path: Path) -> None:
    backends = [("secagg", "--party-id", "p1")]
    if _has("tenseal"):
        backends.append(("ckks", "--preset", "test-fast"))
    if _has("phe"):
        backends.append(("paillier", "--key-bits", "2048"))
    for backend, *extra in backends:
        record = keygen(tmp_path, "--backend", backend, *extra)
        for f in record["files"]:
            path = Path(f["path"])
            desc = run_json("inspect", str(path))
            assert desc["secret"] is f["secret"], (path, desc)
            assert desc["public_fingerprint"] == record["public_fingerprint"]
            assert "warnings" not in desc
            human = run("inspect", str(path))
            assert human.exit_code == 0
            if f["secret"]:
                raw = NoProtection().unwrap(_secret_envelope(path))[2]
                assert raw.hex() not in human.output + json.dumps(desc)
                assert raw[:16].hex() not in human.output


def test_inspect_fedtrain_paillier_holder_material(tmp_path: Path) -> None:
    pytest.importorskip("phe")
    from privagg.backends.paillier import PaillierBackend

    public, secret = PaillierBackend._insecure_for_tests(512).keygen()
    pub = public.to_bytes()
    sk = secret.to_bytes(protection=NoProtection())
    path = tmp_path / "holder.key"
    path.write_bytes(len(pub).to_bytes(4, "big") + pub + sk)  # fedtrain's layout
    os.chmod(path, 0o600)
    desc = run_json("inspect", str(path))
    assert desc["format"].startswith("Paillier holder material")
    assert desc["secret"] is True and desc["key_bits"] == 512
    assert desc["public_fingerprint"] == public.fingerprint.hex()
    assert "warnings" not in desc


def test_inspect_garbage_corrupted_and_empty_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage"
    garbage.write_bytes(os.urandom(300))
    msg = bytearray(RoundRequest(Scheme.PLAIN, bytes(32), 1, "c").to_bytes())
    msg[60] ^= 1
    corrupted = tmp_path / "corrupted"
    corrupted.write_bytes(bytes(msg))
    truncated = tmp_path / "truncated"
    truncated.write_bytes(bytes(msg[:40]))
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    for path, message in [
        (garbage, "not a privagg envelope or key file"),
        (corrupted, "corrupted or truncated privagg envelope"),
        (truncated, "corrupted or truncated privagg envelope"),
        (empty, "not a privagg envelope or key file"),
    ]:
        result = run("inspect", str(path))
        assert result.exit_code == 2, path
        assert result.stderr.startswith("privagg: DeserializationError: ")
        assert message in result.stderr
        assert "Traceback" not in result.output


def test_inspect_mutated_files_never_traceback(tmp_path: Path) -> None:
    """Truncations and byte flips of every key file: a description or one line, exit 2."""
    import numpy as np

    args = [("secagg", "--party-id", "m")]
    if _has("phe"):
        args.append(("paillier", "--key-bits", "2048"))
    if _has("tenseal"):
        args.append(("ckks", "--preset", "test-fast"))
    originals = []
    for backend, *extra in args:
        record = keygen(tmp_path / "keys", "--backend", backend, *extra)
        originals += [Path(f["path"]).read_bytes() for f in record["files"]]
    gen = np.random.default_rng(7)
    runner = CliRunner()
    target = tmp_path / "mutant"
    for original in originals:
        for _ in range(12):
            data = bytearray(original)
            if gen.random() < 0.5:
                data = data[: int(gen.integers(0, len(data)))]
            else:
                for pos in gen.integers(0, len(data), size=int(gen.integers(1, 4))):
                    data[int(pos)] ^= 1 << int(gen.integers(0, 8))
            target.write_bytes(bytes(data))
            result = runner.invoke(cli, ["inspect", str(target)])
            assert result.exit_code in (0, 2), (result.output, result.exception)
            assert "Traceback" not in result.output
            if result.exit_code == 2:
                assert result.stderr.startswith("privagg: ")
                assert len(result.stderr.strip().splitlines()) == 1


def test_inspect_tampered_identity_public_file(tmp_path: Path) -> None:
    run("keygen", "--backend", "secagg", "--party-id", "p", str(tmp_path))
    pub = tmp_path / "secagg-identity-p.pub"
    record = json.loads(pub.read_text())
    record["ed25519_public_key"] = "00" * 32
    pub.write_text(json.dumps(record))
    assert run_json("inspect", str(pub))["fingerprint_matches"] is False
    record["ed25519_public_key"] = "zz"
    pub.write_text(json.dumps(record))
    result = run("inspect", str(pub))
    assert result.exit_code == 2 and "malformed SecAgg+ identity" in result.stderr


def test_inspect_refuses_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result = run("inspect", str(fifo))
    assert result.exit_code == 2 and "not a regular file" in result.stderr


def test_inspect_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    result = run("inspect", str(tmp_path / "nope"))
    assert result.exit_code == 2 and "does not exist" in result.output


def test_inspect_escapes_control_characters_from_the_file(tmp_path: Path) -> None:
    from privagg.backends.secagg import SecAggBackend

    layout = privagg.Layout.from_arrays({"w": [0.0]})
    dealt = SecAggBackend().deal(layout, ["evil\x1b[2J", "ok"], max_clients=2)
    path = tmp_path / "agg.key"
    path.write_bytes(dealt.aggregator)
    result = run("inspect", str(path))
    assert result.exit_code == 0
    assert "\x1b" not in result.output
    assert "evil\\x1b[2J" in result.output


# -- bench -----------------------------------------------------------------------------------
def test_bench_builtin_plain() -> None:
    record = run_json(
        "bench", "--backend", "plain", "--source", "builtin", "--values", "1000"
    )
    (row,) = record["results"]
    assert row["backend"] == "plain" and row["source"] == "builtin run_round"
    figures = row["figures"]
    assert figures["values"] == 1000 and figures["clients"] == 3
    assert figures["max_abs_error"] < 1e-9
    assert math.isfinite(figures["round_s"]) and figures["bytes_per_value"] > 0
    human = run("bench", "--backend", "plain", "--source", "builtin", "--values", "100")
    assert (
        human.exit_code == 0 and "plain" in human.output and "round ms" in human.output
    )


@pytest.mark.skipif(
    not (ROOT / "benchmarks" / "plain.py").is_file(), reason="no benchmarks/ checkout"
)
def test_bench_script_plain() -> None:
    record = run_json("bench", "--backend", "plain", "--source", "script")
    (row,) = record["results"]
    assert row["source"] == "benchmarks/plain.py --quick"
    assert row["figures"]["benchmark"] == "plain"
    assert row["figures"]["ratio_vs_numpy"] > 0


def test_bench_unknown_backend() -> None:
    result = run("bench", "--backend", "nope", "--source", "builtin")
    assert result.exit_code == 2
    assert "unknown backend 'nope'" in result.stderr


# -- helpers ---------------------------------------------------------------------------------
def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _secret_envelope(path: Path) -> bytes:
    """The privagg.keys export inside a key file (CKKS nests it after the public ctx)."""
    from privagg.envelope import PayloadReader

    data = read_secret_file(path)
    if data.startswith(b"PVAG"):
        return data
    r = PayloadReader(data)
    r.blob()
    return r.blob()
