"""`sftune run`: check everything, open the study, recover a dead driver's trials, run the rest."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import optuna

from search.config import StudyConfig, load_study, writable_problems
from search.data_report import data_report, short_form
from search.progress import LiveProgress, Progress, make_progress
from search.pruners import MO_PRUNERS
from search.report import next_hints, render_table, summary
from search.storage import StorageFailure, base_changes, close_study, fail_stale, finished, sqlite_path, storage_problem
from search.study import open_study
from search.testset import evaluate_best_on_test, has_test_split
from search.tracking import check_tracking, track
from search.warm_start import Carried, enqueue_warm_start, plan_warm_start
from trainer import ConfigError, Prepared, prepare_soon

EXIT_INTERRUPTED = 130


def run_study(
    path: str,
    overrides: list[str],
    *,
    n_trials: int | None,
    storage: str | None,
    address: str | None,
    say: Callable[[str], None],
    allow_base_change: bool = False,
) -> int:
    opened: list[optuna.Study] = []
    try:
        return _run_study(
            path,
            overrides,
            n_trials=n_trials,
            storage=storage,
            address=address,
            say=say,
            allow_base_change=allow_base_change,
            opened=opened,
        )
    finally:
        for study in opened:
            close_study(study)  # a SQLite study's log is folded into its file: the file alone is the study


def _run_study(
    path: str,
    overrides: list[str],
    *,
    n_trials: int | None,
    storage: str | None,
    address: str | None,
    say: Callable[[str], None],
    allow_base_change: bool,
    opened: list[optuna.Study],
) -> int:
    cfg: StudyConfig = load_study(path, overrides, n_trials=n_trials, storage=storage)
    unwritable = writable_problems(cfg)  # before Ray starts and before the study is created
    if unwritable:
        raise ConfigError(unwritable)
    carried = plan_warm_start(cfg)  # the earlier studies are read now: a bad one ends the run before anything
    check_tracking(cfg)  # an MLflow server that does not answer ends the run here (--no-tracking runs without)
    for note in cfg.notes:
        say(note)
    # Model and data are checked now, before Ray starts. Then three things overlap: tokenizing
    # (cached for every trial), opening the study, and starting Ray, whose workers import the
    # training stack as they start. A bad input still ends the run before any trial.
    base = cfg.base_config
    pending = prepare_soon(base, source=str(cfg.path), cache_dir=cfg.cache_dir, say=say)
    new_study = _is_new_sqlite(cfg.storage)
    with ThreadPoolExecutor(1, thread_name_prefix="sftune-open") as pool:
        opening: Future = pool.submit(_open, cfg, say, allow_base_change, opened, carried)
        # An existing study may have nothing left to run: know that before starting Ray.
        if not new_study and cfg.budget.n_trials - opening.result()[1] <= 0:
            pending.result()
            say(
                f"study {cfg.name} · {cfg.storage}: nothing to run: the study already has its n_trials "
                "finished trials (raise budget.n_trials or pass --n-trials to add more)"
            )
            gave_up = False
            study = opening.result()[0]
        else:
            from search._ray import ray_cluster, run_trials

            warm = {"location": pending.location, "task": base.task}
            progress = make_progress(say, cfg.metrics, space=cfg.space, slots=cfg.budget.concurrency)
            try:
                with ray_cluster(cfg, address=address, say=progress.message, warm=warm) as per_trial:
                    _tell_slots(progress, cfg, per_trial)
                    study, done = opening.result()
                    progress.message(_header(cfg, done))
                    prepared = pending.result()  # a tokenizing error ends the run here, before any trial
                    _describe_data(cfg, study, prepared, progress.message)
                    progress = track(progress, cfg, study)  # MLflow / W&B beside the study (search/tracking.py)
                    driver = run_trials(
                        cfg,
                        study,
                        progress=progress,
                        resources=per_trial,
                        prepared=prepared,
                        cluster_died=lambda reason: _cluster_died(reason, progress, say, opened),
                    )
            except KeyboardInterrupt:
                progress.close()
                say(
                    "interrupted: running trials were marked FAIL and their params queued; run the same command "
                    "again to finish the study"
                )
                return EXIT_INTERRUPTED
            progress.close()
            if driver.stop_reason:
                say(f"stopped: {driver.stop_reason}")
            if driver.fatal:
                say(f"error: the study's storage failed during the run: {driver.fatal}")
                return 1
            gave_up = driver.gave_up
            if has_test_split(base) and not gave_up and finished(study) >= cfg.budget.n_trials:
                evaluate_best_on_test(study, cfg, top=1, say=say)  # once, when the study is complete
    say("")
    say(render_table(summary(study, cfg)))
    say("\n" + next_hints(path, overrides, storage))
    return 1 if gave_up else 0


def _cluster_died(reason: str, progress: Progress, say: Callable[[str], None], opened: list[optuna.Study]) -> None:
    """The local cluster died mid-study and its running trials are failed and queued (`watch_cluster`): one
    `error:` line, the study's database closed, exit 1 at once (Ray would end this process abruptly anyway)."""
    progress.close()
    say(
        f"error: {reason}: its running trials were marked FAIL and their params queued; run the same command "
        "again to finish the study"
    )
    for study in opened:
        close_study(study)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def _describe_data(cfg: StudyConfig, study: optuna.Study, prepared: Prepared, say: Callable[[str], None]) -> None:
    """The data report's short form in the header, and the whole report on the study (the dashboard shows it)."""
    report = data_report(cfg.base_config, source=str(cfg.path), prepared=prepared)
    say(short_form(report))
    say(
        f"  {len(prepared.train)} train / {len(prepared.validation)} validation examples, tokenized once for all trials"
    )
    try:
        study.set_user_attr("data_report", report)
    except Exception as exc:  # a storage failure here ends the run as any other would
        problem = storage_problem(exc)
        if problem is None:
            raise
        raise StorageFailure(problem) from None


def _tell_slots(progress: Progress, cfg: StudyConfig, per_trial: dict[str, float]) -> None:
    """How many trials the cluster runs at once (fewer than `concurrency` on a small cluster): the live view
    says "waiting for a free slot" of a trial beyond them."""
    import ray

    if not isinstance(progress, LiveProgress):
        return
    have = ray.cluster_resources()
    fits = [int(have[key.upper()] // need) for key, need in per_trial.items() if need and key.upper() in have]
    progress.slots = max(1, min([cfg.budget.concurrency, *fits]))


def _header(cfg: StudyConfig, done: int) -> str:
    base = cfg.base_config
    return (
        f"study {cfg.name} · {cfg.storage}\n"
        f"  {base.task} · model {base.model} · objective "
        + ", ".join(f"{m} ({d})" for m, d in zip(cfg.metrics, cfg.directions, strict=True))
        + f"\n  sampler {cfg.sampler['name']} · pruner {cfg.pruner['name']} · {done} of {cfg.budget.n_trials} "
        f"trials already finished · {cfg.budget.concurrency} at a time, {cfg.resources.cpu:g} cpu"
        + (f" {cfg.resources.gpu:g} gpu" if cfg.resources.gpu else "")
        + " each"
    )


def _open(
    cfg: StudyConfig,
    say: Callable[[str], None],
    allow_base_change: bool,
    opened: list[optuna.Study],
    carried: list[Carried] | None = None,
) -> tuple[optuna.Study, int]:
    """Open (or create) the study, queue warm-start trials and recover a dead driver's trials; returns it and its
    finished count."""
    study = open_study(cfg, allow_base_change=allow_base_change)
    opened.append(study)
    enqueue_warm_start(study, carried or [], say)
    if allow_base_change:
        for change in base_changes(study, cfg):
            say(f"note: continuing with a changed base config (--allow-base-change): {change}")
    if cfg.multi_objective and cfg.pruner.get("name") not in ("none", *MO_PRUNERS):
        say(
            f"note: pruner {cfg.pruner['name']!r} is not used: Optuna prunes single-objective studies only "
            "(mo-successive-halving prunes this one)"
        )
    recovered = fail_stale(study)  # later ones are recovered by the driver's loop as their grace ends
    for trial in recovered:
        say(f"trial {trial.number} was left RUNNING by a driver that died: marked FAIL, its params queued again")
    return study, finished(study)


def _is_new_sqlite(url: str) -> bool:
    """A SQLite file not created yet: a new study, with all its trials to run."""
    path = sqlite_path(url)
    return path is not None and not path.exists()
