"""The tasks a run can train, by `task:` name, and the one interface they share."""

from __future__ import annotations

import importlib
from functools import cache

from trainer.schema import ConfigError, Problem, describe, did_you_mean
from trainer.tasks._base import Task

TASKS: dict[str, str] = {
    "classification": "trainer.tasks.classification:Classification",
    "sft": "trainer.tasks.sft:SFT",
    "regression": "trainer.tasks.regression:Regression",
    "multilabel": "trainer.tasks.multilabel:Multilabel",
    "token-classification": "trainer.tasks.token_classification:TokenClassification",
    "image-classification": "trainer.tasks.image_classification:ImageClassification",
}
"""Built-in tasks: `task:` name to the `module:ClassName` that implements it (imported when first used)."""

DEFAULT_TASK = "classification"


def task_names() -> list[str]:
    """The built-in task names, in registry order."""
    return list(TASKS)


def get_task(name: str, source: str = "") -> Task:
    """The task a config's `task:` names: a built-in name, or `module:ClassName` (a Task subclass of your own).

    Raises ConfigError (key `task`) naming what was expected and what was found.
    """
    if not isinstance(name, str) or (name not in TASKS and ":" not in name):
        hint = did_you_mean(name, TASKS) if isinstance(name, str) else ""
        raise ConfigError(
            Problem(
                source,
                "task",
                f"expected one of {', '.join(TASKS)}, found {describe(name)}"
                + (hint or "; a task of your own is given as module:ClassName"),
            )
        )
    try:
        return _load(TASKS.get(name, name))
    except ConfigError as exc:
        raise ConfigError([Problem(source, p.key, p.message) for p in exc.problems]) from None


@cache
def _load(spec: str) -> Task:
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise ConfigError(Problem("", "task", f"expected module:ClassName, found {spec!r}"))
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any failure to import is the user's module
        raise ConfigError(
            Problem("", "task", f"cannot import module {module_name!r} of task {spec!r}: {type(exc).__name__}: {exc}")
        ) from None
    cls = getattr(module, class_name, None)
    if cls is None:
        public = [n for n in vars(module) if not n.startswith("_")]
        raise ConfigError(
            Problem("", "task", f"module {module_name!r} has no {class_name!r}{did_you_mean(class_name, public)}")
        )
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ConfigError(
            Problem("", "task", f"expected a subclass of trainer.tasks.Task at {spec!r}, found {describe(cls)}")
        )
    task = cls()
    problems = _check_task(task, spec)
    if problems:
        raise ConfigError(problems)
    return task


REQUIRED = ("load_examples", "tokenize", "load_model")
"""The hooks a task must implement itself (the others have defaults)."""

RESERVED_METRIC_NAMES = frozenset(
    {
        # what a trial's reports carry beside its metrics (search/_trial_result.py; a test keeps the two in step)
        "step",
        "max_steps",
        "seconds",
        "memory",
        "precision",
        "model_dtype",
        "template",
        "generations",
        "data_warnings",
        "traceback",
        "preloaded",
        "host",
        "node",
        "pid",
        # what Ray Tune adds to every result
        "training_iteration",
        "time_this_iter_s",
        "time_total_s",
        "time_since_restore",
        "iterations_since_restore",
        "timestamp",
        "done",
        "trial_id",
        "date",
        "hostname",
        "node_ip",
        "config",
        "experiment_tag",
        "checkpoint_dir_name",
        "should_checkpoint",
    }
)
"""Names a metric cannot have: a trial's report holds them beside the metrics (`precision` is the arithmetic a
trial trained in), so a metric of that name would be read as the other. Names starting `sftune_` are kept too."""


def _check_task(task: Task, spec: str) -> list[Problem]:
    """A task implements the required hooks, and its declared metrics are usable as study objectives."""
    problems = []
    for method in REQUIRED:
        if getattr(type(task), method, None) is getattr(Task, method):
            problems.append(
                Problem(
                    "",
                    "task",
                    f"{spec}: expected a method {method}() (every task implements {', '.join(REQUIRED)}), found none",
                )
            )
    for metric in task.metrics:
        if metric in RESERVED_METRIC_NAMES or metric.startswith("sftune_"):
            problems.append(
                Problem(
                    "",
                    "task",
                    f"{spec}: metric {metric!r} is a name a trial's report keeps for "
                    "itself; expected another name (entity_precision, say)",
                )
            )
    if not task.metrics:
        problems.append(Problem("", "task", f"{spec}: expected at least one name in `metrics`, found none"))
    for metric in task.metrics:
        if task.directions.get(metric) not in ("maximize", "minimize"):
            problems.append(
                Problem(
                    "",
                    "task",
                    f"{spec}: expected directions[{metric!r}] to be maximize or "
                    f"minimize, found {describe(task.directions.get(metric))}",
                )
            )
    if task.default_objective not in task.metrics:
        problems.append(
            Problem(
                "",
                "task",
                f"{spec}: default_objective {task.default_objective!r} is not one of its metrics {list(task.metrics)}",
            )
        )
    return problems


__all__ = ["DEFAULT_TASK", "TASKS", "Task", "get_task", "task_names"]
