"""A study with its storage and id: what callers use instead of reaching into Optuna's `Study`."""

from __future__ import annotations

from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial

from search.storage._optuna import cached_trials, storage_of, study_id_of, trial_id_of


@dataclass(frozen=True)
class StudyHandle:
    """A study object, the storage it holds (Optuna's cache wrapper over an RDB storage, for a study
    opened from a URL) and its id in that storage."""

    study: optuna.Study
    storage: optuna.storages.BaseStorage
    study_id: int

    @classmethod
    def of(cls, study: optuna.Study) -> StudyHandle:
        return cls(study, storage_of(study), study_id_of(study))

    def trial(self, number: int) -> FrozenTrial:
        """Trial `number`, read from storage (KeyError: no such trial)."""
        return self.storage.get_trial(self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number))

    def cached(self, trial_id: int) -> list[FrozenTrial]:
        """The copies of a trial that the storage's cache keeps in memory (none without a cache)."""
        return [t for t in cached_trials(self.storage, self.study_id) if trial_id_of(t) == trial_id]
