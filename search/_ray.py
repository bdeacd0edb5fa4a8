"""Running a study's trials through Ray Tune: the cluster, and the Tuner over the driver's adapter.

`search._driver` asks, judges and tells (no Ray); `search._ray_search` wraps it as Tune's searcher,
scheduler and callback; `search._ray_worker` is what each trial runs. The driver is the only writer
to the study.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import optuna

from search._driver import Driver
from search.config import StudyConfig
from search.progress import Progress


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


def run_trials(cfg: StudyConfig, study: optuna.Study, *, progress: Progress,
               resources: dict[str, float] | None = None, prepared: Any = None, job: str | None = None) -> Driver:
    """Run the study's remaining trials through Ray Tune (inside `ray_cluster`); returns what happened.

    `resources`: what each trial asks Ray for (from `ray_cluster`; default the study's own);
    `prepared`: the study's tokenized data, sent once through Ray's object store to every trial;
    `job`: a `module:function` stub run instead of the fine-tuning job (benchmarks of the driver).
    """
    from ray import tune

    from search._ray_search import DriverTick, OptunaPruningScheduler, OptunaSearcher
    from search._ray_worker import trainable

    import ray

    driver = Driver(cfg=cfg, study=study, progress=progress, job=job, node=ray.get_runtime_context().get_node_id())
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C interrupts fit(): exit 130, not 0
    beating = driver.heartbeats()
    try:
        runnable = tune.with_parameters(trainable, prepared=prepared) if prepared is not None else trainable
        resourced = tune.with_resources(runnable, resources or {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu})
        tuner = tune.Tuner(
            resourced,
            param_space={},
            tune_config=tune.TuneConfig(
                search_alg=OptunaSearcher(driver),
                scheduler=OptunaPruningScheduler(driver),
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
                callbacks=[DriverTick(driver)],
                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False),
            ),
        )
        tuner.fit()
    except KeyboardInterrupt:
        driver.abandon("interrupted (Ctrl-C)")
        raise
    finally:
        beating.set()
        # Anything Tune left unreported (a timeout) must not stay RUNNING in the database.
        if driver.trials:
            timeout = cfg.budget.timeout
            driver.abandon(f"stopped by budget.timeout ({timeout:g} s)" if timeout else "stopped when the run ended")
    return driver
