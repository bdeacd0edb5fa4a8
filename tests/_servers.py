"""Servers and processes the tests start themselves: a real PostgreSQL from the `pgserver` wheel (no system
package), SIGINT at its default in a process a test signals, CPU-bound helpers that keep the machine busy."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_SIGINT_DEFAULT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
)


def sigint_default(argv: list[str]) -> list[str]:
    """`argv` started with SIGINT at its default, as a terminal's Ctrl-C finds it: for a process a test signals.

    A job started with `&` by a non-interactive shell (a script, `nohup`, some CI runners) inherits SIGINT as
    ignored (POSIX); Python keeps it ignored, and so does every process it starts, so without this a test run
    from such a job signals a process that cannot hear it. A small Python sets SIGINT to its default and execs
    `argv` (same pid; a default disposition survives exec, unlike a `preexec_fn`, this is safe with threads).
    """
    return [sys.executable, "-c", _SIGINT_DEFAULT, *argv]


@contextmanager
def busy_cpus(n: int | None = None, seconds: float = 600) -> Iterator[list[subprocess.Popen]]:
    """`n` CPU-bound processes (default one per core) that keep the machine busy on purpose; each ends by itself
    after `seconds` at the latest, and all are stopped when the block ends."""
    spin = f"import time\nend = time.time() + {seconds:g}\nwhile time.time() < end:\n    pass\n"
    procs = [
        subprocess.Popen([sys.executable, "-c", spin], stdin=subprocess.DEVNULL)
        for _ in range(n or os.cpu_count() or 2)
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait(timeout=30)


class Postgres:
    """One PostgreSQL server on a unix socket in a temp dir; `new_database()` gives each test its own."""

    def __init__(self) -> None:
        import pgserver

        # A short folder under the temp dir: the server's unix socket path must stay under ~100 characters.
        self.root = Path(tempfile.mkdtemp(prefix="sftune-pg-"))
        self.server: Any = pgserver.get_server(self.root / "data", cleanup_mode="delete")
        self.uri = self.server.get_uri()  # postgresql://postgres:@/postgres?host=/socket/dir
        self._names = itertools.count()

    def sqlalchemy_url(self, database: str) -> str:
        return self.server.get_uri(database).replace("postgresql://", "postgresql+psycopg://", 1)

    def new_database(self, prefix: str = "t") -> str:
        """A fresh empty database; returns its SQLAlchemy URL (postgresql+psycopg://...)."""
        import psycopg

        name = f"{prefix}_{next(self._names)}"
        with psycopg.connect(self.uri, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.sqlalchemy_url(name)

    def stop(self) -> None:
        try:
            self.server.cleanup()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def start_postgres() -> Postgres | str:
    """A running server, or the reason it could not start (the caller skips with it)."""
    try:
        return Postgres()
    except ImportError as exc:
        return f"pgserver or psycopg is not installed ({exc}); pip install -e '.[dev]'"
    except Exception as exc:  # noqa: BLE001 - any failure to start is the reason to skip
        return f"PostgreSQL from the pgserver wheel could not start: {type(exc).__name__}: {exc}"


@contextmanager
def mlflow_server(folder: Path) -> Iterator[str]:
    """A real MLflow tracking server (SQLite backend, artifacts served by it) on a free local port; yields its
    URI. Skips the test, with the reason, when MLflow is not installed or the server does not answer."""
    import socket
    import time
    import urllib.request

    import pytest

    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
    if mlflow is None:
        pytest.skip("MLflow is not installed (pip install 'sftune[mlflow]')")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    folder.mkdir(parents=True, exist_ok=True)
    log = (folder / "mlflow-server.log").open("w")
    proc = subprocess.Popen(
        [
            mlflow,
            "server",
            "--backend-store-uri",
            f"sqlite:///{folder / 'mlflow.db'}",
            "--artifacts-destination",
            str(folder / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(uri + "/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"mlflow server did not start: {(folder / 'mlflow-server.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield uri
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        log.close()
