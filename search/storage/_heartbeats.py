"""Heartbeats and stale trials: a running trial's heartbeat, failing the trials whose driver stopped, and
queueing their params again.

- `record_heartbeats(study, numbers)` every few seconds (`heartbeat_settings()[0]`) for the trials this
  driver runs, first right after each `ask`; `fail_stale(study)` periodically (before each ask is fine):
  it fails the RUNNING trials whose heartbeat (stamped by the database's clock) is older than the grace
  period and queues their params again, whichever driver they belonged to.
- `set_live(study, ids)`: the trials this driver runs, which its own stale check never fails.
- `requeue(study, trial)`: queue the params of a trial that could not finish.
"""

from __future__ import annotations

import copy
import os
import threading
import warnings
from collections.abc import Callable, Iterable
from typing import Any, Protocol, runtime_checkable

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.storage._optuna import rdb_models, storage_of, study_id_of
from trainer import ConfigError, Problem


@runtime_checkable
class _Heartbeats(Protocol):
    """A storage with Optuna's heartbeats (RDBStorage, and the cache over it)."""

    def record_heartbeat(self, trial_id: int) -> None: ...

    def get_heartbeat_interval(self) -> int | None: ...


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
STALE_ERROR = (
    "the driver running this trial stopped (killed, or lost its machine): no heartbeat for "
    "{grace} s; its params are queued to run again (at most " + str(MAX_STALE_RETRIES) + " times)"
)


def heartbeat_settings() -> tuple[int, int]:
    """(interval, grace) in seconds, from SFTUNE_HEARTBEAT_INTERVAL / SFTUNE_HEARTBEAT_GRACE or the defaults."""
    interval = _env_seconds("SFTUNE_HEARTBEAT_INTERVAL", HEARTBEAT_S)
    grace = _env_seconds("SFTUNE_HEARTBEAT_GRACE", max(GRACE_S, 4 * interval))
    if grace <= interval:
        raise ConfigError(
            Problem(
                "SFTUNE_HEARTBEAT_GRACE", "", f"must be more than the heartbeat interval ({interval} s), found {grace}"
            )
        )
    return interval, grace


# ---------------------------------------------------------------------------------------------------
# On an RDB storage (SftuneStorage's methods call these)


def beat(storage: optuna.storages.RDBStorage, trial_ids: Any) -> None:
    """A heartbeat now on each trial id that `trial_ids` (a select) finds, in one transaction; tried
    again once when another driver inserted one of them first (Optuna's own heartbeat ignores that)."""
    from sqlalchemy import func, select, update
    from sqlalchemy.exc import IntegrityError

    heartbeat = rdb_models().TrialHeartbeatModel
    for last in (False, True):
        session = storage.scoped_session()
        try:
            ids = session.execute(trial_ids).scalars().all()
            have = set(session.execute(select(heartbeat.trial_id).where(heartbeat.trial_id.in_(ids))).scalars())
            if have:
                session.execute(update(heartbeat).where(heartbeat.trial_id.in_(have)).values(heartbeat=func.now()))
            session.add_all([heartbeat(trial_id=i) for i in ids if i not in have])
            session.commit()
            return
        except IntegrityError:
            session.rollback()
            if last:
                raise
        except Exception:
            session.rollback()
            raise


def beat_numbers(storage: optuna.storages.RDBStorage, study_id: int, numbers: list[int]) -> None:
    """One heartbeat (the database's clock) on each of these trials, in one transaction: a driver
    with 64 trials running makes one commit per beat, not 128 round trips."""
    from sqlalchemy import select

    trial = rdb_models().TrialModel
    beat(storage, select(trial.trial_id).where(trial.study_id == study_id, trial.number.in_(numbers)))


def stale_trial_ids(storage: Any, study_id: int) -> list[int]:
    """Optuna's stale check (database clock), plus: RUNNING trials with no heartbeat yet get one now,
    so a trial whose driver died between ask and its first heartbeat goes stale too (and a live one,
    just asked, is safe for the grace period); each stale trial keeps the reason as its `error`.
    `storage` is an SftuneStorage: its `live()` trials are never stale."""
    models = rdb_models()
    from sqlalchemy import select

    beat(
        storage,
        select(models.TrialModel.trial_id)
        .outerjoin(models.TrialHeartbeatModel, models.TrialHeartbeatModel.trial_id == models.TrialModel.trial_id)
        .where(
            models.TrialModel.study_id == study_id,
            models.TrialModel.state == TrialState.RUNNING,
            models.TrialHeartbeatModel.trial_heartbeat_id.is_(None),
        ),
    )
    stale = []
    live = storage.live()
    for trial_id in storage.optuna_stale_trial_ids(study_id):
        if trial_id in live:  # this process runs it: alive, whatever a late heartbeat says
            continue
        try:
            storage.set_trial_user_attr(trial_id, "error", STALE_ERROR.format(grace=storage.grace_period))
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # it finished meanwhile: not stale
        stale.append(trial_id)
    return stale


class RetryStale:
    """Optuna's heartbeat-stale callback: queue the stale trial's params again (Optuna's own
    RetryHeartbeatStaleTrialCallback, at most MAX_STALE_RETRIES times) and remember it for `fail_stale`."""

    def __init__(self) -> None:
        cls = (
            getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
            or optuna.storages.RetryFailedTrialCallback
        )
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


# ---------------------------------------------------------------------------------------------------
# On a study (what the driver calls)


def record_heartbeats(study: optuna.Study, trial_numbers: Iterable[int]) -> None:
    """Stamp a heartbeat (the database's clock) on each of these RUNNING trials of this driver.

    Call it right after each ask for the new trial, then every `heartbeat_settings()[0]` seconds for all
    the trials this driver runs, from a thread that nothing else blocks. A trial that finished meanwhile
    is skipped. A storage without heartbeats (in-memory) is left alone."""
    from search.storage._rdb import SftuneStorage, rdb_storage

    storage = storage_of(study)
    if not isinstance(storage, _Heartbeats) or storage.get_heartbeat_interval() is None:
        return
    numbers = list(trial_numbers)
    if not numbers:
        return
    try:
        backend = rdb_storage(study)
    except TypeError:
        backend = None
    if isinstance(backend, SftuneStorage):
        backend.record_heartbeats(study_id_of(study), numbers)
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
    from search.storage._rdb import SftuneStorage, rdb_storage

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
    storage = storage_of(study)
    get_cb = getattr(storage, "get_heartbeat_stale_trial_callback", None)
    callback = (
        get_cb()
        if get_cb is not None and isinstance(storage, _Heartbeats) and storage.get_heartbeat_interval() is not None
        else None
    )
    if not isinstance(callback, RetryStale):
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
        study.enqueue_trial(
            trial.params, user_attrs={"retry_of": trial.number, "retries": retries}, skip_if_exists=False
        )
