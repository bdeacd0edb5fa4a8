"""sftune from Python: `run`, `train`, `status` and `export`, returning typed results (`import sftune`).

Each function does what its `sftune` command does, and the command is a thin layer over it: the same
checks, the same lines said (through `say`, `print` by default; `say=None` is silent), the same files.
Bad input raises `ConfigError` (its `problems` are what the command prints before exiting 2), before any
trial runs; a run that ends early (too many failed trials, a failed storage, an interrupt) raises
`RunFailed` with the command's exit code and the study as far as it got.

Overrides are keyword arguments: a dotted key as the command's `--set` takes it (`**{"base.train.max_steps":
10}`), or a mapping that flattens to dotted keys (`budget={"n_trials": 4}` is `budget.n_trials=4`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer import ConfigError, Problem

Say = Callable[[str], None]

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


class RunFailed(Exception):
    """A study run that did not end as asked: too many trials failed or the storage failed (exit_code 1), or it
    was interrupted (exit_code 130). `reason` is the line the run said; `study` the study as it was stored then
    (None when it could not be read)."""

    def __init__(self, reason: str, exit_code: int, study: StudyStatus | None = None) -> None:
        self.reason = reason
        self.exit_code = exit_code
        self.study = study
        super().__init__(reason)


@dataclass(frozen=True)
class Trial:
    """One trial as stored in the study database."""

    number: int
    state: str
    """COMPLETE, PRUNED, FAIL, RUNNING or WAITING."""
    values: dict[str, float]
    """Each objective metric's value (empty unless COMPLETE)."""
    params: dict[str, Any]
    """The sampled values, by dotted train-config key."""
    config: dict[str, Any] | None
    """The trial's complete train config (what `export` writes and `train` re-runs)."""
    duration_s: float | None
    error: str | None = None
    """Why it failed (FAIL only)."""
    attrs: dict[str, Any] = field(default_factory=dict, repr=False)
    """Everything else the run stored on it (history, best_step, node, warm_start_of, ...)."""

    @property
    def value(self) -> float | None:
        """The first objective's value."""
        return next(iter(self.values.values()), None)


@dataclass(frozen=True)
class StudyStatus:
    """A study as `sftune status` shows it."""

    name: str
    storage: str
    objectives: list[dict[str, str]]
    """[{metric, direction}, ...]"""
    counts: dict[str, int]
    """Trials by state: COMPLETE, PRUNED, FAIL, RUNNING, WAITING."""
    finished: int
    n_trials_target: int
    best: Trial | None
    """The best complete trial (multi-objective: the first of the Pareto front)."""
    top: list[Trial]
    """The best complete trials, best first (multi-objective: the Pareto front first)."""
    pareto_front: list[int] | None
    """Trial numbers of the Pareto front (multi-objective studies only)."""
    failed: list[Trial]
    """The latest failed trials, with their errors."""
    test: dict[str, Any] | None = None
    """The held-out test: {split, trial, metrics}."""
    summary: dict[str, Any] = field(default_factory=dict, repr=False)
    """What `sftune status --json` prints."""

    def table(self) -> str:
        """The table `sftune status` prints."""
        from search.report import render_table

        return render_table(self.summary)


@dataclass(frozen=True)
class RunResult:
    """A study run that ended as asked (its budget reached, or nothing left to run)."""

    study: StudyStatus
    said: list[str] = field(default_factory=list, repr=False)
    """Every line the run said."""

    @property
    def best(self) -> Trial | None:
        return self.study.best


@dataclass(frozen=True)
class TrainResult:
    """One fine-tuning run (`sftune train`)."""

    metrics: dict[str, float]
    """The final evaluation's metrics."""
    test_metrics: dict[str, float]
    step: int
    max_steps: int
    output_dir: Path
    """Where metrics.json (and a saved adapter or model) went."""
    seconds: dict[str, float]
    device: str
    precision: str
    history: list[dict[str, float]] = field(default_factory=list, repr=False)
    """Every evaluation: its step and metrics."""


@dataclass(frozen=True)
class Exported:
    """A trial's train config written by `export` (and its stored adapter or model, when the study kept one)."""

    path: Path
    trial: Trial
    files: Path | None
    """The trial's adapter or model fetched from the study's artifact store, if any."""


# ---------------------------------------------------------------------------------------------------
# Overrides


def set_items(overrides: dict[str, Any]) -> list[str]:
    """Keyword overrides as the command line's `--set KEY=VALUE` items (nested mappings flatten to dotted keys)."""
    items: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, sub in value.items():
                walk(f"{prefix}.{key}", sub)
        else:
            items.append(f"{prefix}={json.dumps(value, default=str)}")

    for key, value in overrides.items():
        walk(key, value)
    return items


def _quiet(_: str) -> None:
    pass


def _say(say: Say | None) -> Say:
    return _quiet if say is None else say


# ---------------------------------------------------------------------------------------------------
# The four functions


def run(
    study: str | Path,
    *,
    n_trials: int | None = None,
    storage: str | None = None,
    address: str | None = None,
    allow_base_change: bool = False,
    warm_start: str | list[str] | None = None,
    no_tracking: bool = False,
    say: Say | None = print,
    _items: list[str] | None = None,
    **overrides: Any,
) -> RunResult:
    """Run (or resume) a study until it holds its budget of finished trials; `sftune run`.

    `study`: a study file, or a shipped study's name. `warm_start`: `STUDY[@STORAGE]` (or a list of them) in
    place of the study file's `warm_start:`, as `--warm-start`; `no_tracking`: without the study file's
    `tracking:`, as `--no-tracking`. Raises ConfigError on bad input (before any trial), RunFailed when the run
    ends early."""
    from search.run import run_study

    said: list[str] = []
    out = _say(say)

    def record(line: str) -> None:
        said.append(line)
        out(line)

    items = [*(_items or []), *set_items(overrides)]
    if warm_start:
        from search.warm_start import parse_entry

        entries = [warm_start] if isinstance(warm_start, str) else list(warm_start)
        items.append(f"warm_start={json.dumps([parse_entry(e) for e in entries])}")
    if no_tracking:
        items.append("tracking=null")
    code = run_study(
        str(study),
        items,
        n_trials=n_trials,
        storage=storage,
        address=address,
        say=record,
        allow_base_change=allow_base_change,
    )
    if code != 0:
        reason = next(
            (line for line in reversed(said) if line.startswith(("stopped:", "error:", "interrupted"))),
            f"the run ended with exit code {code}",
        )
        raise RunFailed(reason, code, _status_or_none(study, items, storage))
    return RunResult(status(study, storage=storage, _items=items), said)


def _status_or_none(study: str | Path, items: list[str], storage: str | None) -> StudyStatus | None:
    try:
        return status(study, storage=storage, _items=items)
    except Exception:  # noqa: BLE001 - the status is an extra on a failure already raised
        return None


def status(
    study: str | Path, *, storage: str | None = None, top: int = 5, _items: list[str] | None = None, **overrides: Any
) -> StudyStatus:
    """A study's counts by state, its best and top trials and its failed ones; `sftune status`."""
    from search.report import summary

    cfg, opened = open_existing(study, [*(_items or []), *set_items(overrides)], storage)
    try:
        info = summary(opened, cfg, top=top)
        return _status_of(info, opened, cfg)
    finally:
        _close(opened)


def export(
    study: str | Path,
    out: str | Path,
    *,
    trial: int | None = None,
    storage: str | None = None,
    say: Say | None = None,
    _items: list[str] | None = None,
    **overrides: Any,
) -> Exported:
    """Write a trial's complete train config (the best by default) where `sftune train` runs it, with its stored
    adapter or model beside it; `sftune export`. `out`: a file, or a folder to write best.yaml into."""
    from search.artifacts import fetch_trial_files
    from search.report import export_path, export_trial

    cfg, opened = open_existing(study, [*(_items or []), *set_items(overrides)], storage)
    tell = _say(say)
    try:
        path = export_path(str(out), trial)
        frozen = export_trial(opened, cfg, path, trial)
        values = ", ".join(f"{m} {v:.4f}" for m, v in zip(cfg.metrics, frozen.values or [], strict=False))
        tell(f"exported trial {frozen.number} ({frozen.state.name}{', ' + values if values else ''}) to {path}")
        fetched = fetch_trial_files(opened, cfg, frozen.number, path)
        if fetched is not None:
            tell(f"its {fetched.name.rsplit('-', 1)[-1]} (from the study's artifact store): {fetched}")
        tell(f"re-run it: sftune train {path}")
        return Exported(path, _trial_of(frozen, cfg.metrics), fetched)
    finally:
        _close(opened)


def train(
    config: str | Path | dict[str, Any], *, say: Say | None = print, _items: list[str] | None = None, **overrides: Any
) -> TrainResult:
    """Run one fine-tuning job and evaluate it; `sftune train`. `config`: a train config file (an exported trial's
    best.yaml) or the same as a mapping (relative paths then resolve from the current folder)."""
    from trainer import config_from_dict, describe_template, describe_warnings, load_train_config, prepare, run_job
    from trainer.config import FIELDS, apply_overrides, parse_overrides

    tell = _say(say)
    items = [*(_items or []), *set_items(overrides)]
    if isinstance(config, dict):
        problems: list[Problem] = []
        parsed = parse_overrides(items, FIELDS, problems)
        if problems:
            raise ConfigError(problems)
        source = "<config mapping>"
        cfg = config_from_dict(apply_overrides(config, parsed), source=source, base_dir=Path.cwd())
    else:
        source = str(config)
        cfg = load_train_config(source, items)
    prepared = prepare(cfg, source=source)
    tell(
        f"sftune train: {cfg.task} · model {cfg.model} · peft {cfg.peft.method} · "
        f"{len(prepared.train)} train / {len(prepared.validation)} validation examples"
        + (f" / {len(prepared.test)} held-out test" if prepared.test else "")
    )
    if prepared.template:
        tell(f"prompt format: {describe_template(prepared.template)}")
    for line in describe_warnings(prepared.warnings, prepared.stats, cfg.train.max_length, cfg.task):
        tell(f"warning: {line}")
    result = run_job(cfg, source=source, progress=tell, prepared=prepared)
    tell(
        "final metrics (step {}/{}, {:.0f}s on {}, {}, weights {}):".format(
            result.step, result.max_steps, result.seconds["total"], result.device, result.precision, result.model_dtype
        )
    )
    for key, value in result.metrics.items():
        tell(f"  {key:<10} {value:.4f}")
    if result.test_metrics:
        tell(f"held-out test ({len(prepared.test)} examples, evaluated once at the end):")
        for key, value in result.test_metrics.items():
            tell(f"  {key:<15} {value:.4f}")
    tell(f"wrote {cfg.output_dir}/metrics.json")
    return TrainResult(
        metrics=dict(result.metrics),
        test_metrics=dict(result.test_metrics),
        step=result.step,
        max_steps=result.max_steps,
        output_dir=Path(cfg.output_dir),
        seconds=dict(result.seconds),
        device=result.device,
        precision=result.precision,
        history=list(result.history),
    )


# ---------------------------------------------------------------------------------------------------
# Shared pieces


def open_existing(study: str | Path, items: list[str], storage: str | None):
    """The study file (with overrides and storage) and its existing study; never creates a database."""
    from search.config import load_study
    from search.report import missing_database
    from search.study import load_existing

    cfg = load_study(study, items, storage=storage)
    problem = missing_database(cfg)
    if problem is not None:
        raise ConfigError(problem)
    return cfg, load_existing(cfg)


def _close(study: Any) -> None:
    from search.storage import close_study

    try:
        close_study(study)
    except Exception:  # noqa: BLE001 - best-effort cleanup
        pass


def _trial_of(t: Any, metrics: list[str]) -> Trial:
    attrs = dict(t.user_attrs)
    config = attrs.pop("config", None)
    error = attrs.pop("error", None) if t.state.name == "FAIL" else None
    values = {m: float(v) for m, v in zip(metrics, t.values or [], strict=False) if v is not None and math.isfinite(v)}
    return Trial(
        number=t.number,
        state=t.state.name,
        values=values,
        params=dict(t.params),
        config=config,
        duration_s=t.duration.total_seconds() if t.duration else None,
        error=error,
        attrs=attrs,
    )


def _status_of(info: dict[str, Any], study: Any, cfg: Any) -> StudyStatus:
    from search.storage import StudyHandle

    handle = StudyHandle.of(study)

    def frozen(number: int) -> Trial:
        return _trial_of(handle.trial(number), cfg.metrics)

    top = [frozen(row["number"]) for row in info["top"]]
    failed = [frozen(row["number"]) for row in info["failed"]]
    return StudyStatus(
        name=info["study"],
        storage=info["storage"],
        objectives=info["objectives"],
        counts=dict(info["counts"]),
        finished=info["finished"],
        n_trials_target=info["n_trials_target"],
        best=top[0] if top else None,
        top=top,
        pareto_front=info["pareto_front"],
        failed=failed,
        test=info.get("test"),
        summary=info,
    )
