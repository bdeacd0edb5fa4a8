"""The driver's side of a running study, without Ray: ask Optuna, judge each evaluation, tell the end.

Tune's searcher and scheduler (`search._ray.shells`) are thin shells over one `Driver`; contract tests
drive it against an in-memory study without a cluster. The driver is the study's one writer: workers
only send results back (`search._trial_result` defines them). The trial budget is counted in storage, so
several drivers share one study. How a trial ended is judged in `search._outcome`; what it leaves for
people is written by `search._trial_outputs`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from search._outcome import failure, killed_for_memory, not_finite, outcome_state, told_values
from search._ray.gpu import check_packing
from search._ray.resources import trial_threads
from search._trial_outputs import TrialOutputs
from search._trial_result import (
    data_warnings_of,
    error_of,
    is_done,
    is_ready,
    max_steps_of,
    memory_of,
    seconds_of,
    step_of,
    worker_attrs,
)
from search.artifacts import apply_retention, write_note
from search.config import StudyConfig
from search.progress import LineProgress, Progress, short
from search.pruners import build_mo_pruner
from search.space import sample_params
from search.storage import (
    count_states,
    fail_stale,
    heartbeat_settings,
    record_heartbeats,
    requeue,
    set_live,
    storage_problem,
    trial_id_of,
)

FINISHED = "FINISHED"
"""What `suggest` returns when this driver will start no more trials (Tune's Searcher.FINISHED)."""


@dataclass
class Driver:
    """Bookkeeping of one driver's trials: Tune trial id -> Optuna trial, and what happened to each."""

    cfg: StudyConfig
    study: optuna.Study
    progress: Progress = None  # type: ignore[assignment]
    job: str | None = None
    """`module:function` run by workers instead of the fine-tuning job (benchmarks of the driver)."""
    node: str | None = None
    """The Ray node this driver runs on: a trial elsewhere sends its output files back."""
    trials: dict[str, optuna.Trial] = field(default_factory=dict)
    pruned: set[str] = field(default_factory=set)
    prune_reasons: dict[str, str] = field(default_factory=dict)
    stopped: dict[str, str] = field(default_factory=dict)
    """Trials this driver stopped for another reason than pruning (a non-finite metric, a storage failure)."""
    errors: dict[str, str] = field(default_factory=dict)
    last_step: dict[str, int] = field(default_factory=dict)
    history: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    completed: int = 0
    n_pruned: int = 0
    failed: int = 0
    stop_reason: str = ""
    gave_up: bool = False
    """True when the run stopped because more than budget.max_failures trials failed."""
    fatal: str = ""
    """A storage failure that ended the run (exit 1)."""
    waiting_for_others: bool = False
    packing_said: bool = False
    last_beat: float = 0.0
    last_counts: tuple[dict[str, int], str] = ({}, "")
    """The trial counts and best line storage last gave (the counts line keeps them once it has failed)."""
    cluster_gone: Any = None
    """`() -> str | None`: why the cluster the trials run on is dead (None while it lives); no trial is
    started on a dead cluster."""
    lock: Any = field(default_factory=threading.RLock)
    """Held by each call Tune makes into the driver (`search._ray.shells`) and by `abandon_all`."""
    started: float = field(default_factory=time.time)
    timings: dict[str, list[float]] = field(default_factory=lambda: {"ask": [], "tell": [], "decide": []})

    def __post_init__(self) -> None:
        if self.progress is None:
            self.progress = LineProgress(print, self.cfg.metrics)
        self.outputs = TrialOutputs(self.cfg, self.study, guard=self.guard, say=self.say, job=self.job)
        self.metric_names = _metric_names(self.cfg)
        self.mo_pruner = build_mo_pruner(self.cfg)
        set_live(self.study, self.live_ids)

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its searcher (and so this) for its checkpoints
        return {k: v for k, v in self.__dict__.items() if k != "lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.lock = threading.RLock()

    def live_ids(self) -> set[int]:
        """The Optuna trial ids this driver runs now (its own stale check spares them)."""
        return {trial_id_of(t) for t in list(self.trials.values())}

    def say(self, text: str) -> None:
        self.progress.message(text)

    def finish(self) -> None:
        """Wait for what is written after a trial ended (notes, retention); call it once the run ends."""
        self.outputs.finish()

    # ---- counts -------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        return count_states(self.study)

    def _grid_exhausted(self) -> bool:
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

    def show_counts(self) -> None:
        c, best = self.guard(self.counts), self.guard(self.best_line)
        if c is None or best is None:  # the storage failed: what it last said, not zeros
            c, best = c or self.last_counts[0], best or self.last_counts[1]
        self.last_counts = (c, best)
        self.progress.counts(
            finished=c.get("COMPLETE", 0) + c.get("PRUNED", 0),
            n_trials=self.cfg.budget.n_trials,
            running=len(self.trials),
            pruned=self.n_pruned,
            failed=self.failed,
            best=best,
        )

    # ---- storage guard ------------------------------------------------------------------------
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
        c = self.guard(self.counts)
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
        if self.guard(self._grid_exhausted):
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
            self.fail(trial, f"sampling failed: {type(exc).__name__}: {exc}")
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
        state = outcome_state(pruned=tune_id in self.pruned, error=error, result=result)
        if self.history.get(tune_id):  # every evaluation, written once (not a growing list per report)
            self.guard(trial.set_user_attr, "history", self.history[tune_id])
        if state == TrialState.PRUNED:
            self._pruned(tune_id, trial, result)
        elif state == TrialState.COMPLETE:
            assert result is not None
            self._completed(tune_id, trial, result)
        else:
            self.fail(trial, *self._failure(tune_id, trial, result, error))
        self.outputs.later(write_note, self.study, self.cfg, trial.number, self.history.pop(tune_id, None))
        self.show_counts()

    def _pruned(self, tune_id: str, trial: optuna.Trial, result: dict[str, Any] | None) -> None:
        if result and seconds_of(result):  # its last evaluation's timing: where a pruned trial's time went
            self.guard(trial.set_user_attr, "seconds", seconds_of(result))
        self.tell(trial, state=TrialState.PRUNED)
        self.n_pruned += 1
        why = self.prune_reasons.pop(tune_id, None)
        at = f"at step {self.last_step.get(tune_id, 0)}" + (f" ({why})" if why else "")
        self.progress.trial_finished(trial.number, "PRUNED", None, at)

    def _completed(self, tune_id: str, trial: optuna.Trial, result: dict[str, Any]) -> None:
        values, best_step = told_values(self.cfg, result, self.history.get(tune_id, []))
        if best_step is not None:
            self.guard(trial.set_user_attr, "best_step", best_step)
        bad = not_finite(values)
        if bad:
            self.fail(trial, f"metric was {bad} at the end (step {step_of(result)})")
            return
        self.outputs.keep_files(trial, result)
        self.guard(trial.set_user_attr, "final_step", step_of(result))
        self.guard(trial.set_user_attr, "seconds", seconds_of(result))
        if data_warnings_of(result):
            self.guard(trial.set_user_attr, "data_warnings", data_warnings_of(result))
        self.note_memory(trial, memory_of(result))
        self.outputs.store(trial)
        if self.tell(trial, values if len(values) > 1 else values[0]):
            self.completed += 1
            self.progress.trial_finished(trial.number, "COMPLETE", values, "")
            self.outputs.later(apply_retention, self.study, self.cfg)

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
            stopped=self.stopped.pop(tune_id, None),
            result=result,
            error=error,
            worker_error=self.errors.pop(tune_id, None),
            retries=lambda: int(self._attr(trial, "retries", 0)),
            timed_out=timed_out,
            stop_reason=self.stop_reason,
        )

    def _attr(self, trial: optuna.Trial, key: str, default: Any) -> Any:
        return (self.guard(lambda: trial.user_attrs) or {}).get(key, default)

    def fail(self, trial: optuna.Trial, message: str, retry: bool = False) -> None:
        try:
            self.guard(trial.set_user_attr, "error", message)
        except optuna.exceptions.UpdateFinishedTrialError:
            return  # already ended elsewhere (another driver failed it as stale): nothing to tell
        self.tell(trial, state=TrialState.FAIL)
        if retry:
            self.guard(requeue, self.study, trial)
        self.failed += 1
        self.progress.trial_finished(trial.number, "FAIL", None, message)

    def tell(self, trial: optuna.Trial, values: Any = None, state: TrialState | None = None) -> bool:
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

    # ---- Tune's scheduler ---------------------------------------------------------------------
    def result(self, tune_id: str, result: dict[str, Any]) -> bool:
        """An intermediate result of a trial; True means stop it (pruned, a non-finite metric, or the run ends)."""
        trial = self.trials.get(tune_id)
        if trial is None:
            return False
        if self.fatal:
            self.stopped[tune_id] = f"stopped: {self.fatal}"
            return True
        if is_ready(result):
            for key, value in worker_attrs(result).items():
                self.guard(trial.set_user_attr, key, value)
            return False
        if error_of(result) is not None or is_done(result):
            return False
        started = time.perf_counter()
        values, step = self._evaluated(tune_id, trial, result)
        if len(values) != len(self.cfg.metrics):
            return False
        stop = self._judge(tune_id, trial, values, step)
        self.timings["decide"].append(time.perf_counter() - started)
        return stop

    def _evaluated(self, tune_id: str, trial: optuna.Trial, result: dict[str, Any]) -> tuple[list[float], int]:
        """Keep one evaluation (history, progress, the first one's memory, precision, model dtype and template); its
        objective values."""
        step = step_of(result)
        self.last_step[tune_id] = step
        metrics = {m: float(result[m]) for m in self.metric_names if m in result}
        history = self.history.setdefault(tune_id, [])
        history.append({"step": step, **metrics, "at": time.time()})
        self.progress.trial_reported(trial.number, step, max_steps_of(result), metrics)
        if len(history) == 1:  # the peak of the first steps, recorded and judged once (again at the end)
            self.note_memory(trial, memory_of(result))
            for key in ("precision", "model_dtype", "template"):  # arithmetic, weights, prompt format (sft)
                if result.get(key):
                    self.guard(trial.set_user_attr, key, str(result[key]))
        if result.get("generations"):  # a few generated samples: what the trial's numbers mean
            self.guard(trial.set_user_attr, "generations", {"step": step, "samples": result["generations"]})
        return [metrics[m] for m in self.cfg.metrics if m in metrics], step

    def _judge(self, tune_id: str, trial: optuna.Trial, values: list[float], step: int) -> bool:
        """Report an evaluation to Optuna; True when its pruner, or a non-finite metric, stops the trial."""
        if not self.cfg.multi_objective:
            self.guard(trial.report, values[0], step)
            if self.guard(trial.should_prune):
                self.pruned.add(tune_id)
                why = getattr(self.study.pruner, "reasons", {}).pop(trial.number, None)  # search/curve_pruner.py
                if why:
                    self.prune_reasons[tune_id] = why
                    self.guard(trial.set_user_attr, "pruned_because", why)
                return True
        elif self.mo_pruner is not None and (
            tune_id in self.pruned or self.guard(self.mo_pruner.judge, self.study, trial, values, step)
        ):
            self.pruned.add(tune_id)  # several objectives: search/pruners.py's rule (judged once: it stops now)
            return True
        bad = not_finite(values)
        if bad:
            self.stopped[tune_id] = f"metric was {bad} at step {step}"
            return True
        return False

    def worker_error(self, tune_id: str, error: BaseException | None) -> None:
        if error is not None:
            text = str(error).strip().splitlines()
            self.errors[tune_id] = f"the trial's Ray worker died: {text[-1] if text else type(error).__name__}"
            if killed_for_memory(error):  # Ray's memory monitor (or the kernel) killed it: its params' outcome
                self.errors[tune_id] = f"out of memory: {self.errors[tune_id]}"

    # ---- the driver's loop --------------------------------------------------------------------
    def heartbeats(self) -> threading.Event:
        """Stamp this driver's running trials every heartbeat interval from a thread of their own, so a busy
        Tune loop never lets another driver take a live trial for stale; set the returned event to stop."""
        stop = threading.Event()
        interval = heartbeat_settings()[0]

        def beat() -> None:
            while not stop.wait(interval):
                try:
                    record_heartbeats(self.study, [t.number for t in list(self.trials.values())])
                except Exception:  # noqa: BLE001 - a storage failure is met (and reported) by the loop
                    pass

        threading.Thread(target=beat, name="sftune-heartbeat", daemon=True).start()
        return stop

    def tick(self) -> None:
        """Every heartbeat interval, in Tune's loop: recover the trials of drivers that died."""
        now = time.time()
        if now - self.last_beat < heartbeat_settings()[0]:
            return
        self.last_beat = now
        for frozen in self.guard(fail_stale, self.study) or []:
            self.progress.message(
                f"trial {frozen.number} was left RUNNING by a driver that died: marked FAIL, its params queued again"
            )

    def abandon_all(self, reason: str, wait: float = 30.0) -> None:
        """From another thread: stop taking Tune's calls (the lock is kept), then FAIL every running trial with
        `reason` and queue its params. A call Tune is making is waited for (at most `wait` seconds)."""
        self.lock.acquire(timeout=wait)
        self.stop_reason = reason
        self.abandon(reason)
        self.outputs.finish()

    def abandon(self, reason: str) -> None:
        """The run ends with trials still running (timeout, interrupt): FAIL them and queue their params."""
        for tune_id, trial in list(self.trials.items()):
            self.trials.pop(tune_id, None)
            self.fail(trial, f"{reason}; its params are queued for the next run", retry=True)


def _metric_names(cfg: StudyConfig) -> set[str]:
    """Every metric a trial of this study may report: its task's, its `eval:` section's, and the objectives; and what
    its task records beside them (multilabel's tuned `threshold`)."""
    from trainer import METRICS
    from trainer.tasks import get_task

    names = {m for metric_names in METRICS.values() for m in metric_names} | set(cfg.metrics)
    if cfg.base_config is not None:
        task = get_task(cfg.base_config.task)
        names |= set(task.reported_metrics(cfg.base_config)) | set(task.recorded)
    return names
