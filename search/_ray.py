"""The one Ray adapter: Tune runs the trials, Optuna (in this driver) samples and prunes them.

A Tune `Searcher` asks the Optuna study for each trial and tells it the exact final state; a Tune
scheduler reports every evaluation to the Optuna trial and stops the trial when its pruner says so.
Both share one map of Tune trial id to Optuna trial. The driver is the only writer to the study.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import optuna
from optuna.trial import TrialState

from search.config import StudyConfig
from search.space import sample_params
from search.study import DRIVER_ATTR, HEARTBEAT_ATTR, driver_identity, finished, requeue
from search._ray_worker import DONE_KEY, ERROR_KEY, READY_KEY, post, trainable
from trainer import METRICS

HEARTBEAT_EVERY_S = 20.0
ALL_METRICS = {m for names in METRICS.values() for m in names}


def seconds_of(result: dict[str, Any]) -> dict[str, float]:
    """The job's timing from a Tune result (Tune may flatten the nested dict to `seconds/train` keys)."""
    nested = result.get("seconds")
    if isinstance(nested, dict):
        return dict(nested)
    return {k.split("/", 1)[1]: v for k, v in result.items() if k.startswith("seconds/")}


def outcome_state(*, pruned: bool, error: bool, result: dict[str, Any] | None) -> TrialState:
    """Map how a Tune trial ended to the Optuna state it is stored with."""
    if pruned:
        return TrialState.PRUNED
    if error or not result or ERROR_KEY in result or not result.get(DONE_KEY):
        return TrialState.FAIL
    return TrialState.COMPLETE


@dataclass
class RunState:
    """What the searcher, scheduler and progress callback share in the driver."""

    cfg: StudyConfig
    study: optuna.Study
    say: Callable[[str], None]
    trials: dict[str, optuna.Trial] = field(default_factory=dict)
    waiting: set[str] = field(default_factory=set)
    """Tune trials whose worker is starting up: their Optuna trial is asked when the worker is ready."""
    warm: dict[str, Any] = field(default_factory=dict)
    """What a starting worker imports before it says it is ready (model location and task)."""
    mailbox: str = field(default_factory=lambda: f"sftune/{uuid.uuid4().hex}")
    pruned: set[str] = field(default_factory=set)
    errors: dict[str, str] = field(default_factory=dict)
    last_step: dict[str, int] = field(default_factory=dict)
    history: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    done_before: int = 0
    completed: int = 0
    n_pruned: int = 0
    failed: int = 0
    stop_reason: str = ""
    gave_up: bool = False
    """True when the run stopped because budget.max_failures trials failed."""
    started: float = field(default_factory=time.time)
    driver: dict[str, Any] = field(default_factory=driver_identity)

    @property
    def finished(self) -> int:
        return self.done_before + self.completed + self.n_pruned

    def best_line(self) -> str:
        if self.cfg.multi_objective:
            try:
                n = len(self.study.best_trials)
            except ValueError:
                n = 0
            return f"pareto front: {n} trial(s)" if n else "no complete trial yet"
        try:
            best = self.study.best_trial
        except ValueError:
            return "no complete trial yet"
        params = ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in best.params.items())
        return f"best {self.cfg.metrics[0]} {best.value:.4f} (trial {best.number}: {params})"

    @property
    def busy(self) -> bool:
        return bool(self.trials or self.waiting)

    def status_line(self) -> str:
        return (f"[{time.time() - self.started:6.0f}s] finished {self.finished}/{self.cfg.budget.n_trials} · "
                f"running {len(self.trials)}" + (f" (+{len(self.waiting)} starting)" if self.waiting else "")
                + f" · pruned {self.n_pruned} · failed {self.failed} · {self.best_line()}")


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def tell(state: RunState, trial: optuna.Trial, values: Any = None, trial_state: TrialState | None = None) -> None:
    """study.tell, inside the optimize-loop flag so a sampler may stop the study (GridSampler does)."""
    study = state.study
    local = study._thread_local
    previous = getattr(local, "in_optimize_loop", False)
    local.in_optimize_loop = True
    try:
        study.tell(trial, values, state=trial_state)
    except Exception as exc:  # noqa: BLE001 - never leave a finished trial RUNNING in the database
        frozen = study._storage.get_trial(trial._trial_id)
        if frozen.state == TrialState.RUNNING:
            study._storage.set_trial_user_attr(trial._trial_id, "error", f"could not record the result: {exc}")
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        state.say(f"trial {trial.number}: could not record the result ({type(exc).__name__}: {exc})")
    finally:
        local.in_optimize_loop = previous
    if study._stop_flag and not state.stop_reason:
        state.stop_reason = f"the {state.cfg.sampler['name']} sampler has tried its whole space"


def start_trial(state: RunState, tune_id: str, *, preloaded: bool = False) -> bool:
    """A worker is ready for trial `tune_id`: ask Optuna for it now and post its config to the worker.

    Asking this late (not when Tune creates the trial) means a trial's time in the study is its own
    work, not a worker's start-up, and the sampler sees every result that came in meanwhile.
    Returns False when the trial should not run (the study stopped, or sampling failed).
    `preloaded`: the worker had the training stack imported before this trial (kept on the trial).
    """
    state.waiting.discard(tune_id)
    if state.stop_reason or state.failed >= state.cfg.max_failures:
        return False
    trial = state.study.ask()
    storage = state.study._storage
    storage.set_trial_system_attr(trial._trial_id, DRIVER_ATTR, state.driver)
    storage.set_trial_system_attr(trial._trial_id, HEARTBEAT_ATTR, time.time())
    try:
        sampled = sample_params(trial, state.cfg.space)
        config = state.cfg.trial_config(sampled, trial.number)
    except Exception as exc:  # noqa: BLE001 - a broken python: space fails this trial alone
        fail_trial(state, trial, f"sampling failed: {type(exc).__name__}: {exc}")
        return False
    config.setdefault("train", {})["threads"] = max(1, int(state.cfg.resources.cpu))
    trial.set_user_attr("config", config)
    trial.set_user_attr("worker_preloaded", preloaded)
    state.trials[tune_id] = trial
    post(f"{state.mailbox}/{tune_id}", {"number": trial.number, "config": config})
    state.say(f"trial {trial.number} started: " + ", ".join(f"{k}={_short(v)}" for k, v in sampled.items()))
    return True


def fail_trial(state: RunState, trial: optuna.Trial, message: str) -> None:
    trial.set_user_attr("error", message)
    tell(state, trial, trial_state=TrialState.FAIL)
    state.failed += 1
    state.say(f"trial {trial.number} FAILED: {message}")


def _make_searcher(state: RunState) -> Any:
    from ray.tune.search import Searcher

    class OptunaAskTell(Searcher):
        """Lets Tune create a trial whenever the budget has room; the Optuna ask waits for the worker."""

        def __init__(self) -> None:
            super().__init__()

        def set_search_properties(self, metric: Any, mode: Any, config: Any, **spec: Any) -> bool:
            return True

        def suggest(self, trial_id: str) -> dict | str | None:
            if state.stop_reason:
                return Searcher.FINISHED if not state.busy else None
            if state.failed >= state.cfg.max_failures:
                state.gave_up = True
                state.stop_reason = (f"{state.failed} trials failed in this run (budget.max_failures="
                                     f"{state.cfg.max_failures}); see `sftune status` for their errors")
                return Searcher.FINISHED if not state.busy else None
            if state.finished + len(state.trials) + len(state.waiting) >= state.cfg.budget.n_trials:
                return Searcher.FINISHED if not state.busy else None
            state.waiting.add(trial_id)
            return {"sftune": {"mailbox": f"{state.mailbox}/{trial_id}", "warm": state.warm,
                               "cache_dir": str(state.cfg.cache_dir)}}

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if trial_id in state.waiting:  # the worker never became ready
                state.waiting.discard(trial_id)
                if error:  # recorded as a FAIL trial with no params (asking would take a queued retry)
                    message = "before the trial started: " + state.errors.pop(trial_id, "the Ray worker failed")
                    state.study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL,
                                                                     user_attrs={"error": message}))
                    state.failed += 1
                    state.say(f"a trial FAILED {message}")
                return
            trial = state.trials.pop(trial_id, None)
            if trial is None:
                return
            pruned = trial_id in state.pruned
            outcome = outcome_state(pruned=pruned, error=error, result=result)
            if outcome == TrialState.PRUNED:
                tell(state, trial, trial_state=TrialState.PRUNED)
                state.n_pruned += 1
                state.say(f"trial {trial.number} pruned at step {state.last_step.get(trial_id, 0)}")
            elif outcome == TrialState.COMPLETE:
                values = [float(result[m]) for m in state.cfg.metrics]
                trial.set_user_attr("final_step", int(result.get("step", 0)))
                trial.set_user_attr("seconds", seconds_of(result))
                tell(state, trial, values if len(values) > 1 else values[0])
                state.completed += 1
                state.say(f"trial {trial.number} complete: "
                          + ", ".join(f"{m}={v:.4f}" for m, v in zip(state.cfg.metrics, values)))
            else:
                if result and ERROR_KEY in result:
                    message = str(result[ERROR_KEY])
                elif error:
                    message = state.errors.pop(trial_id, "the trial's Ray worker failed")
                else:
                    timeout = state.cfg.budget.timeout
                    if timeout and time.time() - state.started >= timeout:
                        message = f"stopped by budget.timeout ({timeout:g} s); its params are queued for the next run"
                        requeue(state.study, trial)
                    else:
                        message = state.stop_reason or "stopped before it finished"
                fail_trial(state, trial, message)
            state.say(state.status_line())

    return OptunaAskTell()


def _make_scheduler(state: RunState) -> Any:
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    class OptunaPrunerScheduler(FIFOScheduler):
        def set_search_properties(self, metric: Any, mode: Any, **spec: Any) -> bool:
            return True

        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
            if result.get(READY_KEY):
                ok = start_trial(state, trial.trial_id, preloaded=bool(result.get("preloaded")))
                return TrialScheduler.CONTINUE if ok else TrialScheduler.STOP
            otrial = state.trials.get(trial.trial_id)
            if otrial is None or ERROR_KEY in result or result.get(DONE_KEY):
                return TrialScheduler.CONTINUE
            step = int(result.get("step", 0))
            state.last_step[trial.trial_id] = step
            values = {m: result[m] for m in state.cfg.metrics if m in result}
            history = state.history.setdefault(trial.trial_id, [])
            history.append({"step": step, **{k: float(v) for k, v in result.items() if k in ALL_METRICS},
                            "at": time.time()})
            otrial.set_user_attr("history", history)
            seconds = seconds_of(result)
            if seconds:
                otrial.set_user_attr("seconds", seconds)
            state.say(f"trial {otrial.number} step {step}: "
                      + "  ".join(f"{k} {v:.4f}" for k, v in history[-1].items() if k in ALL_METRICS))
            if state.cfg.multi_objective or not values:
                return TrialScheduler.CONTINUE
            otrial.report(float(values[state.cfg.metrics[0]]), step)
            if otrial.should_prune():
                state.pruned.add(trial.trial_id)
                return TrialScheduler.STOP
            return TrialScheduler.CONTINUE

        def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
            try:
                err = trial.get_error()
            except Exception:  # noqa: BLE001
                err = None
            if err is not None:
                text = str(err).strip().splitlines()
                state.errors[trial.trial_id] = f"Ray worker failed: {text[-1] if text else type(err).__name__}"

    return OptunaPrunerScheduler()


def _make_callback(state: RunState) -> Any:
    from ray.tune import Callback

    class Heartbeat(Callback):
        last = 0.0

        def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
            now = time.time()
            if now - self.last < HEARTBEAT_EVERY_S:
                return
            self.last = now
            storage = state.study._storage
            for trial in list(state.trials.values()):
                try:
                    storage.set_trial_system_attr(trial._trial_id, HEARTBEAT_ATTR, now)
                except Exception:  # noqa: BLE001 - the trial just finished
                    pass

    return Heartbeat()


@contextmanager
def ray_cluster(cfg: StudyConfig, *, address: str | None, say: Callable[[str], None],
                warm: dict[str, Any] | None = None) -> Iterator[dict[str, float]]:
    """Join `address`, or start a local cluster for the study's trials; shut down what it started.

    Yields the Ray resources each trial asks for. A local cluster has one CPU slot per concurrent
    trial (each trial still runs `resources.cpu` threads): Ray starts one idle worker per CPU, and
    each of those imports the training stack as it starts (`search._ray_preload`, told the model
    and task by `warm`), so exactly the workers the trials will use are warmed, and Tune's trial
    actors are placed on them.
    """
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(cfg.budget.concurrency))
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report, nothing sent anywhere
    import ray

    per_trial = {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu}
    if ray.is_initialized():
        yield per_trial
        return
    started = time.time()
    if address:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    else:
        system: dict[str, Any] = {}
        if warm:
            os.environ["SFTUNE_WARM"] = json.dumps(warm)
            system["preload_python_modules"] = ["search._ray_preload"]
            _actors_on_idle_workers()
        per_trial = {"cpu": 1, "gpu": cfg.resources.gpu}
        ray.init(num_cpus=cfg.budget.concurrency, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR", _system_config=system)
    resources = ray.cluster_resources()
    say(f"ray: {'joined ' + address if address else 'started a local cluster'} in {time.time() - started:.1f}s "
        + (f"({resources.get('CPU', 0):g} CPUs, " if address else f"({cfg.budget.concurrency} trial slots, ")
        + f"{resources.get('GPU', 0):g} GPUs)")
    try:
        yield per_trial
    finally:
        ray.shutdown()
        os.environ.pop("SFTUNE_WARM", None)


def _actors_on_idle_workers() -> None:
    """Let Tune's trial actors use the cluster's started (and warmed) idle workers.

    Tune gives every trial actor a runtime_env of environment variables (PL_DISABLE_FORK=1 for
    PyTorch Lightning), and Ray never places an actor with a runtime_env on an idle worker started
    without one: each trial's first actor would start a fresh Python process and import everything
    again. The variable is set in this process instead, before the cluster starts, so the workers
    inherit it; Tune's actors then carry no variables of their own. (Variables Tune passes on from
    this process's environment, such as AWS credentials, still go through the runtime_env.)
    """
    os.environ.setdefault("PL_DISABLE_FORK", "1")
    try:
        from ray.tune.execution import class_cache

        class_cache.DEFAULT_ENV_VARS.pop("PL_DISABLE_FORK", None)
    except (ImportError, AttributeError):  # another Ray layout: trials start fresh workers, as before
        pass


def run_trials(cfg: StudyConfig, study: optuna.Study, *, say: Callable[[str], None],
               resources: dict[str, float] | None = None, warm: dict[str, Any] | None = None) -> RunState:
    """Run the study's remaining trials through Ray Tune (inside `ray_cluster`); returns what happened.

    `resources`: what each trial asks Ray for (from `ray_cluster`; default the study's own);
    `warm` (model location and task) is what each new worker imports before its first trial.
    """
    from ray import tune

    state = RunState(cfg=cfg, study=study, say=say, done_before=finished(study), warm=dict(warm or {}))
    try:
        resourced = tune.with_resources(trainable, resources or {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu})
        tuner = tune.Tuner(
            resourced,
            param_space={},
            tune_config=tune.TuneConfig(
                search_alg=_make_searcher(state),
                scheduler=_make_scheduler(state),
                num_samples=-1,
                max_concurrent_trials=cfg.budget.concurrency,
                time_budget_s=cfg.budget.timeout,
                reuse_actors=True,
                trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
                trial_name_creator=lambda t: f"trial_{t.trial_id}",
            ),
            run_config=tune.RunConfig(
                name="ray",
                storage_path=str(cfg.output_dir),
                verbose=0,
                callbacks=[_make_callback(state)],
                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False),
            ),
        )
        tuner.fit()
    finally:
        # Anything Tune left unreported (a timeout, Ctrl-C) must not stay RUNNING in the database.
        for tune_id, trial in list(state.trials.items()):
            trial.set_user_attr("error", "stopped when the run ended (budget.timeout or interrupt); its params "
                                "are queued for the next run")
            tell(state, trial, trial_state=TrialState.FAIL)
            requeue(study, trial)
            state.failed += 1
            state.trials.pop(tune_id, None)
    return state
