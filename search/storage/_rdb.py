"""The study database: sftune's RDB storage (retries, heartbeats, connection setup) and opening it from a URL.

`open_storage(url)` opens (and creates) the database with heartbeats on, as an `SftuneStorage`: every
call retried while the database is locked or the connection drops, SQLite in write-ahead-log mode,
PostgreSQL sessions in UTC. `rdb_storage(study)` finds it under a study; `retried` runs sftune's own
queries on it with the same retries.
"""

from __future__ import annotations

import random
import sqlite3
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from search.config import in_memory_sqlite
from search.storage import _faults, _heartbeats
from search.storage._faults import LOCKED, safe_url, storage_problem
from search.storage._optuna import CACHE_CALLS_ON_BACKEND, RDBStorageBase, backend_of, storage_of
from trainer import ConfigError, Problem

SQLITE_BUSY_S = 10
"""SQLite's own wait for a lock, inside each attempt."""


class SftuneStorage(RDBStorageBase):
    """Optuna's RDBStorage, retrying each call while the database is locked or the connection drops
    (backoff up to `RETRY_FOR_S`), and raising StorageFailure with one sentence for any other database
    fault. `retries` counts the retried calls (measured by tests/benchmarks/storage_contention.py)."""

    retries = 0
    failing_since: float | None = None
    """When (time.monotonic) the database began failing with a retried fault; None while it answers."""

    def __init__(self, url: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(url, *args, **kwargs)
        self.live: Callable[[], set[int]] = set
        """Ids of the trials this process runs now (`set_live`): its own stale check never fails them."""
        self._set_up_sessions()

    def __getstate__(self) -> dict[Any, Any]:  # `live` belongs to the process (a driver's method), not the copy
        return {k: v for k, v in super().__getstate__().items() if k != "live"}

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self.live = set
        self._set_up_sessions()

    def record_heartbeats(self, study_id: int, numbers: list[int]) -> None:
        """One heartbeat (the database's clock) on each of these trials, in one transaction: a driver
        with 64 trials running makes one commit per beat, not 128 round trips."""
        _heartbeats.beat_numbers(self, study_id, numbers)

    def _set_up_sessions(self) -> None:
        """Every new connection is set up once: PostgreSQL sessions in UTC (`_utc_session`), SQLite in
        write-ahead-log mode (`_sqlite_wal`)."""
        from sqlalchemy import event

        setup = {"postgresql": _utc_session, "sqlite": _sqlite_wal}.get(self.engine.dialect.name)
        if in_memory_sqlite(self.url):  # its one connection is the database: closing it would lose the tables
            return
        if setup is not None:
            event.listen(self.engine, "connect", setup)
            self.engine.dispose()

    def _with_retries(self, method: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        return _faults.with_retries(self, method, args, kwargs)

    def stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna's stale check, plus sftune's (`_heartbeats.stale_trial_ids`)."""
        return _heartbeats.stale_trial_ids(self, study_id)


_WRAPPED = sorted(
    {n for n in dir(optuna.storages.BaseStorage) if not n.startswith("_")}
    | {"record_heartbeat", "record_heartbeats"}
    | CACHE_CALLS_ON_BACKEND
)
"""The storage methods run with retries: Optuna's public storage API, the heartbeats, and the private
methods Optuna's cache wrapper calls on its backend (the canary test checks the list)."""
for _name in _WRAPPED:
    if callable(getattr(SftuneStorage, _name, None)):
        setattr(SftuneStorage, _name, _faults.retrying(getattr(SftuneStorage, _name)))


def retried(storage: optuna.storages.BaseStorage, query: Callable[[], Any]) -> Any:
    """Our own query on the storage's engine, with the storage's retries (when it is ours)."""
    if isinstance(storage, SftuneStorage):
        return storage._with_retries(lambda _self: query(), (), {})
    return query()


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_BUSY_S}}
    return {"pool_pre_ping": True}


def _sqlite_wal(dbapi_connection: Any, _record: Any) -> None:
    """SQLite in write-ahead-log mode with synchronous=NORMAL: one sync per checkpoint instead of two or
    three per commit, and readers (`sftune status`, the dashboard) never block the driver's writes. It
    roughly halves what each of the driver's commits costs (tests/benchmarks/driver_scale.py). A crash
    of the process loses nothing; a power cut may roll back the last commits, never corrupt the file
    (a trial whose end was rolled back is RUNNING again, goes stale, and is re-run). The mode is kept in
    the file. A database that cannot switch (read-only, or on a file system without shared memory)
    stays as it is: its error, if any, comes from the first real statement."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")  # a no-op when it already is; "memory" stays for :memory:
        cursor.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.Error:
        pass
    finally:
        cursor.close()


def _utc_session(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("SET TIME ZONE 'UTC'")
    cursor.close()
    if not getattr(dbapi_connection, "autocommit", False):
        dbapi_connection.commit()


def open_storage(url: str, source: str = "") -> SftuneStorage:
    """Open (and create if needed) the study database with heartbeats on; a URL that cannot be opened,
    a file that is not a database or a database that cannot be read is a ConfigError."""
    interval, grace = _heartbeats.heartbeat_settings()
    callback = _heartbeats.RetryStale()
    kw = (
        {"heartbeat_stale_trial_callback": callback}
        if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback")
        else {"failed_trial_callback": callback}
    )
    started = time.monotonic()
    while True:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return SftuneStorage(
                    url, engine_kwargs=_engine_kwargs(url), heartbeat_interval=interval, grace_period=grace, **kw
                )
        except Exception as exc:  # noqa: BLE001 - any failure to open is the user's URL or file
            problem = storage_problem(exc)
            # Drivers started together on a new database race to create its tables: the loser retries.
            racing = any(s in str(exc).lower() for s in ("already exists", "duplicate key", "unique constraint"))
            racing = racing or problem == LOCKED
            if racing and time.monotonic() - started < _faults.RETRY_FOR_S:
                time.sleep(0.1 + random.random() * 0.4)
                continue
            if problem is None:
                problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(Problem(source, "storage", f"cannot open study storage {safe_url(url)!r}: {problem}"))


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (plain or `file:...?mode=ro&uri=true`); None for other URLs and :memory:."""
    from sqlalchemy.engine import make_url

    try:
        u = make_url(url)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy parses: not a SQLite file
        return None
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    name = u.database[5:] if u.database.startswith("file:") else u.database
    return Path(name)


def rdb_storage(study: optuna.Study) -> optuna.storages.RDBStorage:
    """The RDB storage under a study; raises TypeError for other storages."""
    storage = backend_of(storage_of(study))
    if not isinstance(storage, optuna.storages.RDBStorage):
        raise TypeError("not an RDB storage")
    return storage


def study_id(study: optuna.Study) -> int:
    """The study's id in its storage (looked up by the study's name)."""
    return storage_of(study).get_study_id_from_name(study.study_name)


def close_study(study: optuna.Study) -> None:
    """Close the study's database connections (a SQLite file folds its write-ahead log back in: the
    `.db` file alone then holds the whole study, to copy or send). The study object stays usable: a
    later call opens new connections. An in-memory SQLite database is left open (closing it would lose it)."""
    try:
        storage = rdb_storage(study)
    except TypeError:
        return
    if not in_memory_sqlite(storage.url):  # an in-memory database is its connection: it stays open
        storage.engine.dispose()
