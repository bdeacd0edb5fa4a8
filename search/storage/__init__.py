"""The study database: opening it, its faults and retries, heartbeats and stale trials, the driver's trial
cache, the base-config fingerprint and counting trials in storage.

Optuna's private names are reached from `search/storage/_optuna.py` alone (each reach a named function,
with a canary in tests/unit/test_optuna_door.py); callers hold a `StudyHandle`, never `study._storage`.
"""

from __future__ import annotations

import warnings

import optuna

from search.storage._cache import ReadLessOften
from search.storage._counting import STATES, count_states, finished
from search.storage._faults import StorageFailure, safe_url, storage_problem
from search.storage._fingerprint import BASE_ATTR, base_changes, base_record
from search.storage._handle import StudyHandle
from search.storage._heartbeats import fail_stale, heartbeat_settings, record_heartbeats, requeue, set_live
from search.storage._optuna import rdb_models, trial_id_of
from search.storage._rdb import SftuneStorage, close_study, open_storage, rdb_storage, retried, sqlite_path, study_id

optuna.logging.set_verbosity(optuna.logging.WARNING)
# The heartbeat is documented for Study.optimize; ask/tell with heartbeats recorded by the driver is the
# same mechanism, so Optuna's note on each ask is noise here.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")

# The tunables (RETRY_FOR_S, SQLITE_BUSY_S, HEARTBEAT_S, ...) are read from their own modules
# (_faults, _rdb, _heartbeats) at each call: set them there, not here.
__all__ = [
    "BASE_ATTR",
    "STATES",
    "ReadLessOften",
    "SftuneStorage",
    "StorageFailure",
    "StudyHandle",
    "base_changes",
    "base_record",
    "close_study",
    "count_states",
    "fail_stale",
    "finished",
    "heartbeat_settings",
    "open_storage",
    "rdb_models",
    "rdb_storage",
    "record_heartbeats",
    "requeue",
    "retried",
    "safe_url",
    "set_live",
    "sqlite_path",
    "storage_problem",
    "study_id",
    "trial_id_of",
]
