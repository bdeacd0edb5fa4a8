"""The Optuna study behind a study file: storage, sampler, pruner, directions, resume, recovery and checks.

What the Ray adapter calls (and nothing else here is meant for it):

- `open_study(cfg, create=True, allow_base_change=False)` create or resume the study, every check done
  before any trial (ConfigError, exit 2); `load_existing(cfg)` for status/export/plot.
- `record_heartbeats(study, numbers)` every few seconds (`HEARTBEAT_S`) for the trials this driver runs,
  first right after each `ask`; `fail_stale(study)` periodically (before each ask is fine): it fails the
  RUNNING trials whose heartbeat (stamped by the database's clock) is older than `GRACE_S` and queues
  their params again, whichever driver they belonged to.
- `count_states(study)`, `finished(study)`: counted in storage, so every driver sees the same budget.
- `requeue(study, trial)`: queue the params of a trial that could not finish.
- `StorageFailure`: raised by any storage call whose database fails mid-run (full disk, read-only,
  corrupted, connection lost, locked for too long); `storage_problem(exc)` turns such an error into a
  sentence. SQLite's "database is locked" is retried with backoff and never reaches the caller unless
  it lasts `RETRY_FOR_S` seconds.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import os
import random
import sqlite3
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

import optuna
from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution,
                                  check_distribution_compatibility, json_to_distribution)
from optuna.storages._cached_storage import _CachedStorage  # subclassed by ReadLessOften (canary: test_storage_unit)
from optuna.trial import FrozenTrial, TrialState

from search.config import PRUNERS, StudyConfig, sampler_class
from search.space import Param
from trainer import ADDED_DEFAULTS, ConfigError, Problem

optuna.logging.set_verbosity(optuna.logging.WARNING)
# The heartbeat is documented for Study.optimize; ask/tell with heartbeats recorded by the driver is the
# same mechanism, so Optuna's note on each ask is noise here.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")

def _env_seconds(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(Problem(name, "", f"expected a whole number of seconds >= 1, found {raw!r}"))
    return value


HEARTBEAT_S = 5
"""Seconds between a running trial's heartbeats (env SFTUNE_HEARTBEAT_INTERVAL overrides)."""
GRACE_S = 20
"""A RUNNING trial whose last heartbeat is older than this is stale (env SFTUNE_HEARTBEAT_GRACE overrides).
Every driver of a study must use the same values."""
MAX_STALE_RETRIES = 3
"""A trial's params are queued again at most this many times after their driver died."""
RETRY_FOR_S = 120.0
"""How long a locked database (or a lost connection) is retried before it becomes a StorageFailure."""
SQLITE_BUSY_S = 10
"""SQLite's own wait for a lock, inside each attempt."""
STALE_ERROR = ("the driver running this trial stopped (killed, or lost its machine): no heartbeat for "
               "{grace} s; its params are queued to run again (at most " + str(MAX_STALE_RETRIES) + " times)")


def heartbeat_settings() -> tuple[int, int]:
    """(interval, grace) in seconds, from SFTUNE_HEARTBEAT_INTERVAL / SFTUNE_HEARTBEAT_GRACE or the defaults."""
    interval = _env_seconds("SFTUNE_HEARTBEAT_INTERVAL", HEARTBEAT_S)
    grace = _env_seconds("SFTUNE_HEARTBEAT_GRACE", max(GRACE_S, 4 * interval))
    if grace <= interval:
        raise ConfigError(Problem("SFTUNE_HEARTBEAT_GRACE", "", f"must be more than the heartbeat interval "
                                  f"({interval} s), found {grace}"))
    return interval, grace


# ---------------------------------------------------------------------------------------------------
# Storage faults


class StorageFailure(Exception):
    """The study database failed during a run; str() is one sentence for the user (the CLI exits 1)."""


_PROBLEMS: list[tuple[tuple[str, ...], str]] = [
    (("database or disk is full", "disk full", "no space left", "file too large", "could not extend file",
      "53100", "errno 28", "errno 27"),
     "the disk holding the study database is full (or the file reached its size limit)"),
    (("disk i/o error", "input/output error", "errno 5"),
     "writing the study database failed with a disk I/O error (a full disk, a file size limit or a failing disk)"),
    (("readonly database", "read-only", "read only", "25006"),
     "the study database is read-only, and sftune must write to it"),
    (("file is not a database", "malformed", "corrupt", "xx001", "xx002"),
     "the study database file is corrupted (or is not a SQLite database); the study cannot be read"),
    (("database is locked", "database table is locked", "40001", "40p01", "deadlock detected",
      "could not serialize"),
     "the study database stayed locked by other writers"),
    (("connection refused", "could not connect", "could not translate host", "name or service not known"),
     "cannot reach the database server"),
    (("server closed the connection", "terminating connection",
      "connection is closed", "connection timed out", "connection to server", "the connection is lost",
      "57p01", "08006", "08001", "08003", "08004"),
     "lost the connection to the database server"),
    (("unable to open database file",),
     "cannot open the study database file (its folder is missing or not writable)"),
]
_LOCKED = "the study database stayed locked by other writers"
_RETRYABLE = (_LOCKED, "lost the connection to the database server", "cannot reach the database server")


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
    if not any(isinstance(e, (sqlalchemy.exc.SQLAlchemyError, sqlite3.Error, OSError,
                              optuna.exceptions.StorageInternalError)) or type(e).__module__.startswith("psycopg")
               for e in chain):
        return None
    text = " ".join(f"{e} {getattr(e, 'sqlstate', '') or ''} errno {getattr(e, 'errno', '')}" for e in chain).lower()
    for needles, sentence in _PROBLEMS:
        if any(n in text for n in needles):
            return sentence
    return None


def _safe_url(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        return url if parsed.password is None else parsed.render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return url


_local = threading.local()


def _retrying(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: "SftuneStorage", *args: Any, **kwargs: Any) -> Any:
        if getattr(_local, "inside", False):  # an inner call: the outermost one retries the whole operation
            return method(self, *args, **kwargs)
        _local.inside = True
        try:
            return self._with_retries(method, args, kwargs)
        finally:
            _local.inside = False

    return call


class SftuneStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage, retrying each call while the database is locked or the connection drops
    (backoff up to `RETRY_FOR_S`), and raising StorageFailure with one sentence for any other database
    fault. `retries` counts the retried calls (measured by tests/benchmarks/storage_contention.py)."""

    retries = 0

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
        from sqlalchemy import select

        trial = _models().TrialModel
        self._beat(select(trial.trial_id).where(trial.study_id == study_id, trial.number.in_(numbers)))

    def _beat(self, trial_ids: Any) -> None:
        """A heartbeat now on each trial id that `trial_ids` (a select) finds, in one transaction; tried
        again once when another driver inserted one of them first (Optuna's own heartbeat ignores that)."""
        from sqlalchemy import func, select, update
        from sqlalchemy.exc import IntegrityError

        beat = _models().TrialHeartbeatModel
        for last in (False, True):
            session = self.scoped_session()
            try:
                ids = session.execute(trial_ids).scalars().all()
                have = set(session.execute(select(beat.trial_id).where(beat.trial_id.in_(ids))).scalars())
                if have:
                    session.execute(update(beat).where(beat.trial_id.in_(have)).values(heartbeat=func.now()))
                session.add_all([beat(trial_id=i) for i in ids if i not in have])
                session.commit()
                return
            except IntegrityError:
                session.rollback()
                if last:
                    raise
            except Exception:
                session.rollback()
                raise

    def _set_up_sessions(self) -> None:
        """Every new connection is set up once: PostgreSQL sessions in UTC (`_utc_session`), SQLite in
        write-ahead-log mode (`_sqlite_wal`)."""
        from sqlalchemy import event

        setup = {"postgresql": _utc_session, "sqlite": _sqlite_wal}.get(self.engine.dialect.name)
        if setup is not None:
            event.listen(self.engine, "connect", setup)
            self.engine.dispose()

    def _with_retries(self, method: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        started, delay = time.monotonic(), 0.02
        while True:
            try:
                return method(self, *args, **kwargs)
            except StorageFailure:
                raise
            except Exception as exc:  # noqa: BLE001 - sorted below: only database faults are ours
                problem = storage_problem(exc)
                if problem is None:
                    raise
                if problem in _RETRYABLE and time.monotonic() - started < RETRY_FOR_S:
                    self.retries += 1
                    time.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 2.0)
                    continue
                if problem in _RETRYABLE:
                    problem += f" (retried for {RETRY_FOR_S:g} s)"
                raise StorageFailure(f"study storage {_safe_url(self.url)}: {problem}") from exc

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna's stale check (database clock), plus: RUNNING trials with no heartbeat yet get one now,
        so a trial whose driver died between ask and its first heartbeat goes stale too (and a live one,
        just asked, is safe for the grace period); each stale trial keeps the reason as its `error`."""
        models = _models()
        from sqlalchemy import select

        self._beat(select(models.TrialModel.trial_id)
                   .outerjoin(models.TrialHeartbeatModel,
                              models.TrialHeartbeatModel.trial_id == models.TrialModel.trial_id)
                   .where(models.TrialModel.study_id == study_id, models.TrialModel.state == TrialState.RUNNING,
                          models.TrialHeartbeatModel.trial_heartbeat_id.is_(None)))
        stale = []
        live = self.live()
        for trial_id in super()._get_stale_trial_ids(study_id):
            if trial_id in live:  # this process runs it: alive, whatever a late heartbeat says
                continue
            try:
                self.set_trial_user_attr(trial_id, "error", STALE_ERROR.format(grace=self.grace_period))
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # it finished meanwhile: not stale
            stale.append(trial_id)
        return stale


_PRIVATE_CALLED = {"_create_new_trial", "_get_best_trial_id", "_get_trials", "_set_trial_param", "_get_stale_trial_ids"}
"""RDBStorage's private methods that Optuna's _CachedStorage calls directly (the canary test checks the list)."""
_WRAPPED = sorted({n for n in dir(optuna.storages.BaseStorage) if not n.startswith("_")}
                  | {"record_heartbeat", "record_heartbeats"} | _PRIVATE_CALLED)
for _name in _WRAPPED:
    if callable(getattr(SftuneStorage, _name, None)):
        setattr(SftuneStorage, _name, _retrying(getattr(SftuneStorage, _name)))


def _retried(storage: optuna.storages.BaseStorage, query: Callable[[], Any]) -> Any:
    """Our own query on the storage's engine, with the storage's retries (when it is ours)."""
    if isinstance(storage, SftuneStorage):
        return storage._with_retries(lambda _self: query(), (), {})
    return query()


class _RetryStale:
    """Optuna's heartbeat-stale callback: queue the stale trial's params again (Optuna's own
    RetryHeartbeatStaleTrialCallback, at most MAX_STALE_RETRIES times) and remember it for `fail_stale`."""

    def __init__(self) -> None:
        cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) \
            or optuna.storages.RetryFailedTrialCallback
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._retry = cls(max_retry=MAX_STALE_RETRIES)
        self.failed: list[FrozenTrial] = []
        self.lock = threading.Lock()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.failed.append(trial)
        if trial.params:
            retry = copy.deepcopy(trial)
            retry.user_attrs = {"retry_of": trial.number}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._retry(study, retry)

    def __getstate__(self) -> dict[str, Any]:
        return {"_retry": self._retry, "failed": []}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.lock = threading.Lock()


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
    interval, grace = heartbeat_settings()
    callback = _RetryStale()
    kw = ({"heartbeat_stale_trial_callback": callback} if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback")
          else {"failed_trial_callback": callback})
    started = time.monotonic()
    while True:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return SftuneStorage(url, engine_kwargs=_engine_kwargs(url), heartbeat_interval=interval,
                                     grace_period=grace, **kw)
        except Exception as exc:  # noqa: BLE001 - any failure to open is the user's URL or file
            problem = storage_problem(exc)
            # Drivers started together on a new database race to create its tables: the loser retries.
            racing = any(s in str(exc).lower() for s in ("already exists", "duplicate key", "unique constraint"))
            racing = racing or problem == _LOCKED
            if racing and time.monotonic() - started < RETRY_FOR_S:
                time.sleep(0.1 + random.random() * 0.4)
                continue
            if problem is None:
                problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(Problem(source, "storage", f"cannot open study storage {_safe_url(url)!r}: {problem}"))


# ---------------------------------------------------------------------------------------------------
# The one private reach into Optuna


def _storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """THE private reach: the storage a Study holds (`study._storage`; for an RDB URL Optuna wraps it in a
    `_CachedStorage` whose `_backend` is our SftuneStorage). tests/unit/test_storage_unit.py has the canary."""
    return study._storage


class ReadLessOften(_CachedStorage):
    """Optuna's trial cache over our storage, for the driver's study: the running trials are read from the
    database at most once per `REFRESH_S` instead of on every `get_all_trials` (each pruning decision and
    each sampled parameter made one such read, of every running trial with all its attributes).

    What this driver writes that changes a trial's state or params makes the next read go to the database,
    so its own asks, tells and sampling always see its own trials; the pruning decision reads the trial
    being judged fresh (`Trial.should_prune` calls `get_trial`). What other drivers wrote reaches this one
    at most `REFRESH_S` later, well inside the time two drivers take to notice each other anyway."""

    REFRESH_S = 0.5

    def __init__(self, backend: optuna.storages.RDBStorage) -> None:
        super().__init__(backend)
        self._read_at: dict[int, float] = {}

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._read_at = {}

    def _read_trials_from_remote_storage(self, study_id: int) -> None:
        started = time.monotonic()
        if started - self._read_at.get(study_id, -math.inf) < self.REFRESH_S:
            return
        super()._read_trials_from_remote_storage(study_id)
        self._read_at[study_id] = started

    def _changed(self) -> None:
        self._read_at.clear()

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        self._changed()
        return super().create_new_trial(study_id, template_trial)

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: optuna.distributions.BaseDistribution) -> None:
        super().set_trial_param(trial_id, param_name, param_value_internal, distribution)
        self._changed()

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        try:
            return super().set_trial_state_values(trial_id, state, values)
        finally:
            self._changed()


def close_study(study: optuna.Study) -> None:
    """Close the study's database connections (a SQLite file folds its write-ahead log back in: the
    `.db` file alone then holds the whole study, to copy or send). The study object stays usable: a
    later call opens new connections."""
    try:
        rdb_storage(study).engine.dispose()
    except TypeError:
        pass


def rdb_storage(study: optuna.Study) -> optuna.storages.RDBStorage:
    """The RDB storage under a study; raises TypeError for other storages."""
    storage = _storage_of(study)
    storage = getattr(storage, "_backend", storage)
    if not isinstance(storage, optuna.storages.RDBStorage):
        raise TypeError("not an RDB storage")
    return storage


def _models() -> Any:
    """Optuna's table models, for the few grouped queries that would otherwise load every trial."""
    from optuna.storages._rdb import models

    return models


def study_id(study: optuna.Study) -> int:
    return _storage_of(study).get_study_id_from_name(study.study_name)


# ---------------------------------------------------------------------------------------------------
# Samplers, pruners


def sampler_seed(cfg: StudyConfig, *, created: bool, n_trials: int) -> int | None:
    """The configured seed on a study this driver created; on a resumed or shared one a seed derived from
    it, the study's trials and this driver, so no driver replays a sequence the study already holds.
    (QMC keeps the configured seed: Optuna's QMC continues one shared sequence from the study itself.)"""
    seed = cfg.sampler.get("seed")
    if seed is None or created or cfg.sampler["name"] == "qmc":
        return seed
    token = f"{seed}:{n_trials}:{uuid.uuid4().hex}:{os.getpid()}"
    return int.from_bytes(hashlib.sha256(token.encode()).digest()[:4], "big")


def build_sampler(cfg: StudyConfig, seed: Any = "configured") -> optuna.samplers.BaseSampler:
    options = {k: v for k, v in cfg.sampler.items() if k != "name"}
    if seed != "configured" and "seed" in options:
        options["seed"] = seed
    cls = sampler_class(cfg.sampler["name"])
    if cfg.sampler["name"] == "grid":
        options["search_space"] = {p.name: p.grid_values() for p in cfg.space.params}
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(Problem(str(cfg.path), "sampler", f"{cfg.sampler['name']}: {exc}")) from None


def build_pruner(cfg: StudyConfig) -> optuna.pruners.BasePruner:
    if cfg.multi_objective:
        return optuna.pruners.NopPruner()
    options = {k: v for k, v in cfg.pruner.items() if k != "name"}
    cls = getattr(optuna.pruners, PRUNERS[cfg.pruner["name"]])
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(Problem(str(cfg.path), "pruner", f"{cfg.pruner['name']}: {exc}")) from None


# ---------------------------------------------------------------------------------------------------
# The base config a study was created with


BASE_ATTR = "base_config"
"""Study user attribute: {"config": resolved base, "compared": what is compared, "fingerprint": sha256}."""
_EXCLUDED = ("train.threads", "output_dir")
_hash_cache: dict[tuple[str, int, int], str] = {}


def _file_hash(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _hash_cache:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _hash_cache[key] = h.hexdigest()
    return _hash_cache[key]


def _content_id(value: str, *, model: bool = False) -> str:
    """A data file (or folder) by its content; a local model folder by its config and file sizes."""
    p = Path(value)
    if not p.exists():
        return value
    h = hashlib.sha256()
    files = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]
    for f in files:
        rel = f.relative_to(p).as_posix() if p.is_dir() else ""
        if model and f.name != "config.json":
            h.update(f"{rel}:{f.stat().st_size}\n".encode())
        else:
            h.update(f"{rel}:{_file_hash(f)}\n".encode())
    return ("model" if model else "content") + ":sha256:" + h.hexdigest()[:16]


def _compared(base: dict[str, Any]) -> dict[str, Any]:
    """The base config as compared between runs: data and local models by content, threads and
    output_dir left out, so another machine or folder with the same files matches."""
    data = copy.deepcopy(base)
    for key in _EXCLUDED:
        parts = key.split(".")
        node = data
        for part in parts[:-1]:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(parts[-1], None)
    for key in ("train", "validation"):
        value = (data.get("data") or {}).get(key)
        if isinstance(value, str):
            data["data"][key] = _content_id(value)
    if isinstance(data.get("model"), str) and Path(data["model"]).is_dir():
        data["model"] = _content_id(data["model"], model=True)
    return data


def base_record(cfg: StudyConfig) -> dict[str, Any]:
    compared = _compared(cfg.base)
    text = json.dumps(compared, sort_keys=True, default=str)
    return {"config": cfg.base, "compared": compared, "fingerprint": hashlib.sha256(text.encode()).hexdigest()}


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: data}


def base_changes(study: optuna.Study, cfg: StudyConfig) -> list[str]:
    """What differs between the base config stored on the study and this run's (empty: none, or none stored)."""
    stored = study.user_attrs.get(BASE_ATTR)
    if not isinstance(stored, dict) or "fingerprint" not in stored:
        return []
    cfg = cfg.as_stored_by(stored_distributions(study)) if cfg.space.fixed else cfg  # a pre-`fixed:` study
    now = base_record(cfg)
    if now["fingerprint"] == stored["fingerprint"]:
        return []
    old, new = _flat(stored.get("compared", {})), _flat(now["compared"])
    was, becomes = _flat(stored.get("config", {})), _flat(cfg.base)
    changes, skipped = [], 0
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key):
            continue
        if key not in old and key in ADDED_DEFAULTS and new.get(key) == ADDED_DEFAULTS[key]:
            skipped += 1  # a field a newer sftune added, at its default: no change by the user
            continue
        if key in ("data.train", "data.validation", "model") and str(old.get(key, "")).startswith(("content:", "model:")):
            changes.append(f"{key} ({becomes.get(key)}): its content differs from the file the study was created "
                           f"with ({was.get(key)})")
        else:
            changes.append(f"{key}: {was.get(key, old.get(key))!r} -> {becomes.get(key, new.get(key))!r}")
    return changes or ([] if skipped else ["the base config differs (fingerprint)"])


# ---------------------------------------------------------------------------------------------------
# The space against the stored trials


def param_distribution(param: Param) -> BaseDistribution:
    """The Optuna distribution a space parameter samples from (as `Param.sample` suggests it)."""
    if param.type == "float":
        return FloatDistribution(param.low, param.high, log=param.log, step=param.step)
    if param.type == "int":
        return IntDistribution(int(param.low), int(param.high), log=param.log, step=int(param.step or 1))
    return CategoricalDistribution(param.choices)


def stored_distributions(study: optuna.Study) -> dict[str, list[BaseDistribution]]:
    """Each param name's distinct distributions among the study's trials (one query on an RDB storage)."""
    out: dict[str, list[BaseDistribution]] = {}
    try:
        models = _models()
        from sqlalchemy import select

        storage = rdb_storage(study)
        sid = study_id(study)

        def query() -> list[Any]:
            with storage.scoped_session() as session:
                return list(session.execute(
                    select(models.TrialParamModel.param_name, models.TrialParamModel.distribution_json).distinct()
                    .join(models.TrialModel, models.TrialModel.trial_id == models.TrialParamModel.trial_id)
                    .where(models.TrialModel.study_id == sid)).all())

        for name, dist in _retried(storage, query):
            out.setdefault(name, []).append(json_to_distribution(dist))
    except TypeError:  # not an RDB storage
        for t in study.get_trials(deepcopy=False):
            for name, dist in t.distributions.items():
                if dist not in out.setdefault(name, []):
                    out[name].append(dist)
    return out


def space_conflicts(study: optuna.Study, cfg: StudyConfig) -> list[Problem]:
    """Space parameters Optuna could not mix with the stored trials (another kind, log scale or choices)."""
    stored = stored_distributions(study)
    problems = []
    for param in cfg.space.params:
        new = param_distribution(param)
        for old in stored.get(param.name, []):
            try:
                check_distribution_compatibility(old, new)
            except ValueError as exc:
                problems.append(Problem(cfg.space.source or str(cfg.path), param.name,
                                        f"the study's trials sampled it from {old}, but the space now gives {new}: "
                                        f"{exc} Restore it, or use another study name"))
                break
    return problems


# ---------------------------------------------------------------------------------------------------
# Opening a study


def _study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    return [s.study_name for s in storage.get_all_studies()]


def study_exists(storage: optuna.storages.BaseStorage, name: str) -> bool:
    return name in _study_names(storage)


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (plain or `file:...?mode=ro&uri=true`); None for other URLs and :memory:."""
    from sqlalchemy.engine import make_url

    try:
        u = make_url(url)
    except Exception:  # noqa: BLE001
        return None
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    name = u.database[5:] if u.database.startswith("file:") else u.database
    return Path(name)


def _check_readable(storage: SftuneStorage, url: str, source: str) -> None:
    """A SQLite file is checked whole (PRAGMA quick_check) before use: corruption in the middle of the
    file is found now, not as a failed write mid-run."""
    if sqlite_path(url) is None:
        return
    from sqlalchemy import text

    try:
        with storage.engine.connect() as conn:
            result = conn.execute(text("PRAGMA quick_check(1)")).scalar()
    except Exception as exc:  # noqa: BLE001
        result = storage_problem(exc) or str(exc)
    if result != "ok":
        raise ConfigError(Problem(source, "storage", f"study storage {_safe_url(url)!r}: the study database file "
                                  f"is corrupted ({result}); restore it from a copy, or use another storage"))


def _check_writable(storage: SftuneStorage, sid: int, url: str, source: str) -> None:
    """A harmless write (this driver's last open) before any trial: a read-only database fails here."""
    try:
        storage.set_study_system_attr(sid, "sftune_last_open", {"time": time.time(), "pid": os.getpid()})
    except StorageFailure as exc:
        raise ConfigError(Problem(source, "storage", str(exc))) from None


def open_study(cfg: StudyConfig, *, create: bool = True, allow_base_change: bool = False) -> optuna.Study:
    """Create the study, or load it to resume (the same name continues), after checking everything that
    would make its trials wrong: directions and metrics, the base config it was created with (unless
    `allow_base_change`), a space Optuna could not mix with its trials, a corrupted or read-only database.
    Every problem is a ConfigError raised before anything is written. The sampler's seed is the configured
    one only on a study this call created (see `sampler_seed`)."""
    source = str(cfg.path)
    storage = open_storage(cfg.storage, source)
    try:
        _check_readable(storage, cfg.storage, source)
        created = False
        if not study_exists(storage, cfg.name):
            if not create:
                raise ConfigError(Problem(source, "name", f"no study named {cfg.name!r} in {cfg.storage} yet; "
                                          "run `sftune run` first"))
            try:
                directions = [optuna.study.StudyDirection[d.upper()] for d in cfg.directions]
                storage.create_new_study(directions, cfg.name)
                created = True
            except optuna.exceptions.DuplicatedStudyError:
                pass  # another driver created it at the same moment: join it
        sid = storage.get_study_id_from_name(cfg.name)
        probe = optuna.load_study(study_name=cfg.name, storage=storage)
        if created:
            probe.set_user_attr("objective_metrics", cfg.metrics)
            probe.set_user_attr(BASE_ATTR, base_record(cfg))
        else:
            _check_existing(probe, cfg, allow_base_change)
        _check_writable(storage, sid, cfg.storage, source)
        if not created and BASE_ATTR not in probe.user_attrs:  # a study from before base checks: adopt this one
            probe.set_user_attr(BASE_ATTR, base_record(cfg))
        n = storage.get_n_trials(sid) if cfg.sampler.get("seed") is not None else 0
        seed = sampler_seed(cfg, created=created, n_trials=n)
        return optuna.load_study(study_name=cfg.name, storage=ReadLessOften(storage), sampler=build_sampler(cfg, seed),
                                 pruner=build_pruner(cfg))
    except StorageFailure as exc:
        raise ConfigError(Problem(source, "storage", str(exc))) from None


def _check_existing(study: optuna.Study, cfg: StudyConfig, allow_base_change: bool) -> None:
    source = str(cfg.path)
    existing = [d.name.lower() for d in study.directions]
    if existing != cfg.directions:
        raise ConfigError(Problem(source, "objective", f"study {cfg.name!r} in {cfg.storage} was created "
                                  f"with direction(s) {existing}, but this file asks for {cfg.directions}; "
                                  "use another study name to start afresh"))
    stored = study.user_attrs.get("objective_metrics")
    if stored and stored != cfg.metrics:
        raise ConfigError(Problem(source, "objective.metric", f"study {cfg.name!r} optimizes "
                                  f"{stored}, but this file asks for {cfg.metrics}"))
    problems = space_conflicts(study, cfg)
    changes = [] if allow_base_change else base_changes(study, cfg)
    if changes:
        problems.append(Problem(source, "base", f"study {cfg.name!r} was created with another base config, so "
                                "its trials would not compare with new ones: " + "; ".join(changes)
                                + ". Use another study name, restore the base config, or pass "
                                "--allow-base-change to continue on purpose"))
    if problems:
        raise ConfigError(problems)


def load_existing(cfg: StudyConfig) -> optuna.Study:
    """Load a study that must exist (status, export, plot, dashboard); read-only."""
    storage = open_storage(cfg.storage, str(cfg.path))
    try:
        if not study_exists(storage, cfg.name):
            raise ConfigError(Problem(str(cfg.path), "name", f"no study named {cfg.name!r} in {cfg.storage} yet; "
                                      "run `sftune run` first"))
        return optuna.load_study(study_name=cfg.name, storage=storage)
    except StorageFailure as exc:
        raise ConfigError(Problem(str(cfg.path), "storage", str(exc))) from None


# ---------------------------------------------------------------------------------------------------
# While a study runs


def record_heartbeats(study: optuna.Study, trial_numbers: Iterable[int]) -> None:
    """Stamp a heartbeat (the database's clock) on each of these RUNNING trials of this driver.

    Call it right after each ask for the new trial, then every `heartbeat_settings()[0]` seconds for all
    the trials this driver runs, from a thread that nothing else blocks. A trial that finished meanwhile
    is skipped. A storage without heartbeats (in-memory) is left alone."""
    storage = _storage_of(study)
    if getattr(storage, "get_heartbeat_interval", lambda: None)() is None:
        return
    numbers = list(trial_numbers)
    if not numbers:
        return
    try:
        backend = rdb_storage(study)
    except TypeError:
        backend = None
    if isinstance(backend, SftuneStorage):
        backend.record_heartbeats(study._study_id, numbers)
        return
    sid = storage.get_study_id_from_name(study.study_name)
    for number in numbers:
        try:
            storage.record_heartbeat(storage.get_trial_id_from_study_id_trial_number(sid, number))
        except KeyError:
            continue


def set_live(study: optuna.Study, trial_ids: Callable[[], set[int]]) -> None:
    """Where the trials this driver runs are found (a function giving their Optuna trial ids): its own stale
    check never fails them, even when a heartbeat came late (a starved machine); other drivers judge them
    by their heartbeats."""
    try:
        backend = rdb_storage(study)
    except TypeError:
        return
    if isinstance(backend, SftuneStorage):
        backend.live = trial_ids


def fail_stale(study: optuna.Study) -> list[FrozenTrial]:
    """Fail the study's RUNNING trials whose driver stopped heartbeating (Optuna's `fail_stale_trials`,
    judged by the database's clock), queue their params again, and return them (as they were when failed).

    Safe to call from every driver at any time: a trial is failed once, by whichever driver sees it
    first; a live trial (heartbeat younger than the grace period) is never failed."""
    storage = _storage_of(study)
    get_cb = getattr(storage, "get_heartbeat_stale_trial_callback", None)
    callback = get_cb() if get_cb is not None and storage.get_heartbeat_interval() is not None else None
    if not isinstance(callback, _RetryStale):
        return []
    with callback.lock:
        callback.failed = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        failed, callback.failed = callback.failed, []
    return failed


def requeue(study: optuna.Study, trial: optuna.Trial | FrozenTrial) -> None:
    """Queue a trial's params to be tried again by the next ask (a trial that could not finish)."""
    if trial.params:
        retries = int(trial.user_attrs.get("retries", 0)) + 1
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number, "retries": retries},
                            skip_if_exists=False)


def count_states(study: optuna.Study) -> dict[str, int]:
    """Trials by state, counted in storage (one grouped query on an RDB storage)."""
    from sqlalchemy import func, select

    out = {s: 0 for s in STATES}
    try:
        storage = rdb_storage(study)
    except TypeError:  # another storage: count the slow way
        for t in study.get_trials(deepcopy=False):
            out[t.state.name] += 1
        return out
    models = _models()

    def query() -> list[Any]:
        with storage.scoped_session() as session:
            return list(session.execute(
                select(models.TrialModel.state, func.count()).where(models.TrialModel.study_id == study_id(study))
                .group_by(models.TrialModel.state)).all())

    for state, n in _retried(storage, query):
        out[state.name] = n
    return out


def finished(study: optuna.Study) -> int:
    """COMPLETE + PRUNED trials in storage: what `budget.n_trials` counts."""
    c = count_states(study)
    return c["COMPLETE"] + c["PRUNED"]
