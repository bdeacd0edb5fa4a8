"""How a trial ended, in Optuna's terms: the state it is stored with, the values it is told, why it failed."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from optuna.trial import TrialState

from search._trial_result import error_of, is_done, lost_of
from search.config import StudyConfig

MAX_RETRIES = 2
"""How often the params of a trial whose worker died are queued again (a config that kills its worker stops)."""


def outcome_state(*, pruned: bool, error: bool, result: dict[str, Any] | None) -> TrialState:
    """Map how a Tune trial ended to the Optuna state it is stored with."""
    if pruned:
        return TrialState.PRUNED
    if error or not result or error_of(result) is not None or not is_done(result):
        return TrialState.FAIL
    return TrialState.COMPLETE


def not_finite(values: list[float]) -> str | None:
    """'nan' or 'inf' when a value is not a finite number, else None."""
    for v in values:
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf"
    return None


def told_values(
    cfg: StudyConfig, result: dict[str, Any], history: list[dict[str, float]]
) -> tuple[list[float], int | None]:
    """A complete trial's values and, with `objective.use: best`, the step they come from (else None).

    The final evaluation's values, or with `use: best` the best evaluation's (by the first objective;
    the earliest step wins a tie).
    """
    final = [float(result[m]) for m in cfg.metrics]
    evaluated = [h for h in history if all(m in h for m in cfg.metrics)]
    if cfg.use != "best" or not evaluated:
        return final, None
    sign = 1.0 if cfg.directions[0] == "maximize" else -1.0
    first = cfg.metrics[0]
    best = max(evaluated, key=lambda h: (sign * h[first] if not math.isnan(h[first]) else -math.inf, -h["step"]))
    return [float(best[m]) for m in cfg.metrics], int(best["step"])


def failure(
    *,
    stopped: str | None,
    result: dict[str, Any] | None,
    error: bool,
    worker_error: str | None,
    retries: Callable[[], int],
    timed_out: str | None,
    stop_reason: str,
) -> tuple[str, bool]:
    """Why a trial failed, and whether its params deserve another try (True when the job itself did not fail).

    `stopped`: why this driver stopped it; `worker_error`: what Tune said of its dead worker;
    `retries`: how often its params already ran again (read only for a dead worker); `timed_out`: the
    budget.timeout message when the run's time is out.
    """
    if stopped is not None:
        return stopped, False
    lost = lost_of(result)  # a rank of a multi-worker trial died: as a dead worker
    if lost is not None:
        error, worker_error = True, f"the trial lost a rank: {lost}"
    job_error = error_of(result)
    if job_error is not None:
        return job_error, False
    if error and worker_error is not None and worker_error.startswith("out of memory"):
        return worker_error + "; not retried (its params would run out of memory again)", False
    if error:
        retry = retries() < MAX_RETRIES
        note = "; its params are queued to run again" if retry else f"; not retried again ({MAX_RETRIES} retries)"
        return (worker_error or "the trial's Ray worker died") + note, retry
    if timed_out:
        return timed_out, True
    return (stop_reason or "stopped before it finished") + "; its params are queued for the next run", True


def killed_for_memory(error: BaseException) -> bool:
    """Whether Ray says a trial's worker was killed for memory (its memory monitor's OutOfMemoryError)."""
    text = f"{type(error).__name__} {error}"
    return "OutOfMemoryError" in text or "low on memory" in text
