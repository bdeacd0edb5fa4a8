"""Running a study's trials through Ray Tune: the Tuner over the driver's adapter.

`search._driver` asks, judges and tells (no Ray); `search._ray.shells` wraps it as Tune's searcher,
scheduler and callback; `search._ray.worker` is what each trial runs; `search._ray.cluster` starts or
joins the cluster. The driver is the only writer to the study.
"""

from __future__ import annotations

import os
from typing import Any

import optuna

from search._driver import Driver
from search.config import StudyConfig
from search.progress import Progress


def run_trials(cfg: StudyConfig, study: optuna.Study, *, progress: Progress,
               resources: dict[str, float] | None = None, prepared: Any = None, job: str | None = None) -> Driver:
    """Run the study's remaining trials through Ray Tune (inside `ray_cluster`); returns what happened.

    `resources`: what each trial asks Ray for (from `ray_cluster`; default as on a joined cluster,
    `search._ray.resources.joined_request`);
    `prepared`: the study's tokenized data, sent once through Ray's object store to every trial;
    `job`: a `module:function` stub run instead of the fine-tuning job (benchmarks of the driver).
    """
    import ray
    from ray import tune

    from search._ray.resources import joined_request
    from search._ray.shells import DriverTick, OptunaPruningScheduler, OptunaSearcher
    from search._ray.worker import trainable

    driver = Driver(cfg=cfg, study=study, progress=progress, job=job, node=ray.get_runtime_context().get_node_id())
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C interrupts fit(): exit 130, not 0
    beating = driver.heartbeats()
    try:
        if cfg.resources.workers > 1:  # each trial a Ray Train run of several ranks (`search._ray.ranks`)
            from search._ray.ranks import runnable as over_ranks

            resourced = over_ranks(cfg, prepared, resources or joined_request(cfg))
        else:
            runnable = tune.with_parameters(trainable, prepared=prepared) if prepared is not None else trainable
            resourced = tune.with_resources(runnable, resources or joined_request(cfg))
        tuner = tune.Tuner(
            resourced,
            param_space={},
            tune_config=tune.TuneConfig(
                search_alg=OptunaSearcher(driver),
                scheduler=OptunaPruningScheduler(driver),
                num_samples=-1,
                max_concurrent_trials=cfg.budget.concurrency,
                time_budget_s=cfg.budget.timeout,
                reuse_actors=cfg.resources.workers == 1,  # a pruned multi-worker trial's actor must end
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
        driver.finish()
    return driver
