"""A local Flower deployment on 127.0.0.1: one SuperLink, N SuperNodes, ``flwr run``.

Every component is a separate OS process started from the Flower CLIs installed next to
this interpreter (``flower-superlink``, ``flower-supernode``, ``flwr``), exactly as on
separate machines, only with loopback addresses and free ports. Used by the deployment
tests and for local demos::

    with LocalDeployment(workdir, [{"party-id": "client-0"}, {"party-id": "client-1"}]) as d:
        d.run_app("examples/flower_deployment", {"min-nodes": 2}, timeout=120)

Each process is started in its own session (process group), so stopping it also stops
the ``flower-superexec``/``flwr-serverapp``/``flwr-clientapp`` processes it spawned.

By default the deployment is secured as Flower documents for production: TLS on the
SuperLink (a CA and a server certificate made in ``workdir/certificates``; SuperNodes
and the ``flwr`` CLI verify it), and SuperNode authentication (``--enable-supernode-auth``;
each SuperNode's EC key is registered with ``flwr supernode register`` before it starts;
an unregistered SuperNode is refused). ``secure=False`` runs with ``--insecure``.

A demo from the command line (synthetic updates, prints the ServerApp's summary)::

    python -m fedtrain.flower.launch --nodes 3 --backend secagg \\
        --backend-options '{"active": false}'
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import tomli_w

from fedtrain.errors import FedtrainError
from fedtrain.flower.credentials import TlsFiles, make_node_key, make_tls

__all__ = ["DeploymentError", "LocalDeployment", "free_port", "main"]

logger = logging.getLogger(__name__)

_HOST = "127.0.0.1"


class DeploymentError(FedtrainError, RuntimeError):
    """A local deployment component failed to start or a run failed."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_HOST, 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DeploymentError(f"process exited with code {proc.returncode}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex((_HOST, port)) == 0:
                return
        time.sleep(0.2)
    raise DeploymentError(f"nothing listens on {_HOST}:{port} after {timeout}s")


class LocalDeployment:
    """SuperLink + SuperNodes as separate processes on loopback; stopped on exit.

    Args:
        workdir: a private folder for logs, Flower's home (``FLWR_HOME``) and configs.
        nodes: one node config per SuperNode (``--node-config``), e.g.
            ``{"party-id": "client-0", "privagg-weight": 0.5}``.
        bin_dir: folder with the Flower CLIs (default: next to this interpreter).
        start_timeout: seconds to wait for the SuperLink to listen.
        secure: TLS and SuperNode authentication (default); False: ``--insecure``.
    """

    def __init__(
        self,
        workdir: str | Path,
        nodes: Sequence[Mapping[str, Any]],
        *,
        bin_dir: str | Path | None = None,
        start_timeout: float = 30.0,
        secure: bool = True,
    ) -> None:
        self.workdir = Path(workdir)
        self.secure = secure
        self.tls: TlsFiles | None = None
        self.node_keys: list[tuple[Path, Path]] = []
        self.node_configs = [dict(n) for n in nodes]
        self.bin_dir = Path(bin_dir) if bin_dir else Path(sys.executable).parent
        self.start_timeout = start_timeout
        self.port = 0
        self.superlink: subprocess.Popen[bytes] | None = None
        self.supernodes: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []
        self.env = {
            **os.environ,
            "FLWR_HOME": str(self.workdir / "flwr-home"),
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            # SuperExec polls for new ClientApp/ServerApp tasks every second by default.
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
        }

    # -- lifecycle ---------------------------------------------------------------------

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        log = (self.workdir / log_name).open("wb")
        self._logs.append(log)
        return subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.workdir,
            start_new_session=True,
        )

    def start(self) -> None:
        """Start the SuperLink, write the CLI's connection config, start the SuperNodes.

        Raises:
            DeploymentError: the SuperLink did not come up.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        home = Path(self.env["FLWR_HOME"])
        home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        transport = ["--insecure"]
        if self.secure:
            self.tls = make_tls(self.workdir / "certificates")
            transport = [
                "--ssl-ca-certfile",
                str(self.tls.ca_cert),
                "--ssl-certfile",
                str(self.tls.server_cert),
                "--ssl-keyfile",
                str(self.tls.server_key),
                "--enable-supernode-auth",
            ]
        self.superlink = self._spawn(
            [
                str(self.bin_dir / "flower-superlink"),
                *transport,
                "--host",
                _HOST,
                "--port",
                str(self.port),
                "--disable-runtime-dependency-installation",
            ],
            "superlink.log",
        )
        _wait_port(self.port, self.start_timeout, self.superlink)
        link: dict[str, Any] = {"address": f"{_HOST}:{self.port}"}
        if self.tls is not None:
            link["root-certificates"] = str(self.tls.ca_cert)
        else:
            link["insecure"] = True
        (home / "config.toml").write_text(
            tomli_w.dumps({"superlink": {"default": "local", "local": link}}),
            encoding="utf-8",
        )
        for i in range(len(self.node_configs)):
            if self.secure:
                self.node_keys.append(make_node_key(self.workdir / "keys", f"node-{i}"))
                self.register_node_key(self.node_keys[i][1])
            self.supernodes.append(self._start_node(i))

    def register_node_key(self, public_key: Path) -> None:
        """``flwr supernode register``: admit the SuperNode holding this key.

        Raises:
            DeploymentError: the CLI failed.
        """
        res = subprocess.run(
            [
                str(self.bin_dir / "flwr"),
                "supernode",
                "register",
                str(public_key),
                "local",
            ],
            capture_output=True,
            env=self.env,
            cwd=self.workdir,
            timeout=60,
            check=False,
        )
        if res.returncode != 0:
            raise DeploymentError(
                f"flwr supernode register failed ({res.returncode}): "
                f"{res.stdout.decode(errors='replace')[-2000:]}"
                f"{res.stderr.decode(errors='replace')[-2000:]}"
            )

    def start_extra_node(
        self, config: Mapping[str, Any], *, register: bool = True
    ) -> subprocess.Popen[bytes]:
        """Start one more SuperNode (``register=False``: with a key never registered)."""
        i = len(self.node_configs)
        self.node_configs.append(dict(config))
        if self.secure:
            self.node_keys.append(make_node_key(self.workdir / "keys", f"node-{i}"))
            if register:
                self.register_node_key(self.node_keys[i][1])
        self.supernodes.append(self._start_node(i))
        return self.supernodes[-1]

    def _start_node(self, i: int) -> subprocess.Popen[bytes]:
        cfg_path = self.workdir / f"node-{i}.toml"
        cfg_path.write_text(tomli_w.dumps(self.node_configs[i]), encoding="utf-8")
        transport = ["--insecure"]
        if self.tls is not None:
            transport = [
                "--root-certificates",
                str(self.tls.ca_cert),
                "--auth-supernode-private-key",
                str(self.node_keys[i][0]),
            ]
        return self._spawn(
            [
                str(self.bin_dir / "flower-supernode"),
                *transport,
                "--superlink",
                f"{_HOST}:{self.port}",
                "--host",
                _HOST,
                "--port",
                str(free_port()),
                "--node-config",
                str(cfg_path),
            ],
            f"supernode-{i}.log",
        )

    @staticmethod
    def _stop_all(procs: Sequence[subprocess.Popen[bytes]], grace: float = 3.0) -> None:
        """SIGTERM every process group, wait up to ``grace`` s, then SIGKILL them."""
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        # A group may outlive its leader (spawned superexec/app processes).
        for proc in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)

    def kill_node(self, i: int) -> None:
        """Kill SuperNode ``i`` and everything it started (plays a crashed client)."""
        self._stop_all([self.supernodes[i]], grace=0.5)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every process this deployment started (idempotent).

        Args:
            timeout: seconds to wait until no live process is left in its groups.
        """
        self._stop_all(
            [*self.supernodes, *([self.superlink] if self.superlink else [])]
        )
        # Grandchildren (superexec, app processes) die asynchronously after SIGKILL.
        deadline = time.monotonic() + timeout
        while (left := self.leftover_processes()) and time.monotonic() < deadline:
            for pgid in self.process_groups():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
            time.sleep(0.1)
        if left:
            logger.warning("processes %s still alive after stop()", left)
        for log in self._logs:
            log.close()
        self._logs.clear()

    def process_groups(self) -> list[int]:
        """Process-group ids of every component started (each its own session)."""
        procs = [*([self.superlink] if self.superlink else []), *self.supernodes]
        return [p.pid for p in procs]

    def leftover_processes(self) -> list[int]:
        """Live (non-zombie) processes still in this deployment's groups (Linux /proc)."""
        groups = set(self.process_groups())
        left = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            state, pgid = fields[0], int(fields[2])
            if pgid in groups and state != "Z":
                left.append(int(stat.parent.name))
        return left

    def __enter__(self) -> LocalDeployment:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- runs --------------------------------------------------------------------------

    def run_app(
        self,
        app_dir: str | Path,
        run_config: Mapping[str, Any],
        *,
        timeout: float = 120.0,
        name: str = "run",
    ) -> str:
        """``flwr run <app_dir> local --stream`` with ``run_config`` overrides.

        Args:
            app_dir: the Flower app folder (its ``pyproject.toml`` names the apps).
            run_config: overrides of ``[tool.flwr.app.config]``.
            timeout: seconds before the run is abandoned.
            name: file stem for the override TOML and the run's log.

        Returns:
            The run's streamed output (ServerApp logs included).

        Raises:
            DeploymentError: ``flwr run`` failed or timed out.
        """
        overrides = self.workdir / f"{name}.toml"
        overrides.write_text(tomli_w.dumps(dict(run_config)), encoding="utf-8")
        log_path = self.workdir / f"{name}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [
                    str(self.bin_dir / "flwr"),
                    "run",
                    str(Path(app_dir).resolve()),
                    "local",
                    "--stream",
                    "--run-config",
                    str(overrides),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.workdir,
                start_new_session=True,
            )
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise DeploymentError(
                    f"flwr run timed out after {timeout}s; see {log_path}"
                ) from None
            finally:
                self._stop_all([proc], grace=1.0)
        out = log_path.read_text(encoding="utf-8", errors="replace")
        if code != 0:
            raise DeploymentError(f"flwr run exited with {code}:\n{out[-4000:]}")
        m = re.search(r"Successfully started run (\d+)", out)
        if m is None:
            raise DeploymentError(f"flwr run started no run:\n{out[-4000:]}")
        # The log stream can end before the run does: wait for the run's final status.
        status = self._wait_finished(int(m.group(1)), timeout)
        if status != "finished:completed":
            raise DeploymentError(f"run ended as {status!r}:\n{out[-4000:]}")
        return out

    def run_status(self, run_id: int) -> str:
        """The run's status text from ``flwr ls`` (e.g. ``"finished:completed"``)."""
        res = subprocess.run(
            [
                str(self.bin_dir / "flwr"),
                "ls",
                "local",
                "--run-id",
                str(run_id),
                "--format",
                "json",
            ],
            capture_output=True,
            env=self.env,
            cwd=self.workdir,
            timeout=60,
            check=False,
        )
        try:
            runs = json.loads(res.stdout)["runs"]
            return str(runs[0]["status"])
        except (ValueError, KeyError, IndexError, TypeError):
            return "unknown"

    def _wait_finished(self, run_id: int, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        status = self.run_status(run_id)
        while not status.startswith("finished") and time.monotonic() < deadline:
            time.sleep(0.5)
            status = self.run_status(run_id)
        return status

    def logs(self) -> str:
        """The tail of every component's log (for failure reports)."""
        parts = []
        for p in sorted(self.workdir.glob("*.log")):
            text = p.read_text(encoding="utf-8", errors="replace")
            parts.append(f"==== {p.name}\n{text[-3000:]}")
        return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the example app on a local deployment and print the run summary.

    Args:
        argv: command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The process exit code.
    """
    p = argparse.ArgumentParser(description="Run the privagg Flower app locally.")
    p.add_argument("--nodes", type=int, default=3, help="client SuperNodes")
    p.add_argument("--backend", default="plain")
    p.add_argument("--backend-options", default="{}", help="JSON object")
    p.add_argument("--rounds", type=int, default=1)
    repo = Path(__file__).resolve().parents[3]  # an editable install's checkout
    p.add_argument("--app", default=str(repo / "examples" / "flower_deployment"))
    args = p.parse_args(argv)
    nodes = [
        {"party-id": f"client-{i}", "privagg-backends": args.backend}
        for i in range(args.nodes)
    ]
    with tempfile.TemporaryDirectory(prefix="flower-") as work:
        result = Path(work) / "result.json"
        with LocalDeployment(work, nodes) as d:
            out = d.run_app(
                args.app,
                {
                    "backend": args.backend,
                    "backend-options": args.backend_options,
                    "rounds": args.rounds,
                    "min-nodes": args.nodes,
                    "result-path": str(result),
                },
            )
        if not result.exists():
            print(f"the run produced no result:\n{out[-3000:]}", file=sys.stderr)
            return 1
        print(json.dumps(json.loads(result.read_text()), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
