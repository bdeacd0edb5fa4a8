"""The Optuna study behind a study file: create or resume it (every check done before any trial), and its
sampler and pruner.

`open_study(cfg, create=True, allow_base_change=False)` creates or resumes the study, after checking its
directions and metrics, its base config, a space Optuna could not mix with its trials and a corrupted or
read-only database (ConfigError, exit 2); `load_existing(cfg)` loads one for status/export/plot. The
database itself (faults and retries, heartbeats and stale trials, the trial cache, counting) is
`search.storage`.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    check_distribution_compatibility,
    json_to_distribution,
)

from search.config import StudyConfig, pruner_class, sampler_class
from search.space import Param
from search.storage import (
    BASE_ATTR,
    ReadLessOften,
    SftuneStorage,
    StorageFailure,
    base_changes,
    base_record,
    open_storage,
    rdb_models,
    rdb_storage,
    retried,
    safe_url,
    sqlite_path,
    storage_problem,
    study_id,
)
from trainer import ConfigError, Problem

# ---------------------------------------------------------------------------------------------------
# Samplers, pruners


def sampler_seed(cfg: StudyConfig, *, created: bool, n_trials: int) -> int | None:
    """The configured seed on a study this driver created; on a resumed or shared one a seed derived from
    it, the study's trials and this driver, so no driver replays a sequence the study already holds.
    (QMC keeps the configured seed: Optuna's QMC continues one shared sequence from the study itself.)"""
    seed = cfg.sampler.get("seed")
    if seed is None or created or cfg.sampler["name"] == "qmc":
        return seed
    token = f"{seed}:{n_trials}:{uuid.uuid4().hex}:{os.getpid()}"
    return int.from_bytes(hashlib.sha256(token.encode()).digest()[:4], "big")


def build_sampler(cfg: StudyConfig, seed: Any = "configured") -> optuna.samplers.BaseSampler:
    options = {k: v for k, v in cfg.sampler.items() if k != "name"}
    if seed != "configured" and "seed" in options:
        options["seed"] = seed
    cls = sampler_class(cfg.sampler["name"])
    if cfg.sampler["name"] == "grid":
        options["search_space"] = {p.name: p.grid_values() for p in cfg.space.params}
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(Problem(str(cfg.path), "sampler", f"{cfg.sampler['name']}: {exc}")) from None


def training_steps(cfg: StudyConfig) -> int | None:
    """The step every trial's training ends at, when the study fixes it (`train.max_steps` neither searched nor
    replaced by `train.epochs`); None when it varies or is not known before training."""
    train = cfg.base_config.train if cfg.base_config is not None else None
    searched = cfg.space.python is not None or any(
        key in cfg.space for key in ("train.max_steps", "train.epochs", "train.stop_at_step")
    )
    if train is None or train.epochs is not None or searched:
        return None
    return int(min(train.max_steps, train.stop_at_step or train.max_steps))


def build_pruner(cfg: StudyConfig) -> optuna.pruners.BasePruner:
    if cfg.multi_objective:
        return optuna.pruners.NopPruner()
    options = {k: v for k, v in cfg.pruner.items() if k != "name"}
    cls = pruner_class(cfg.pruner["name"])
    if cfg.pruner["name"] == "learning-curve" and options.get("max_resource") is None:
        options["max_resource"] = training_steps(cfg)
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(Problem(str(cfg.path), "pruner", f"{cfg.pruner['name']}: {exc}")) from None


# ---------------------------------------------------------------------------------------------------
# The space against the stored trials


def param_distribution(param: Param) -> BaseDistribution:
    """The Optuna distribution a space parameter samples from (as `Param.sample` suggests it)."""
    if param.type == "float":
        low, high = param.bounds()
        return FloatDistribution(low, high, log=param.log, step=param.step)
    if param.type == "int":
        low, high = param.bounds()
        return IntDistribution(int(low), int(high), log=param.log, step=int(param.step or 1))
    return CategoricalDistribution(param.choices)


def stored_distributions(study: optuna.Study) -> dict[str, list[BaseDistribution]]:
    """Each param name's distinct distributions among the study's trials (one query on an RDB storage)."""
    out: dict[str, list[BaseDistribution]] = {}
    try:
        models = rdb_models()
        from sqlalchemy import select

        storage = rdb_storage(study)
        sid = study_id(study)

        def query() -> list[Any]:
            with storage.scoped_session() as session:
                return list(
                    session.execute(
                        select(models.TrialParamModel.param_name, models.TrialParamModel.distribution_json)
                        .distinct()
                        .join(models.TrialModel, models.TrialModel.trial_id == models.TrialParamModel.trial_id)
                        .where(models.TrialModel.study_id == sid)
                    ).all()
                )

        for name, dist in retried(storage, query):
            out.setdefault(name, []).append(json_to_distribution(dist))
    except TypeError:  # not an RDB storage
        for t in study.get_trials(deepcopy=False):
            for name, dist in t.distributions.items():
                if dist not in out.setdefault(name, []):
                    out[name].append(dist)
    return out


def space_conflicts(study: optuna.Study, cfg: StudyConfig) -> list[Problem]:
    """Space parameters Optuna could not mix with the stored trials (another kind, log scale or choices)."""
    stored = stored_distributions(study)
    problems = []
    for param in cfg.space.params:
        new = param_distribution(param)
        for old in stored.get(param.name, []):
            try:
                check_distribution_compatibility(old, new)
            except ValueError as exc:
                problems.append(
                    Problem(
                        cfg.space.source or str(cfg.path),
                        param.name,
                        f"the study's trials sampled it from {old}, but the space now gives {new}: "
                        f"{exc} Restore it, or use another study name",
                    )
                )
                break
    return problems


# ---------------------------------------------------------------------------------------------------
# Opening a study


def _study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    return [s.study_name for s in storage.get_all_studies()]


def study_exists(storage: optuna.storages.BaseStorage, name: str) -> bool:
    return name in _study_names(storage)


def _check_readable(storage: SftuneStorage, url: str, source: str) -> None:
    """A SQLite file is checked whole (PRAGMA quick_check) before use: corruption in the middle of the
    file is found now, not as a failed write mid-run."""
    if sqlite_path(url) is None:
        return
    from sqlalchemy import text

    try:
        with storage.engine.connect() as conn:
            result = conn.execute(text("PRAGMA quick_check(1)")).scalar()
    except Exception as exc:  # noqa: BLE001 - any failure to check is said as the database's problem
        result = storage_problem(exc) or str(exc)
    if result != "ok":
        raise ConfigError(
            Problem(
                source,
                "storage",
                f"study storage {safe_url(url)!r}: the study database file "
                f"is corrupted ({result}); restore it from a copy, or use another storage",
            )
        )


def _check_writable(storage: SftuneStorage, sid: int, url: str, source: str) -> None:
    """A harmless write (this driver's last open) before any trial: a read-only database fails here."""
    try:
        storage.set_study_system_attr(sid, "sftune_last_open", {"time": time.time(), "pid": os.getpid()})
    except StorageFailure as exc:
        raise ConfigError(Problem(source, "storage", str(exc))) from None


def open_study(cfg: StudyConfig, *, create: bool = True, allow_base_change: bool = False) -> optuna.Study:
    """Create the study, or load it to resume (the same name continues), after checking everything that
    would make its trials wrong: directions and metrics, the base config it was created with (unless
    `allow_base_change`), a space Optuna could not mix with its trials, a corrupted or read-only database.
    Every problem is a ConfigError raised before anything is written. The sampler's seed is the configured
    one only on a study this call created (see `sampler_seed`)."""
    source = str(cfg.path)
    storage = open_storage(cfg.storage, source)
    try:
        _check_readable(storage, cfg.storage, source)
        created = False
        if not study_exists(storage, cfg.name):
            if not create:
                raise ConfigError(
                    Problem(source, "name", f"no study named {cfg.name!r} in {cfg.storage} yet; run `sftune run` first")
                )
            try:
                directions = [optuna.study.StudyDirection[d.upper()] for d in cfg.directions]
                storage.create_new_study(directions, cfg.name)
                created = True
            except optuna.exceptions.DuplicatedStudyError:
                pass  # another driver created it at the same moment: join it
        sid = storage.get_study_id_from_name(cfg.name)
        probe = optuna.load_study(study_name=cfg.name, storage=storage)
        if created:
            probe.set_user_attr("objective_metrics", cfg.metrics)
            probe.set_user_attr(BASE_ATTR, base_record(cfg))
        else:
            _check_existing(probe, cfg, allow_base_change)
        _check_writable(storage, sid, cfg.storage, source)
        if not created and BASE_ATTR not in probe.user_attrs:  # a study from before base checks: adopt this one
            probe.set_user_attr(BASE_ATTR, base_record(cfg))
        n = storage.get_n_trials(sid) if cfg.sampler.get("seed") is not None else 0
        seed = sampler_seed(cfg, created=created, n_trials=n)
        return optuna.load_study(
            study_name=cfg.name,
            storage=ReadLessOften(storage),
            sampler=build_sampler(cfg, seed),
            pruner=build_pruner(cfg),
        )
    except StorageFailure as exc:
        raise ConfigError(Problem(source, "storage", str(exc))) from None


def _check_existing(study: optuna.Study, cfg: StudyConfig, allow_base_change: bool) -> None:
    source = str(cfg.path)
    existing = [d.name.lower() for d in study.directions]
    if existing != cfg.directions:
        raise ConfigError(
            Problem(
                source,
                "objective",
                f"study {cfg.name!r} in {cfg.storage} was created "
                f"with direction(s) {existing}, but this file asks for {cfg.directions}; "
                "use another study name to start afresh",
            )
        )
    stored = study.user_attrs.get("objective_metrics")
    if stored and stored != cfg.metrics:
        raise ConfigError(
            Problem(
                source,
                "objective.metric",
                f"study {cfg.name!r} optimizes {stored}, but this file asks for {cfg.metrics}",
            )
        )
    problems = space_conflicts(study, cfg)
    changes = [] if allow_base_change else base_changes(study, cfg)
    if changes:
        problems.append(
            Problem(
                source,
                "base",
                f"study {cfg.name!r} was created with another base config, so "
                "its trials would not compare with new ones: "
                + "; ".join(changes)
                + ". Use another study name, restore the base config, or pass "
                "--allow-base-change to continue on purpose",
            )
        )
    if problems:
        raise ConfigError(problems)


def load_existing(cfg: StudyConfig) -> optuna.Study:
    """Load a study that must exist (status, export, plot, dashboard); read-only."""
    storage = open_storage(cfg.storage, str(cfg.path))
    try:
        if not study_exists(storage, cfg.name):
            raise ConfigError(
                Problem(
                    str(cfg.path), "name", f"no study named {cfg.name!r} in {cfg.storage} yet; run `sftune run` first"
                )
            )
        return optuna.load_study(study_name=cfg.name, storage=storage)
    except StorageFailure as exc:
        raise ConfigError(Problem(str(cfg.path), "storage", str(exc))) from None
