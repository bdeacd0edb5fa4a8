"""The driver's trial cache: Optuna's cache over the study database, reading running trials less often."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.storage._optuna import CachedStorageBase


class ReadLessOften(CachedStorageBase):
    """Optuna's trial cache over our storage, for the driver's study: the running trials are read from the
    database at most once per `REFRESH_S` instead of on every `get_all_trials` (each pruning decision and
    each sampled parameter made one such read, of every running trial with all its attributes).

    Every write this process makes is seen by its next read at once, as with Optuna's own cache: a new
    trial, a state or a param makes the next read go to the database, so its own asks, tells and sampling
    always see its own trials; an intermediate value or a trial attribute is written to the database and
    to the cached trial alike, so the pruners that keep their rung values in system attributes
    (successive halving, hyperband) and read them back through `get_trials` see each one as soon as it
    is recorded, and decide exactly as in plain Optuna. The trial being judged is read fresh anyway
    (`Trial.should_prune` calls `get_trial`). What other drivers wrote reaches this one at most
    `REFRESH_S` later, well inside the time two drivers take to notice each other anyway."""

    REFRESH_S = 0.5

    def __init__(self, backend: optuna.storages.RDBStorage) -> None:
        super().__init__(backend)
        self._read_at: dict[int, float] = {}

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._read_at = {}

    def read_trials(self, study_id: int) -> None:
        started = time.monotonic()
        if started - self._read_at.get(study_id, -math.inf) < self.REFRESH_S:
            return
        self.read_trials_now(study_id)
        self._read_at[study_id] = started

    def _changed(self) -> None:
        self._read_at.clear()

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        self._changed()
        return super().create_new_trial(study_id, template_trial)

    def set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: optuna.distributions.BaseDistribution,
    ) -> None:
        super().set_trial_param(trial_id, param_name, param_value_internal, distribution)
        self._changed()

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        super().set_trial_intermediate_value(trial_id, step, intermediate_value)

        def change(t: FrozenTrial) -> None:
            t.intermediate_values = {**t.intermediate_values, step: float(intermediate_value)}

        self.update_cached_trial(trial_id, change)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        super().set_trial_user_attr(trial_id, key, value)

        def change(t: FrozenTrial) -> None:
            t.user_attrs = {**t.user_attrs, key: _as_stored(value)}

        self.update_cached_trial(trial_id, change)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        super().set_trial_system_attr(trial_id, key, value)

        def change(t: FrozenTrial) -> None:
            t.system_attrs = {**t.system_attrs, key: _as_stored(value)}

        self.update_cached_trial(trial_id, change)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        try:
            return super().set_trial_state_values(trial_id, state, values)
        finally:
            self._changed()


def _as_stored(value: Any) -> Any:
    """A value as the database gives it back (JSON): what a fresh read would show, not the caller's object."""
    return json.loads(json.dumps(value))
