"""The held-out test split of a study: the best trial (or top K) retrained and evaluated on it once."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import optuna

from search.config import StudyConfig
from search.report import ranked
from search.storage import open_storage, rdb_models
from trainer import ConfigError, Problem, TrainConfig, config_from_dict, run_job

TEST_KEYS = ("test", "test_fraction", "split_seed")


def has_test_split(cfg: TrainConfig) -> bool:
    """Whether a train config holds out a test split (`data.test` or `data.test_fraction`)."""
    return bool(cfg.data.test or cfg.data.test_fraction)


def evaluate_best_on_test(
    study: optuna.Study, cfg: StudyConfig, top: int = 1, say: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Retrain the best `top` COMPLETE trials from their stored configs and evaluate each once on the test split.

    Each retraining is `run_job` on the trial's stored `config` (same code path, same threads as the
    trial; a separate `sftune train` of the exported config gives the same numbers). Stores
    `test_metrics` on each trial and, for the best, `test_metrics` and `test_trial` on the study.
    Returns one dict per trial: number, validation values, test metrics, the retrained validation metrics
    (none, after saying so, when the study has no complete trial).
    """
    if top < 1:
        raise ConfigError(Problem("--top", str(top), "must be >= 1"))
    if not has_test_split(cfg.base_config):
        raise ConfigError(
            Problem(
                str(cfg.path),
                "base.data.test",
                "the study's base config holds out no test "
                "split; set data.test (a file) or data.test_fraction (of train) in it",
            )
        )
    trials = ranked(study, cfg, limit=top)[:top]
    if not trials:
        say(f"held-out test: study {cfg.name!r} has no complete trial to test yet")
        return []
    storage = open_storage(cfg.storage, str(cfg.path))
    study_id = storage.get_study_id_from_name(cfg.name)
    results: list[dict[str, Any]] = []
    by_trial = dict(study.user_attrs.get("test_results") or {})
    for trial in trials:
        data = json.loads(json.dumps(trial.user_attrs.get("config") or {}))
        if not data:
            continue
        missing = not any(data.get("data", {}).get(k) for k in ("test", "test_fraction"))
        if missing:  # a trial run before the base config had a test split: give it the base's split
            for key in TEST_KEYS:
                data.setdefault("data", {})[key] = getattr(cfg.base_config.data, key)
        best_step = trial.user_attrs.get("best_step")
        if cfg.use == "best" and best_step is not None:
            # objective.use: best chose the model of an earlier evaluation: stop there, as export does
            data.setdefault("train", {})["stop_at_step"] = int(best_step)
        data["output_dir"] = str(cfg.output_dir / "test" / f"{trial.number:04d}")
        train_cfg = config_from_dict(data, source=f"trial {trial.number}")
        say(
            f"trial {trial.number}: retraining its config, then one evaluation on the held-out test split"
            + (" (the trial ran without one: the base config's split is used)" if missing else "")
        )
        result = run_job(
            train_cfg,
            source=f"trial {trial.number}",
            threads=train_cfg.train.threads,
            cache_dir=cfg.cache_dir,
            evaluate_test=True,
        )
        metrics = result.test_metrics
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        store_on_finished_trial(storage, trial_id, "test_metrics", metrics)
        by_trial[str(trial.number)] = metrics
        values = dict(zip(cfg.metrics, trial.values or [], strict=False))
        row = {
            "number": trial.number,
            "values": values,
            "test_metrics": metrics,
            "retrained": {m: result.metrics.get(m) for m in cfg.metrics},
        }
        results.append(row)
        say(f"trial {trial.number}: validation " + _fmt(values) + " · held-out test " + _fmt(metrics))
    if results:
        study.set_user_attr("test_results", by_trial)
        study.set_user_attr("test_metrics", results[0]["test_metrics"])
        study.set_user_attr("test_trial", results[0]["number"])
    return results


def _fmt(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, (int, float)))


def store_on_finished_trial(storage: optuna.storages.BaseStorage, trial_id: int, key: str, value: Any) -> None:
    """Set a user attribute on a trial that has finished.

    Optuna's public `set_trial_user_attr` refuses finished trials, and the test score comes after the
    trial finished, so this one function writes the attribute row itself through Optuna's RDB models
    (`rdb_models()`, a private module reached in search/storage/_optuna.py; its canary is in
    tests/unit/test_optuna_door.py). Other storages keep the
    score on the study only (`test_results`).
    """
    if not isinstance(storage, optuna.storages.RDBStorage):
        return
    models = rdb_models()
    session = storage.scoped_session()
    try:
        row = session.query(models.TrialUserAttributeModel).filter_by(trial_id=trial_id, key=key).one_or_none()
        if row is None:
            session.add(models.TrialUserAttributeModel(trial_id=trial_id, key=key, value_json=json.dumps(value)))
        else:
            row.value_json = json.dumps(value)
        session.commit()
    except Exception:
        session.rollback()
        raise
    finally:
        storage.scoped_session.remove()
