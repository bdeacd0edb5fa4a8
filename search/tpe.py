"""sftune's TPE: Optuna's TPESampler, except that a running trial counts as what it has reported so far.

With trials in parallel, Optuna's TPE (constant liar, its default) counts every RUNNING trial among the
bad ones, so that new trials are not proposed on top of trials still running. Under a pruner that
is wrong for exactly the trials that matter: the trials that survive successive halving are the good
ones, they run longest, and while they run every new trial is steered away from them (seen on SST-2:
the best trial, batch 32, ran for two minutes at 0.812 / 0.832 / 0.84, and the five trials TPE
proposed meanwhile all went to batch 8 and 16, around the one finished trial, 0.808; the next two,
asked once it had finished, went to batch 32). Here a running trial that has reported an evaluation
counts as if it had finished there: a complete trial whose value is its latest evaluation. A running
trial with no evaluation yet (or a NaN one) still counts as bad (the constant liar), so trials
started together still spread out.

`running_trials: worst` restores Optuna's behaviour; `constant_liar: false` ignores running trials
altogether (Optuna's option, unchanged).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.storage._optuna import TPESamplerBase, with_trials_shown_as

RUNNING_TRIALS = ("reported", "worst")


class TPESampler(TPESamplerBase):
    """`optuna.samplers.TPESampler` with `running_trials: reported | worst` (default reported)."""

    def __init__(self, *args: Any, running_trials: str = "reported", **kwargs: Any) -> None:
        if running_trials not in RUNNING_TRIALS:
            raise ValueError(f"running_trials must be one of {', '.join(RUNNING_TRIALS)}, found {running_trials!r}")
        super().__init__(*args, **kwargs)
        self.running_trials = running_trials

    def study_for_sampling(self, study: optuna.Study) -> optuna.Study:
        # Optuna's TPE reads the trials it splits inside its private `_sample` (reached through
        # search/storage/_optuna.py, canary in tests/unit/test_optuna_door.py): hand it a view of the
        # study in which reporting running trials look finished.
        if self.running_trials == "reported" and len(study.directions) == 1:
            return with_trials_shown_as(study, as_reported)
        return study


def as_reported(trial: FrozenTrial) -> FrozenTrial:
    """A RUNNING trial with a finite latest evaluation, as a COMPLETE copy with that value; else the trial."""
    if trial.state != TrialState.RUNNING or not trial.intermediate_values:
        return trial
    latest = trial.intermediate_values[max(trial.intermediate_values)]
    if not math.isfinite(latest):
        return trial
    shown = copy.copy(trial)
    shown.state = TrialState.COMPLETE
    shown.value = latest
    return shown
