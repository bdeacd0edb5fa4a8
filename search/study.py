"""The Optuna study behind a study file: storage, sampler, pruner, directions, resume and recovery."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import optuna
from optuna.trial import TrialState

from search.config import PRUNERS, SAMPLERS, StudyConfig
from trainer import ConfigError, Problem

optuna.logging.set_verbosity(optuna.logging.WARNING)

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
HEARTBEAT_ATTR = "sftune_heartbeat"
DRIVER_ATTR = "sftune_driver"
STALE_AFTER_S = 120.0
"""A RUNNING trial of another machine's driver is stale when its heartbeat is older than this."""


def open_storage(url: str, source: str = "") -> optuna.storages.BaseStorage:
    """Open (and create if needed) the study database; a URL that cannot be opened is a ConfigError."""
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))
    except Exception as exc:  # noqa: BLE001 - any failure to open is the user's URL
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(Problem(source, "storage", f"cannot open study storage {url!r}: {msg}")) from None


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True}


def build_sampler(cfg: StudyConfig) -> optuna.samplers.BaseSampler:
    options = {k: v for k, v in cfg.sampler.items() if k != "name"}
    cls = getattr(optuna.samplers, SAMPLERS[cfg.sampler["name"]])
    if cfg.sampler["name"] == "grid":
        options["search_space"] = {p.name: p.grid_values() for p in cfg.space.params}
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(Problem(str(cfg.path), "sampler", f"{cfg.sampler['name']}: {exc}")) from None


def build_pruner(cfg: StudyConfig) -> optuna.pruners.BasePruner:
    if cfg.multi_objective:
        return optuna.pruners.NopPruner()
    options = {k: v for k, v in cfg.pruner.items() if k != "name"}
    cls = getattr(optuna.pruners, PRUNERS[cfg.pruner["name"]])
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(Problem(str(cfg.path), "pruner", f"{cfg.pruner['name']}: {exc}")) from None


def study_exists(storage: optuna.storages.BaseStorage, name: str) -> bool:
    return any(s.study_name == name for s in storage.get_all_studies())


def open_study(cfg: StudyConfig, *, create: bool = True) -> optuna.Study:
    """Create the study or load it to resume; the directions of an existing study must match."""
    storage = open_storage(cfg.storage, str(cfg.path))
    sampler, pruner = build_sampler(cfg), build_pruner(cfg)
    if study_exists(storage, cfg.name):
        study = optuna.load_study(study_name=cfg.name, storage=storage, sampler=sampler, pruner=pruner)
        existing = [d.name.lower() for d in study.directions]
        if existing != cfg.directions:
            raise ConfigError(Problem(str(cfg.path), "objective", f"study {cfg.name!r} in {cfg.storage} was created "
                                      f"with direction(s) {existing}, but this file asks for {cfg.directions}; "
                                      "use another study name to start afresh"))
        stored = study.user_attrs.get("objective_metrics")
        if stored and stored != cfg.metrics:
            raise ConfigError(Problem(str(cfg.path), "objective.metric", f"study {cfg.name!r} optimizes "
                                      f"{stored}, but this file asks for {cfg.metrics}"))
        return study
    if not create:
        raise ConfigError(Problem(str(cfg.path), "name", f"no study named {cfg.name!r} in {cfg.storage} yet; "
                                  "run `sftune run` first"))
    study = optuna.create_study(study_name=cfg.name, storage=storage, sampler=sampler, pruner=pruner,
                                directions=cfg.directions)
    study.set_user_attr("objective_metrics", cfg.metrics)
    return study


def load_existing(cfg: StudyConfig) -> optuna.Study:
    storage = open_storage(cfg.storage, str(cfg.path))
    if not study_exists(storage, cfg.name):
        raise ConfigError(Problem(str(cfg.path), "name", f"no study named {cfg.name!r} in {cfg.storage} yet; "
                                  "run `sftune run` first"))
    return optuna.load_study(study_name=cfg.name, storage=storage)


def driver_identity() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}


_IDENTITY = driver_identity()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_stale_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Mark RUNNING trials left by a dead driver FAIL and queue their params to be tried again."""
    recovered = []
    host = socket.gethostname()
    now = time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        if trial.state == TrialState.WAITING:
            continue
        driver = trial.system_attrs.get(DRIVER_ATTR) or {}
        beat = trial.system_attrs.get(HEARTBEAT_ATTR, 0.0)
        if driver.get("host") == host:
            stale = driver.get("pid") != os.getpid() and not _pid_alive(int(driver.get("pid", -1)))
        else:
            stale = now - float(beat or 0.0) > STALE_AFTER_S
        if not stale:
            continue
        storage = study._storage
        storage.set_trial_system_attr(trial._trial_id, "fail_reason", "driver died while the trial was running")
        storage.set_trial_user_attr(trial._trial_id, "error", "the driver running this trial died; its params "
                                    "were queued to run again")
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        requeue(study, trial)
        recovered.append(trial)
    return recovered


def requeue(study: optuna.Study, trial: optuna.Trial | optuna.trial.FrozenTrial) -> None:
    """Queue a trial's params to be tried again by the next ask (a trial that could not finish)."""
    if trial.params:
        retries = int(trial.user_attrs.get("retries", 0)) + 1
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number, "retries": retries},
                            skip_if_exists=False)


def _trial_id(study: optuna.Study, number: int) -> int:
    storage = study._storage
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)


def record_heartbeats(study: optuna.Study, numbers: Any) -> None:
    """Stamp this driver's running trials as alive."""
    identity = _IDENTITY
    for number in numbers:
        trial_id = _trial_id(study, number)
        study._storage.set_trial_system_attr(trial_id, DRIVER_ATTR, identity)
        study._storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())


def fail_stale(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """RUNNING trials of drivers that died: FAIL, their params queued again."""
    return recover_stale_trials(study)


def storage_problem(exc: BaseException) -> str | None:
    """One sentence for a failure of the study's database (None: not a storage failure)."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    if isinstance(exc, (OperationalError, DBAPIError)):
        return str(getattr(exc, "orig", exc) or exc).splitlines()[0]
    return None


def rdb_storage(study: optuna.Study) -> optuna.storages.RDBStorage:
    """The RDB storage under Optuna's cache wrapper; raises TypeError for other storages."""
    storage = getattr(study._storage, "_backend", study._storage)
    if not isinstance(storage, optuna.storages.RDBStorage):
        raise TypeError("not an RDB storage")
    return storage


def count_states(study: optuna.Study) -> dict[str, int]:
    from sqlalchemy import func, select

    try:  # one grouped query instead of loading every trial: fast on big studies
        from optuna.storages._rdb import models

        with rdb_storage(study).scoped_session() as session:  # type: ignore[attr-defined]
            study_id = study._study_id
            rows = session.execute(
                select(models.TrialModel.state, func.count()).where(models.TrialModel.study_id == study_id)
                .group_by(models.TrialModel.state)
            ).all()
        out = {s: 0 for s in STATES}
        for state, n in rows:
            out[state.name] = n
        return out
    except Exception:  # noqa: BLE001 - another storage: count the slow way
        out = {s: 0 for s in STATES}
        for t in study.get_trials(deepcopy=False):
            out[t.state.name] += 1
        return out


def finished(study: optuna.Study) -> int:
    c = count_states(study)
    return c["COMPLETE"] + c["PRUNED"]

