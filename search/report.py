"""What a study holds, for people and scripts: counts, best and top trials, and export of a trial."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from search.config import StudyConfig
from search.storage import StudyHandle, count_states, rdb_models, rdb_storage, retried, study_id
from trainer import ConfigError, Problem


def _top_by_sql(study: optuna.Study, cfg: StudyConfig, limit: int) -> list[FrozenTrial] | None:
    """The best `limit` COMPLETE trials of a single-objective study in one ordered query (None: not RDB).

    Only finite values rank: Optuna stores an infinite value as NULL with a value_type, SQLite stores
    NaN as NULL and PostgreSQL sorts NaN above every number, so each would otherwise come first."""
    from sqlalchemy import select

    try:
        storage = rdb_storage(study)
    except TypeError:  # not an RDB storage: rank in Python
        return None
    models = rdb_models()
    Value = models.TrialValueModel
    sid = study_id(study)

    def query() -> list[int]:
        with storage.scoped_session() as session:
            order = Value.value.desc() if cfg.directions[0] == "maximize" else Value.value.asc()
            return list(
                session.execute(
                    select(models.TrialModel.trial_id)
                    .join(Value, Value.trial_id == models.TrialModel.trial_id)
                    .where(
                        models.TrialModel.study_id == sid,
                        models.TrialModel.state == TrialState.COMPLETE,
                        Value.objective == 0,
                        Value.value_type == Value.TrialValueType.FINITE,
                        Value.value.is_not(None),
                        Value.value > -math.inf,
                        Value.value < math.inf,
                    )
                    .order_by(order, models.TrialModel.number)
                    .limit(limit)
                )
                .scalars()
                .all()
            )

    return [storage.get_trial(i) for i in retried(storage, query)]


def _finite(t: FrozenTrial) -> bool:
    return bool(t.values) and all(v is not None and math.isfinite(v) for v in t.values)


def ranked(study: optuna.Study, cfg: StudyConfig, limit: int | None = None) -> list[FrozenTrial]:
    """COMPLETE trials with finite values, best first (multi-objective: the Pareto front first, then by the
    first metric). A trial whose value is inf or NaN is never ranked."""
    if limit is not None and not cfg.multi_objective:
        top = _top_by_sql(study, cfg, limit)
        if top is not None:
            return top
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if _finite(t)]
    sign = [1 if d == "maximize" else -1 for d in cfg.directions]
    done.sort(key=lambda t: (tuple(-s * v for s, v in zip(sign, t.values, strict=False)), t.number))
    if cfg.multi_objective:
        front = {t.number for t in study.best_trials if _finite(t)}
        done.sort(key=lambda t: t.number not in front)
    return done[:limit] if limit is not None else done


FAILED_SHOWN = 10
"""`status` lists the reasons of this many failed trials (the latest)."""


def summary(study: optuna.Study, cfg: StudyConfig, top: int = 5) -> dict[str, Any]:
    counts = count_states(study)
    best = ranked(study, cfg, limit=top)
    attrs = study.user_attrs
    rows = [{**_trial_row(t, cfg), "test_metrics": stored_test_metrics(t, attrs)} for t in best[:top]]
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if counts["FAIL"] else []
    return {
        "study": cfg.name,
        "storage": cfg.storage,
        "objectives": [{"metric": m, "direction": d} for m, d in zip(cfg.metrics, cfg.directions, strict=True)],
        "n_trials_target": cfg.budget.n_trials,
        "counts": counts,
        "finished": counts["COMPLETE"] + counts["PRUNED"],
        "best": rows[0] if rows else None,
        "pareto_front": [t.number for t in study.best_trials if _finite(t)] if cfg.multi_objective and rows else None,
        "top": rows,
        "test": {
            "split": bool(cfg.base_config.data.test or cfg.base_config.data.test_fraction),
            "trial": attrs.get("test_trial"),
            "metrics": attrs.get("test_metrics"),
        },
        "failed": [{"number": t.number, "error": fail_reason(t)} for t in failed[-FAILED_SHOWN:]],
    }


def stored_test_metrics(trial: FrozenTrial, study_attrs: dict[str, Any]) -> dict[str, float] | None:
    """A trial's held-out test metrics: on the trial, or in the study's `test_results` (other storages)."""
    stored = trial.user_attrs.get("test_metrics")
    if stored is None:
        stored = (study_attrs.get("test_results") or {}).get(str(trial.number))
    return stored


def _test_lines(info: dict[str, Any]) -> list[str]:
    """The held-out test score, apart from the validation scores the search selected on."""
    test = info.get("test")
    if not test:
        return []
    if not test["split"]:
        return [
            "held-out test: none (the base config has no data.test or data.test_fraction); the validation "
            "scores below are optimistic, the search selected on them"
        ]
    if not test["metrics"]:
        return ["held-out test: not evaluated yet (sftune test STUDY)"]
    shown = ", ".join(f"{k} {_fmt(v)}" for k, v in test["metrics"].items())
    return [f"held-out test of trial {test['trial']} (evaluated once, never seen by the search): {shown}"]


def fail_reason(t: FrozenTrial) -> str:
    """Why a trial failed, as stored by the run (user attribute `error`)."""
    return str(t.user_attrs.get("error") or t.system_attrs.get("fail_reason") or "no reason recorded")


def _trial_row(t: FrozenTrial, cfg: StudyConfig) -> dict[str, Any]:
    return {
        "number": t.number,
        "values": dict(zip(cfg.metrics, t.values or [], strict=False)),
        "params": t.params,
        "duration_s": t.duration.total_seconds() if t.duration else None,
    }


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if not math.isnan(v) else "nan"
    return str(v)


def render_table(info: dict[str, Any]) -> str:
    c = info["counts"]
    lines = [
        f"study {info['study']} · {info['storage']}",
        f"trials: {info['finished']}/{info['n_trials_target']} finished · complete {c['COMPLETE']} · "
        f"pruned {c['PRUNED']} · failed {c['FAIL']} · running {c['RUNNING']}",
    ]
    lines += _test_lines(info)
    failed = info.get("failed") or []
    if failed:
        more = c["FAIL"] - len(failed)
        shown = f" (the last {len(failed)} of {c['FAIL']})" if more > 0 else ""
        lines.append(f"failed trials{shown}:")
        lines += [f"  trial {f['number']}: {f['error']}" for f in failed]
    if not info["top"]:
        lines.append("no complete trial yet")
        return "\n".join(lines)
    metrics = [o["metric"] for o in info["objectives"]]
    params = sorted({k for row in info["top"] for k in row["params"]})
    tested = [m for m in metrics if any(f"test_{m}" in (r.get("test_metrics") or {}) for r in info["top"])]
    header = ["trial", *metrics, *[f"test_{m}" for m in tested], *params, "time"]
    body = [
        [
            str(r["number"]),
            *[_fmt(r["values"].get(m)) for m in metrics],
            *[_fmt((r.get("test_metrics") or {}).get(f"test_{m}", "-")) for m in tested],
            *[_fmt(r["params"].get(p, "-")) for p in params],
            f"{r['duration_s']:.0f}s" if r["duration_s"] is not None else "-",
        ]
        for r in info["top"]
    ]
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(header)]
    title = "pareto front and best trials" if info.get("pareto_front") else f"top {len(body)} trials"
    lines.append(title + ":")
    lines.append("  " + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    lines += ["  " + "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in body]
    return "\n".join(lines)


def export_trial(study: optuna.Study, cfg: StudyConfig, out: Path, number: int | None) -> FrozenTrial:
    """Write the complete train config of a trial (the best by default) as a file `sftune train` runs."""
    if number is None:
        best = ranked(study, cfg, limit=1)
        if not best:
            raise ConfigError(Problem(str(cfg.path), "", f"study {cfg.name!r} has no complete trial to export yet"))
        trial = best[0]
    else:
        try:
            trial = StudyHandle.of(study).trial(number)
        except KeyError:
            total = sum(count_states(study).values())
            raise ConfigError(
                Problem("--trial", str(number), f"no trial {number} in study {cfg.name!r} (trials 0..{total - 1})")
            ) from None
    config = trial.user_attrs.get("config")
    if not config:
        raise ConfigError(
            Problem("--trial", str(trial.number), "this trial stored no config (it failed before sampling finished)")
        )
    config = dict(config)
    config["output_dir"] = str(Path("runs") / f"{cfg.name}-trial-{trial.number}")
    best_step = trial.user_attrs.get("best_step")
    if cfg.use == "best" and best_step is not None:  # its value is an earlier evaluation: stop there
        config["train"] = {**config.get("train", {}), "stop_at_step": int(best_step)}
    header = [f"# Exported from study {cfg.name!r} ({cfg.storage}), trial {trial.number}, state {trial.state.name}."]
    if trial.values:
        which = "best" if cfg.use == "best" else "final"
        header.append(
            f"# Its {which} "
            + ", ".join(f"{m} = {v:.6g}" for m, v in zip(cfg.metrics, trial.values, strict=False))
            + ". Re-run: sftune train "
            + str(out)
        )
    tested = stored_test_metrics(trial, study.user_attrs)
    if tested:
        header.append(
            "# Held-out test (evaluated once, never seen by the search): "
            + ", ".join(f"{k} = {v:.6g}" for k, v in tested.items())
        )
    header.append("# Sampled: " + json.dumps(trial.params, default=str))
    if cfg.use == "best" and best_step is not None:
        header.append(
            f"# objective.use: best: training stops at step {best_step}, its best evaluation "
            "(train.stop_at_step), with the learning-rate schedule of the full run."
        )
    chosen = tuned_threshold(trial, config, best_step if cfg.use == "best" else None)
    if chosen is not None:
        header.append(
            f"# task_options.threshold: tune chose {chosen[1]:g} on validation at step {chosen[0]}; this run tunes it "
            "again the same way and scores any test split at it (to fix it instead: "
            f"task_options.threshold: {chosen[1]:g})."
        )
    threads = config.get("train", {}).get("threads")
    if threads:
        header.append(f"# train.threads: {threads} as in the trial, so the numbers match; raise it to train faster.")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(header) + "\n" + yaml.safe_dump(config, sort_keys=False))
    return trial


def tuned_threshold(trial: FrozenTrial, config: dict[str, Any], step: int | None) -> tuple[int, float] | None:
    """The (step, threshold) a `threshold: tune` trial chose: at `step` (its best evaluation) or its last one."""
    if (config.get("task_options") or {}).get("threshold") != "tune":
        return None
    tuned = [h for h in trial.user_attrs.get("history") or [] if "threshold" in h]
    at = [h for h in tuned if step is not None and h.get("step") == step] or tuned[-1:]
    return (int(at[0]["step"]), float(at[0]["threshold"])) if at else None


def export_path(out: str, number: int | None) -> Path:
    """`--out` as given, or inside it when it names a folder (an existing one, or a path ending in /)."""
    if Path(out).is_dir() or out.endswith(("/", "\\")):
        return Path(out) / ("best.yaml" if number is None else f"trial-{number}.yaml")
    return Path(out)


def missing_database(cfg: StudyConfig) -> Problem | None:
    """A problem when the study's SQLite file does not exist (opening it would create an empty one)."""
    prefix = "sqlite:///"
    if not cfg.storage.startswith(prefix):
        return None
    name = cfg.storage[len(prefix) :].split("?", 1)[0]
    if not name or name == ":memory:" or Path(name).exists():
        return None
    return Problem(
        str(cfg.path),
        "name",
        f"no study named {cfg.name!r}: its database {name} does not exist "
        "(run `sftune run` first, or pass the --storage / --set name=... the run used)",
    )


def next_hints(path: str, overrides: list[str] | None = None, storage: str | None = None) -> str:
    """What to type after a run, carrying the run's --set and --storage so the same study is found."""
    extra = "".join(f" --set {shlex.quote(item)}" for item in overrides or [])
    if storage:
        extra += f" --storage {shlex.quote(storage)}"
    study = shlex.quote(str(path)) + extra
    return (
        f"next: sftune status {study} · sftune report {study} · sftune dashboard {study} · "
        f"sftune export {study} --out best.yaml"
    )
