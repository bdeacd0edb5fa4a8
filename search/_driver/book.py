"""One driver's trial book: which Optuna trial each Tune trial is, and what happened to it while it ran."""

from __future__ import annotations

from dataclasses import dataclass, field

import optuna

from search.storage import trial_id_of


@dataclass
class TrialBook:
    """Keyed by Tune's trial id; an entry lives from the trial's ask to its end (`Driver.complete`)."""

    trials: dict[str, optuna.Trial] = field(default_factory=dict)
    """The trials this driver runs now."""
    pruned: set[str] = field(default_factory=set)
    prune_reasons: dict[str, str] = field(default_factory=dict)
    """Why a pruner stopped a trial, where it says (the learning-curve pruner)."""
    stopped: dict[str, str] = field(default_factory=dict)
    """Trials this driver stopped for another reason than pruning (a non-finite metric, a storage failure)."""
    errors: dict[str, str] = field(default_factory=dict)
    """Why a trial's Ray worker died, as Tune said."""
    last_step: dict[str, int] = field(default_factory=dict)
    history: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    """Every evaluation of a running trial, written to the trial once at its end."""

    def live_ids(self) -> set[int]:
        """The Optuna trial ids this driver runs now (its own stale check spares them)."""
        return {trial_id_of(t) for t in list(self.trials.values())}
