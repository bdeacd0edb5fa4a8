"""Counting a study's trials by state in storage, so every driver sees the same budget."""

from __future__ import annotations

from typing import Any

import optuna

from search.storage._optuna import rdb_models
from search.storage._rdb import rdb_storage, retried, study_id

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


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
    models = rdb_models()

    def query() -> list[Any]:
        with storage.scoped_session() as session:
            return list(
                session.execute(
                    select(models.TrialModel.state, func.count())
                    .where(models.TrialModel.study_id == study_id(study))
                    .group_by(models.TrialModel.state)
                ).all()
            )

    for state, n in retried(storage, query):
        out[state.name] = n
    return out


def finished(study: optuna.Study) -> int:
    """COMPLETE + PRUNED trials in storage: what `budget.n_trials` counts."""
    c = count_states(study)
    return c["COMPLETE"] + c["PRUNED"]
