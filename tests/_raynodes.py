"""Ray clusters the tests start with Ray's own CLI (`ray start`), one process group per node, ended exactly.

Other Ray clusters may run on the same machine: every node here gets free ports and its own temp
folder, and is ended by killing the processes it started (never `ray stop`, which ends them all).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from search._ray.reaper import descendants, end, process_table

RAY = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
STARTED = "Ray runtime started"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_env(token: str | None) -> dict[str, str]:
    """The environment of a node (and of a driver that has the token): token auth on or off, explicitly."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_") and k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "token" if token else "disabled"
    if token:
        env["RAY_AUTH_TOKEN"] = token
    return env


class Node:
    """`ray start ... --block` in a process group of its own: the node lives as long as that process."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, timeout: float = 180) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [RAY, "start", *args, "--block", "--disable-usage-stats", f"--dashboard-agent-listen-port={free_port()}"],
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + timeout
        while STARTED not in log.read_text():
            if self.proc.poll() is not None or time.time() > deadline:
                self.kill()
                raise RuntimeError(f"ray start {' '.join(args)} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)

    def node_id(self) -> str:
        """The Ray node id of this node (its raylet's --node_id)."""
        for pid in descendants(self.proc.pid, process_table()):
            try:
                args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if args and args[0].endswith(b"raylet"):
                for arg in args:
                    if arg.startswith(b"--node_id="):
                        return arg.split(b"=", 1)[1].decode()
        raise RuntimeError(f"no raylet found for the node started by pid {self.proc.pid}")

    def _processes(self) -> list[int]:
        return [self.proc.pid, *descendants(self.proc.pid, process_table())]

    def kill(self) -> None:
        """SIGKILL the node's every process at once (a machine lost), then reap `ray start`."""
        for pid in self._processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self.proc.wait()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL what is left: this node's processes only."""
        end(self._processes(), grace=5)
        self.proc.wait()


class Cluster:
    """A head node and `workers` more on this machine, 1 CPU each; `address` is the head's GCS."""

    def __init__(self, workers: int = 0, *, token: str | None = None, cpus: int = 1) -> None:
        # A short folder: Ray's unix socket paths under it must stay under ~107 characters.
        self.temp = Path(tempfile.mkdtemp(prefix="sfr-", dir="/tmp"))
        self.token = token
        self.env = node_env(token)
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        self.nodes: list[Node] = []
        try:
            self.nodes.append(
                Node(
                    [
                        "--head",
                        f"--port={port}",
                        f"--num-cpus={cpus}",
                        "--include-dashboard=false",
                        f"--temp-dir={self.temp}",
                    ],
                    self.env,
                    self.temp / "head.log",
                )
            )
            for i in range(workers):
                self.nodes.append(
                    Node([f"--address={self.address}", f"--num-cpus={cpus}"], self.env, self.temp / f"worker{i}.log")
                )
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        shutil.rmtree(self.temp, ignore_errors=True)
