"""What a driver writes to its study (states, attributes, the counts line), where a storage failure ends the run.

Every storage call of the driver goes through `Ledger.guard`: a failure of the storage itself (disk full,
read-only, a lost connection) is recorded once as `fatal` and stops the run, never an exception in Tune's
loop; any other exception is a bug and propagates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from search._ray.gpu import check_packing
from search.config import StudyConfig
from search.progress import Progress, short
from search.storage import count_states, requeue, storage_problem


@dataclass
class Ledger:
    """One driver's writes to its study and its running totals (what the counts line shows)."""

    cfg: StudyConfig
    study: optuna.Study
    progress: Progress
    completed: int = 0
    n_pruned: int = 0
    failed: int = 0
    stop_reason: str = ""
    """Why this driver starts no more trials ("" while it goes on)."""
    fatal: str = ""
    """A storage failure that ended the run (exit 1)."""
    last_counts: tuple[dict[str, int], str] = ({}, "")
    """The trial counts and best line storage last gave (the counts line keeps them once it has failed)."""
    packing_said: bool = False
    timings: dict[str, list[float]] = field(default_factory=lambda: {"ask": [], "tell": [], "decide": []})
    """Seconds each ask, tell and pruning decision took (the driver's overhead, read by benchmarks)."""

    # ---- the storage guard --------------------------------------------------------------------
    def guard(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a storage call; a storage failure (disk full, read-only, lost connection) ends the run."""
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # classified below; anything else is a bug and re-raised
            problem = storage_problem(exc)
            if problem is None:
                raise
            self.storage_failed(problem)
            return None

    def storage_failed(self, problem: str) -> None:
        if not self.fatal:
            self.fatal = problem
            self.stop_reason = f"the study's storage failed: {problem}"

    # ---- ends of trials -----------------------------------------------------------------------
    def tell(self, trial: optuna.Trial, values: Any = None, state: TrialState | None = None) -> bool:
        """Tell Optuna how a trial ended; False when it could not be recorded (said, never a crash)."""
        started = time.perf_counter()
        try:
            self.study.tell(trial, values, state=state)
        except RuntimeError as exc:
            # GridSampler.after_trial calls study.stop(), which only works inside study.optimize; the
            # trial is stored by then, and is_exhausted (checked before each ask) is the public test.
            if "Study.stop" not in str(exc):
                raise
        except Exception as exc:  # noqa: BLE001 - a result that cannot be recorded is said, never a crash
            problem = storage_problem(exc)
            if problem is not None:
                self.storage_failed(problem)
                return False
            self.progress.message(f"trial {trial.number}: could not record the result ({type(exc).__name__}: {exc})")
            return False
        finally:
            self.timings["tell"].append(time.perf_counter() - started)
        return True

    def fail(self, trial: optuna.Trial, message: str, retry: bool = False) -> None:
        """FAIL a trial with `message` as its error; `retry` queues its params for another try."""
        try:
            self.guard(trial.set_user_attr, "error", message)
        except optuna.exceptions.UpdateFinishedTrialError:
            return  # already ended elsewhere (another driver failed it as stale): nothing to tell
        self.tell(trial, state=TrialState.FAIL)
        if retry:
            self.guard(requeue, self.study, trial)
        self.failed += 1
        self.progress.trial_finished(trial.number, "FAIL", None, message)

    def attr(self, trial: optuna.Trial, key: str, default: Any) -> Any:
        return (self.guard(lambda: trial.user_attrs) or {}).get(key, default)

    def note_memory(self, trial: optuna.Trial, memory: dict[str, float]) -> None:
        """A trial's CUDA figures as user attributes (`cuda_peak_mb`, `cuda_allocated_end_mb`, ...); the first
        peak seen is judged against the GPU's memory and the trials packed on it (said once)."""
        if not memory:
            return
        for key, value in memory.items():
            self.guard(trial.set_user_attr, key, value)
        if not self.packing_said and "cuda_reserved_peak_mb" in memory:
            self.packing_said = True
            packing = check_packing(self.cfg.resources.gpu, self.cfg.budget.concurrency, memory)
            prefix = "warning: " if packing.verdict in ("over", "tight") else ""
            self.progress.message(f"{prefix}GPU memory: {packing.message}")

    # ---- counts -------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        return count_states(self.study)

    def grid_exhausted(self) -> bool:
        sampler = self.study.sampler
        return isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(self.study)

    def best_line(self) -> str:
        try:
            if self.cfg.multi_objective:
                n = len(self.study.best_trials)
                return f"pareto front: {n} trial(s)" if n else "no complete trial yet"
            best = self.study.best_trial
        except ValueError:
            return "no complete trial yet"
        params = ", ".join(f"{k.split('.')[-1]}={short(v)}" for k, v in best.params.items())
        return f"best {self.cfg.metrics[0]} {best.value:.4f} (trial {best.number}: {params})"

    def show_counts(self, running: int) -> None:
        """The counts line: the study's finished trials (all drivers'), this driver's running, pruned, failed."""
        c, best = self.guard(self.counts), self.guard(self.best_line)
        if c is None or best is None:  # the storage failed: what it last said, not zeros
            c, best = c or self.last_counts[0], best or self.last_counts[1]
        self.last_counts = (c, best)
        self.progress.counts(
            finished=c.get("COMPLETE", 0) + c.get("PRUNED", 0),
            n_trials=self.cfg.budget.n_trials,
            running=running,
            pruned=self.n_pruned,
            failed=self.failed,
            best=best,
        )
