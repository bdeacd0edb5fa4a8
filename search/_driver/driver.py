"""A driver's searcher: Tune asks it for a trial's config (Optuna's ask) and tells it how the trial ended (tell).

`Driver` is what Tune's searcher, scheduler and callback (`search._ray.shells`) call; it holds a ledger of
what it writes to the study (`ledger`), a book of its running trials (`book`), the judge of each evaluation
(`judge`) and its upkeep (heartbeats, stale trials, abandoning). The trial budget is counted in storage, so
several drivers share one study.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from search._driver.book import TrialBook
from search._driver.judge import Judge
from search._driver.ledger import Ledger
from search._driver.outcome import failure, killed_for_memory, not_finite, outcome_state, told_values
from search._driver.outputs import TrialOutputs
from search._driver.upkeep import Upkeep
from search._ray.resources import trial_threads
from search._trial_result import data_warnings_of, memory_of, seconds_of, step_of
from search.artifacts import apply_retention, write_note
from search.config import StudyConfig
from search.progress import LineProgress, Progress
from search.space import sample_params
from search.storage import record_heartbeats, set_live

FINISHED = "FINISHED"
"""What `suggest` returns when this driver will start no more trials (Tune's Searcher.FINISHED)."""


@dataclass
class Driver:
    """One driver's side of a running study: Tune trial id -> Optuna trial, asked, judged and told."""

    cfg: StudyConfig
    study: optuna.Study
    progress: Progress = None  # type: ignore[assignment]
    job: str | None = None
    """`module:function` run by workers instead of the fine-tuning job (benchmarks of the driver)."""
    node: str | None = None
    """The Ray node this driver runs on: a trial elsewhere sends its output files back."""
    gave_up: bool = False
    """True when the run stopped because more than budget.max_failures trials failed."""
    waiting_for_others: bool = False
    cluster_gone: Any = None
    """`() -> str | None`: why the cluster the trials run on is dead (None while it lives); no trial is
    started on a dead cluster."""
    lock: Any = field(default_factory=threading.RLock)
    """Held by each call Tune makes into the driver (`search._ray.shells`) and by `abandon_all`."""
    started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.progress is None:
            self.progress = LineProgress(print, self.cfg.metrics)
        self.ledger = Ledger(self.cfg, self.study, self.progress)
        self.book = TrialBook()
        self.judge = Judge(self.cfg, self.study, self.ledger, self.book)
        self.upkeep = Upkeep(self.study, self.ledger, self.book)
        self.outputs = TrialOutputs(self.cfg, self.study, guard=self.guard, say=self.say, job=self.job)
        set_live(self.study, self.book.live_ids)

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its searcher (and so this) for its checkpoints
        return {k: v for k, v in self.__dict__.items() if k != "lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.lock = threading.RLock()

    # ---- what the run and its tests read --------------------------------------------------------
    @property
    def trials(self) -> dict[str, optuna.Trial]:
        return self.book.trials

    @property
    def stop_reason(self) -> str:
        return self.ledger.stop_reason

    @stop_reason.setter
    def stop_reason(self, reason: str) -> None:
        self.ledger.stop_reason = reason

    @property
    def fatal(self) -> str:
        """A storage failure that ended the run (exit 1)."""
        return self.ledger.fatal

    @property
    def completed(self) -> int:
        return self.ledger.completed

    @property
    def n_pruned(self) -> int:
        return self.ledger.n_pruned

    @property
    def failed(self) -> int:
        return self.ledger.failed

    @property
    def timings(self) -> dict[str, list[float]]:
        return self.ledger.timings

    def say(self, text: str) -> None:
        self.progress.message(text)

    def guard(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """A storage call through the ledger's guard (a storage failure ends the run)."""
        return self.ledger.guard(fn, *args, **kwargs)

    def finish(self) -> None:
        """Wait for what is written after a trial ended (notes, retention); call it once the run ends."""
        self.outputs.finish()

    # ---- Tune's searcher ----------------------------------------------------------------------
    def suggest(self, tune_id: str) -> dict[str, Any] | str | None:
        """A Tune trial slot is free: ask Optuna for a trial (a config), wait (None) or stop (FINISHED)."""
        # With nothing running here Tune calls this once a second for up to 10 minutes without stepping its
        # loop (so without DriverTick): recover dead drivers' trials from here too, or a run that waits
        # for them would wait out Tune's 600 s.
        self.tick()
        done = FINISHED if not self.trials else None
        if self.stop_reason:
            return done
        if self.cluster_gone is not None and self.cluster_gone():
            return None  # the run is being ended (`abandon_all`): start nothing on a dead cluster
        if self.failed > self.cfg.max_failures:
            self.gave_up = True
            self.stop_reason = (
                f"{self.failed} trials failed in this run (budget.max_failures="
                f"{self.cfg.max_failures}); see `sftune status` for their errors"
            )
            return done
        c = self.guard(self.ledger.counts)
        if c is None:
            return done
        finished = c["COMPLETE"] + c["PRUNED"]
        if finished >= self.cfg.budget.n_trials:
            return done
        if finished + c["RUNNING"] >= self.cfg.budget.n_trials:
            # The rest of the budget is running, in this driver or in others: wait for it to end (a
            # trial that fails, or a dead driver's trial failed as stale, makes room again).
            others = c["RUNNING"] - len(self.trials)
            if others > 0 and not self.waiting_for_others:
                self.waiting_for_others = True
                self.progress.message(f"waiting: {others} trial(s) of this study are running in other drivers")
            return None
        if self.guard(self.ledger.grid_exhausted):
            self.stop_reason = f"the {self.cfg.sampler['name']} sampler has tried its whole space"
            return done
        return self.ask(tune_id)

    def ask(self, tune_id: str) -> dict[str, Any] | str | None:
        started = time.perf_counter()
        trial = self.guard(self.study.ask)
        if trial is None:
            return FINISHED if not self.trials else None
        self.guard(record_heartbeats, self.study, [trial.number])
        try:
            sampled = sample_params(trial, self.cfg.space)
            config = self.cfg.trial_config(sampled, trial.number)
        except Exception as exc:  # noqa: BLE001 - a broken python: space fails this trial alone
            self.ledger.fail(trial, f"sampling failed: {type(exc).__name__}: {exc}")
            return None
        config.setdefault("train", {})["threads"] = trial_threads(self.cfg)
        self.guard(trial.set_user_attr, "config", config)
        self.trials[tune_id] = trial
        self.timings["ask"].append(time.perf_counter() - started)
        self.progress.trial_started(trial.number, sampled)
        keep_best = [self.cfg.metrics[0], self.cfg.directions[0]] if self.cfg.use == "best" else None
        return {
            "sftune": {
                "number": trial.number,
                "config": config,
                "job": self.job,
                "driver_node": self.node,
                "keep_best": keep_best,
            }
        }

    def complete(self, tune_id: str, result: dict[str, Any] | None, error: bool) -> None:
        """Tune says a trial ended (ran out, was stopped, or its worker failed): tell Optuna its exact state."""
        trial = self.trials.pop(tune_id, None)
        if trial is None:
            return
        state = outcome_state(pruned=tune_id in self.book.pruned, error=error, result=result)
        history = self.book.history.pop(tune_id, None)
        if history:  # every evaluation, written once (not a growing list per report)
            self.guard(trial.set_user_attr, "history", history)
        if state == TrialState.PRUNED:
            self._pruned(tune_id, trial, result)
        elif state == TrialState.COMPLETE:
            assert result is not None
            self._completed(trial, result, history or [])
        else:
            self.ledger.fail(trial, *self._failure(tune_id, trial, result, error))
        self.outputs.later(write_note, self.study, self.cfg, trial.number, history)
        self.ledger.show_counts(running=len(self.trials))

    def _pruned(self, tune_id: str, trial: optuna.Trial, result: dict[str, Any] | None) -> None:
        if result and seconds_of(result):  # its last evaluation's timing: where a pruned trial's time went
            self.guard(trial.set_user_attr, "seconds", seconds_of(result))
        self.ledger.tell(trial, state=TrialState.PRUNED)
        self.ledger.n_pruned += 1
        why = self.book.prune_reasons.pop(tune_id, None)
        at = f"at step {self.book.last_step.get(tune_id, 0)}" + (f" ({why})" if why else "")
        self.progress.trial_finished(trial.number, "PRUNED", None, at)

    def _completed(self, trial: optuna.Trial, result: dict[str, Any], history: list[dict[str, float]]) -> None:
        values, best_step = told_values(self.cfg, result, history)
        if best_step is not None:
            self.guard(trial.set_user_attr, "best_step", best_step)
        bad = not_finite(values)
        if bad:
            self.ledger.fail(trial, f"metric was {bad} at the end (step {step_of(result)})")
            return
        self.outputs.keep_files(trial, result)
        self.guard(trial.set_user_attr, "final_step", step_of(result))
        self.guard(trial.set_user_attr, "seconds", seconds_of(result))
        if data_warnings_of(result):
            self.guard(trial.set_user_attr, "data_warnings", data_warnings_of(result))
        self.ledger.note_memory(trial, memory_of(result))
        self.outputs.store(trial)
        if self.ledger.tell(trial, values if len(values) > 1 else values[0]):
            self.ledger.completed += 1
            self.progress.trial_finished(trial.number, "COMPLETE", values, "")
            self.outputs.later(apply_retention, self.study, self.cfg)

    def _failure(
        self, tune_id: str, trial: optuna.Trial, result: dict[str, Any] | None, error: bool
    ) -> tuple[str, bool]:
        """Why a trial failed, and whether its params deserve another try (True when the job itself did not fail)."""
        timeout = self.cfg.budget.timeout
        timed_out = (
            f"stopped by budget.timeout ({timeout:g} s); its params are queued for the next run"
            if timeout and time.time() - self.started >= timeout
            else None
        )
        return failure(
            stopped=self.book.stopped.pop(tune_id, None),
            result=result,
            error=error,
            worker_error=self.book.errors.pop(tune_id, None),
            retries=lambda: int(self.ledger.attr(trial, "retries", 0)),
            timed_out=timed_out,
            stop_reason=self.stop_reason,
        )

    # ---- Tune's scheduler and callback ----------------------------------------------------------
    def result(self, tune_id: str, result: dict[str, Any]) -> bool:
        """An intermediate result of a trial; True means stop it (pruned, a non-finite metric, or the run ends)."""
        return self.judge.result(tune_id, result)

    def worker_error(self, tune_id: str, error: BaseException | None) -> None:
        if error is not None:
            text = str(error).strip().splitlines()
            why = f"the trial's Ray worker died: {text[-1] if text else type(error).__name__}"
            if killed_for_memory(error):  # Ray's memory monitor (or the kernel) killed it: its params' outcome
                why = f"out of memory: {why}"
            self.book.errors[tune_id] = why

    # ---- the driver's loop --------------------------------------------------------------------
    def heartbeats(self) -> threading.Event:
        """Stamp this driver's running trials from a thread of their own; set the returned event to stop."""
        return self.upkeep.heartbeats()

    def tick(self) -> None:
        """Every heartbeat interval, in Tune's loop: recover the trials of drivers that died."""
        self.upkeep.tick()

    def abandon_all(self, reason: str, wait: float = 30.0) -> None:
        """From another thread: stop taking Tune's calls (the lock is kept), then FAIL every running trial with
        `reason` and queue its params. A call Tune is making is waited for (at most `wait` seconds)."""
        self.lock.acquire(timeout=wait)
        self.stop_reason = reason
        self.abandon(reason)
        self.outputs.finish()

    def abandon(self, reason: str) -> None:
        """The run ends with trials still running (timeout, interrupt): FAIL them and queue their params."""
        self.upkeep.abandon(reason)
