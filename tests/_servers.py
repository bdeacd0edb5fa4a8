"""Servers the tests start themselves: a real PostgreSQL from the `pgserver` wheel (no system package)."""

from __future__ import annotations

import itertools
import shutil
import tempfile
from pathlib import Path
from typing import Any


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
