"""Storage faults: which database errors sftune names, how it names them, and which it retries.

`StorageFailure` is raised by any storage call whose database fails mid-run (full disk, read-only,
corrupted, connection lost, locked for too long); `storage_problem(exc)` turns such an error into a
sentence. A locked SQLite database or a lost connection is retried with backoff (`with_retries`) and
never reaches the caller unless it lasts `RETRY_FOR_S` seconds: one deadline for every call on the
storage, counted from the first failure, so once the database has failed every later call fails at once.
"""

from __future__ import annotations

import functools
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

import optuna

RETRY_FOR_S = 120.0
"""How long a locked database (or a lost connection) is retried before it becomes a StorageFailure."""


class StorageFailure(Exception):
    """The study database failed during a run; str() is one sentence for the user (the CLI exits 1)."""


_PROBLEMS: list[tuple[tuple[str, ...], str]] = [
    (
        (
            "database or disk is full",
            "disk full",
            "no space left",
            "file too large",
            "could not extend file",
            "53100",
            "errno 28",
            "errno 27",
        ),
        "the disk holding the study database is full (or the file reached its size limit)",
    ),
    (
        ("disk i/o error", "input/output error", "errno 5"),
        "writing the study database failed with a disk I/O error (a full disk, a file size limit or a failing disk)",
    ),
    (
        ("readonly database", "read-only", "read only", "25006"),
        "the study database is read-only, and sftune must write to it",
    ),
    (
        ("file is not a database", "malformed", "corrupt", "xx001", "xx002"),
        "the study database file is corrupted (or is not a SQLite database); the study cannot be read",
    ),
    (
        (
            "database is locked",
            "database table is locked",
            "40001",
            "40p01",
            "deadlock detected",
            "could not serialize",
        ),
        "the study database stayed locked by other writers",
    ),
    (
        ("connection refused", "could not connect", "could not translate host", "name or service not known"),
        "cannot reach the database server",
    ),
    (
        (
            "server closed the connection",
            "terminating connection",
            "connection is closed",
            "connection timed out",
            "connection to server",
            "the connection is lost",
            "57p01",
            "08006",
            "08001",
            "08003",
            "08004",
        ),
        "lost the connection to the database server",
    ),
    (("unable to open database file",), "cannot open the study database file (its folder is missing or not writable)"),
]
LOCKED = "the study database stayed locked by other writers"
_RETRYABLE = (LOCKED, "lost the connection to the database server", "cannot reach the database server")


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or any(e is seen for seen in out):
            continue
        out.append(e)
        todo += [e.__cause__, e.__context__, getattr(e, "orig", None)]
    return out


def storage_problem(exc: BaseException) -> str | None:
    """One sentence for a database error (SQLAlchemy, sqlite3, psycopg, Optuna's wrapper), or None."""
    import sqlalchemy.exc

    chain = _chain(exc)
    if not any(
        isinstance(e, (sqlalchemy.exc.SQLAlchemyError, sqlite3.Error, OSError, optuna.exceptions.StorageInternalError))
        or type(e).__module__.startswith("psycopg")
        for e in chain
    ):
        return None
    text = " ".join(f"{e} {getattr(e, 'sqlstate', '') or ''} errno {getattr(e, 'errno', '')}" for e in chain).lower()
    for needles, sentence in _PROBLEMS:
        if any(n in text for n in needles):
            return sentence
    return None


def safe_url(url: str) -> str:
    """A database URL as it may be shown: its password hidden."""
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        return url if parsed.password is None else parsed.render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - best effort: an unparsable URL is shown as given
        return url


_local = threading.local()


def retrying(method: Callable[..., Any]) -> Callable[..., Any]:
    """A storage method that the storage's `_with_retries` runs; a call made inside another retried call
    runs as is (the outermost one retries the whole operation)."""

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(_local, "inside", False):  # an inner call: the outermost one retries the whole operation
            return method(self, *args, **kwargs)
        _local.inside = True
        try:
            return self._with_retries(method, args, kwargs)
        finally:
            _local.inside = False

    return call


def with_retries(storage: Any, method: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    """`method(storage, *args, **kwargs)`, retried with backoff (counted in `storage.retries`) while the
    database is locked or the connection drops; any database fault then, or any other at once, is raised
    as a StorageFailure with one sentence. Other errors pass through.

    The retries of every call on one storage share one deadline: `RETRY_FOR_S` after the database first
    failed (`storage.failing_since`; a call that failed and then went through clears it). Once the
    deadline has passed the database is known to have failed: a later call is still tried, once, and a
    fault fails it at once, so a run whose database is gone ends within `RETRY_FOR_S`, not after each
    of its calls has waited out retries of its own."""
    delay, failed = 0.02, False
    while True:
        try:
            result = method(storage, *args, **kwargs)
        except StorageFailure:
            raise
        except Exception as exc:  # sorted below: only database faults are ours
            problem = storage_problem(exc)
            if problem is None:
                raise
            if problem in _RETRYABLE:
                now = time.monotonic()
                since = getattr(storage, "failing_since", None)
                if since is None:
                    storage.failing_since = since = now
                if now - since < RETRY_FOR_S:
                    failed = True
                    storage.retries += 1
                    time.sleep(min(delay * (0.5 + random.random()), max(0.0, since + RETRY_FOR_S - now)))
                    delay = min(delay * 2, 2.0)
                    continue
                problem += f" (retried for {RETRY_FOR_S:g} s)"
            raise StorageFailure(f"study storage {safe_url(storage.url)}: {problem}") from exc
        if failed:  # this call met the fault and then went through: the database answers again
            storage.failing_since = None
        return result
