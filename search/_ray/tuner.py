"""Running a study's trials through Ray Tune: the Tuner over the driver's adapter.

`search._driver` asks, judges and tells (no Ray); `search._ray.shells` wraps it as Tune's searcher,
scheduler and callback; `search._ray.worker` is what each trial runs; `search._ray.cluster` starts or
joins the cluster. The driver is the only writer to the study.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Any

import optuna

from search._driver import Driver
from search.config import StudyConfig
from search.progress import Progress

WATCH_S = 0.5
"""How often the driver checks that the local cluster it started still lives (`cluster_gone`)."""


def _exit_now(reason: str) -> None:
    print(f"error: {reason}", file=sys.stderr, flush=True)
    os._exit(1)


def watch_cluster(driver: Driver, ended: Callable[[str], None]) -> threading.Event:
    """Check every `WATCH_S` that the local cluster lives; when it has died (its raylet or GCS killed),
    stop the driver taking Tune's calls, FAIL each running trial with the reason and queue its params,
    then `ended(reason)`, which must end the process: Ray ends a driver whose cluster is gone abruptly
    (at its next object-store access), so nothing is left to Tune. Set the returned event to stop."""
    from search._ray.cluster import cluster_gone

    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(WATCH_S):
            why = cluster_gone()
            if why is not None:
                reason = f"the local Ray cluster died ({why})"
                driver.abandon_all(reason)
                ended(reason)
                return

    threading.Thread(target=watch, name="sftune-cluster-watch", daemon=True).start()
    return stop


def run_trials(
    cfg: StudyConfig,
    study: optuna.Study,
    *,
    progress: Progress,
    resources: dict[str, float] | None = None,
    prepared: Any = None,
    job: str | None = None,
    cluster_died: Callable[[str], None] = _exit_now,
) -> Driver:
    """Run the study's remaining trials through Ray Tune (inside `ray_cluster`); returns what happened.

    `resources`: what each trial asks Ray for (from `ray_cluster`; default as on a joined cluster,
    `search._ray.resources.joined_request`);
    `prepared`: the study's tokenized data, sent once through Ray's object store to every trial;
    `job`: a `module:function` stub run instead of the fine-tuning job (benchmarks of the driver);
    `cluster_died(reason)`: called (on a thread of its own) once a local cluster has died and the running
    trials are failed and queued; it must end the process (default: one `error:` line, exit 1).
    """
    import ray
    from ray import tune

    from search._ray.cluster import cluster_gone
    from search._ray.resources import joined_request
    from search._ray.shells import DriverTick, OptunaPruningScheduler, OptunaSearcher
    from search._ray.worker import trainable

    driver = Driver(
        cfg=cfg,
        study=study,
        progress=progress,
        job=job,
        node=ray.get_runtime_context().get_node_id(),
        cluster_gone=cluster_gone,
    )
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C interrupts fit(): exit 130, not 0
    beating = driver.heartbeats()
    watching = watch_cluster(driver, cluster_died)
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
        watching.set()
        beating.set()
        # Anything Tune left unreported (a timeout) must not stay RUNNING in the database.
        if driver.trials:
            timeout = cfg.budget.timeout
            driver.abandon(f"stopped by budget.timeout ({timeout:g} s)" if timeout else "stopped when the run ended")
        driver.finish()
    return driver
