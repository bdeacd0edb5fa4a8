"""The one door to Optuna's private names: no other module of sftune touches them.

Optuna (bounded in pyproject to the minor version tested) has no public API for a few things sftune
needs. Each reach is one named function or base class here, and tests/unit/test_optuna_door.py has
one canary per reach that fails, naming it, when Optuna renames or removes what it uses;
tests/unit/test_private_names.py fails when a private Optuna name appears in any other module.

The reaches:

- `storage_of(study)`: `Study._storage`, the storage a study object holds (for an RDB URL, Optuna's
  `_CachedStorage` around the RDB storage).
- `study_id_of(study)`: `Study._study_id`.
- `trial_id_of(trial)`: `FrozenTrial._trial_id` / `Trial._trial_id`, the trial's id in its storage.
- `backend_of(storage)`: `_CachedStorage._backend`, the storage under Optuna's cache wrapper.
- `cached_trials(storage, study_id)`: `_CachedStorage._studies[study_id].trials`, the trials the
  cache wrapper keeps in memory (a finished trial is never read again).
- `rdb_models()`: `optuna.storages._rdb.models`, the table models of an RDB storage, for grouped
  queries and for the rows Optuna has no API to write (attributes of finished trials).
- `CachedStorageBase`: a subclass of `_CachedStorage` whose private
  `_read_trials_from_remote_storage` hook is the public `read_trials` / `read_trials_now`, and whose
  `update_cached_trial` replaces the copy of a trial kept in `_studies` (under `_lock`, found through
  `_trial_id_to_study_id_and_number`).
- `CACHE_CALLS_ON_BACKEND`: the private RDBStorage methods `_CachedStorage` calls on its backend
  (`_create_new_trial`, `_get_best_trial_id`, `_get_trials`, `_set_trial_param`,
  `_get_stale_trial_ids`), so a storage that wraps every call (retries) wraps these too.
- `RDBStorageBase`: `optuna.storages.RDBStorage` whose private `_get_stale_trial_ids` hook (called by
  `optuna.storages.fail_stale_trials`) is the public `stale_trial_ids` / `optuna_stale_trial_ids`.
- `TPESamplerBase`: `optuna.samplers.TPESampler` whose private `_sample` (where TPE reads the trials it
  splits) first passes the study through the public hook `study_for_sampling`.
- `with_trials_shown_as(study, show)`: a view of a study whose private `Study._get_trials` (what
  `TPESampler._sample` reads) shows each trial as `show(trial)` gives it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import optuna
from optuna.storages._cached_storage import _CachedStorage
from optuna.trial import FrozenTrial

# ---------------------------------------------------------------------------------------------------
# Attributes of Optuna's objects


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage a study object holds (`Study._storage`)."""
    return study._storage


def study_id_of(study: optuna.Study) -> int:
    """The study's id in its storage (`Study._study_id`)."""
    return study._study_id


def trial_id_of(trial: optuna.Trial | FrozenTrial) -> int:
    """A trial's id in its storage (`_trial_id` of a `FrozenTrial` or a `Trial`)."""
    return trial._trial_id


def backend_of(storage: optuna.storages.BaseStorage) -> optuna.storages.BaseStorage:
    """The storage under Optuna's cache wrapper (`_CachedStorage._backend`); any other storage itself."""
    return getattr(storage, "_backend", storage)


def cached_trials(storage: optuna.storages.BaseStorage, study_id: int) -> list[FrozenTrial]:
    """The trials of a study that Optuna's cache wrapper keeps in memory (`_CachedStorage._studies`);
    empty for a storage without that cache."""
    info = getattr(storage, "_studies", {}).get(study_id)
    return list(getattr(info, "trials", {}).values())


def rdb_models() -> Any:
    """Optuna's table models of an RDB storage (`optuna.storages._rdb.models`)."""
    from optuna.storages._rdb import models

    return models


# ---------------------------------------------------------------------------------------------------
# Private hooks, as public ones for sftune's subclasses


CACHE_CALLS_ON_BACKEND = frozenset(
    {"_create_new_trial", "_get_best_trial_id", "_get_trials", "_set_trial_param", "_get_stale_trial_ids"}
)
"""RDBStorage's private methods that Optuna's `_CachedStorage` calls on its backend directly."""


class CachedStorageBase(_CachedStorage):
    """Optuna's trial cache over an RDB storage (`_CachedStorage`). A subclass decides when the cache
    reads the study's new and unfinished trials from the database by overriding `read_trials`, and
    reads them with `read_trials_now` (both stand for the private `_read_trials_from_remote_storage`,
    which `get_all_trials` calls first)."""

    def _read_trials_from_remote_storage(self, study_id: int) -> None:
        self.read_trials(study_id)

    def read_trials(self, study_id: int) -> None:
        """Called before the cache answers `get_all_trials`; reads from the database by default."""
        self.read_trials_now(study_id)

    def read_trials_now(self, study_id: int) -> None:
        """Read the study's new and unfinished trials from the database into the cache."""
        super()._read_trials_from_remote_storage(study_id)

    def update_cached_trial(self, trial_id: int, change: Callable[[FrozenTrial], None]) -> None:
        """Replace the cache's copy of a trial by a shallow copy of it that `change` has changed (a trial
        not in the cache: nothing). Lists the cache handed out before keep the copy they had, as a new read
        from the database would: `change` must set new containers (`t.user_attrs = {...}`), not mutate."""
        with self._lock:
            where = self._trial_id_to_study_id_and_number.get(trial_id)
            trials = self._studies[where[0]].trials if where is not None and where[0] in self._studies else {}
            if where is None or where[1] not in trials:
                return
            fresh = copy.copy(trials[where[1]])
            change(fresh)
            trials[where[1]] = fresh


class RDBStorageBase(optuna.storages.RDBStorage):
    """Optuna's RDBStorage. A subclass decides which RUNNING trials are stale (what
    `optuna.storages.fail_stale_trials` fails) by overriding `stale_trial_ids`, and gets Optuna's own
    judgement from `optuna_stale_trial_ids` (both stand for the private `_get_stale_trial_ids`)."""

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self.stale_trial_ids(study_id)

    def stale_trial_ids(self, study_id: int) -> list[int]:
        """The ids of the study's stale trials; Optuna's judgement by default."""
        return self.optuna_stale_trial_ids(study_id)

    def optuna_stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna's stale trials: RUNNING with a heartbeat older than the grace period (database clock)."""
        return super()._get_stale_trial_ids(study_id)


class TPESamplerBase(optuna.samplers.TPESampler):
    """Optuna's TPESampler. A subclass changes the study TPE reads its trials from (inside the private
    `_sample`) by overriding `study_for_sampling`."""

    def _sample(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        return super()._sample(self.study_for_sampling(study), trial, search_space)

    def study_for_sampling(self, study: optuna.Study) -> optuna.Study:
        """The study whose trials TPE splits for the next sample; the study itself by default."""
        return study


class _TrialsShownAs:
    """A study whose `_get_trials` shows each trial as `show` gives it; everything else is the study's."""

    def __init__(self, study: optuna.Study, show: Callable[[FrozenTrial], FrozenTrial]) -> None:
        self._study = study
        self._show = show

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list[FrozenTrial]:
        trials = self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        return [self._show(t) for t in trials]


def with_trials_shown_as(study: optuna.Study, show: Callable[[FrozenTrial], FrozenTrial]) -> optuna.Study:
    """A view of `study` for `TPESamplerBase.study_for_sampling`: the trials TPE reads (`Study._get_trials`)
    pass through `show`; the stored trials never change."""
    return _TrialsShownAs(study, show)  # type: ignore[return-value]
