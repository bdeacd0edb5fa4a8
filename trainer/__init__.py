"""One supervised fine-tuning job. Knows nothing of Ray or Optuna."""

from __future__ import annotations

from trainer._chat import describe as describe_template
from trainer._metrics import DIRECTIONS, METRICS
from trainer._model import warm
from trainer._oom import OutOfMemory
from trainer._precision import resolve_model_dtype
from trainer._tokenize import describe_warnings
from trainer.config import ADDED_DEFAULTS, FIELDS, TrainConfig, config_from_dict, load_train_config, read_yaml
from trainer.job import JobResult, NeverStop, Prepared, Reporter, prepare, prepare_soon, resolve_precision, run_job
from trainer.schema import ConfigError, Problem
from trainer.tasks import Task, get_task, task_names

__all__ = [
    "ADDED_DEFAULTS",
    "DIRECTIONS",
    "FIELDS",
    "METRICS",
    "ConfigError",
    "JobResult",
    "NeverStop",
    "OutOfMemory",
    "Prepared",
    "Problem",
    "Reporter",
    "Task",
    "TrainConfig",
    "config_from_dict",
    "describe_template",
    "describe_warnings",
    "get_task",
    "load_train_config",
    "prepare",
    "prepare_soon",
    "read_yaml",
    "resolve_model_dtype",
    "resolve_precision",
    "run_job",
    "task_names",
    "warm",
]
