"""`sftune run`: check everything, open the study, recover a dead driver's trials, run the rest."""

from __future__ import annotations

from typing import Callable

from search.config import StudyConfig, load_study
from search.report import render_table, summary
from search.study import finished, open_study, recover_stale_trials
from trainer import prepare


def run_study(path: str, overrides: list[str], *, n_trials: int | None, storage: str | None,
              address: str | None, say: Callable[[str], None]) -> int:
    cfg: StudyConfig = load_study(path, overrides, n_trials=n_trials, storage=storage)
    # Data and model are checked before Ray starts; the tokenized data is cached for every trial.
    prepared = prepare(cfg.base_config, source=str(cfg.path), cache_dir=cfg.cache_dir)
    study = open_study(cfg)
    if cfg.multi_objective and cfg.pruner.get("name") != "none":
        say(f"note: pruner {cfg.pruner['name']!r} is not used: Optuna prunes single-objective studies only")
    for trial in recover_stale_trials(study):
        say(f"trial {trial.number} was left RUNNING by a driver that died: marked FAIL, its params queued again")
    done = finished(study)
    remaining = cfg.budget.n_trials - done
    say(f"study {cfg.name} · {cfg.storage}\n"
        f"  {cfg.base_config.task} · model {cfg.base_config.model} · {len(prepared.train)} train / "
        f"{len(prepared.validation)} validation examples · objective "
        + ", ".join(f"{m} ({d})" for m, d in zip(cfg.metrics, cfg.directions))
        + f"\n  sampler {cfg.sampler['name']} · pruner {cfg.pruner['name']} · {done} of {cfg.budget.n_trials} "
        f"trials already finished · {cfg.budget.concurrency} at a time, {cfg.resources.cpu:g} cpu"
        + (f" {cfg.resources.gpu:g} gpu" if cfg.resources.gpu else "") + " each")
    if remaining > 0:
        from search._ray import run_trials

        state = run_trials(cfg, study, address=address, say=say)
        if state.stop_reason:
            say(f"stopped: {state.stop_reason}")
        gave_up = state.gave_up
    else:
        gave_up = False
        say("nothing to run: the study already has its n_trials finished trials (raise budget.n_trials or "
            "pass --n-trials to add more)")
    say("")
    say(render_table(summary(study, cfg)))
    say(f"\nnext: sftune status {path} · sftune dashboard {path} · sftune export {path} --out best.yaml")
    return 1 if gave_up else 0
