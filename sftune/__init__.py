"""sftune from Python: `sftune.run`, `sftune.train`, `sftune.status`, `sftune.export` (see docs/python-api.md).

    import sftune

    result = sftune.run("studies/my.yaml", budget={"n_trials": 8})
    print(result.best.values, result.best.params)
    sftune.export("studies/my.yaml", "best.yaml")
    sftune.train("best.yaml")

Bad input raises `sftune.ConfigError` (its `problems` are what the command line prints); a run that ends early
raises `sftune.RunFailed`.
"""

from __future__ import annotations

from search.api import Exported, RunFailed, RunResult, StudyStatus, TrainResult, Trial, export, run, status, train
from trainer import ConfigError, Problem

__all__ = [
    "ConfigError",
    "Exported",
    "Problem",
    "RunFailed",
    "RunResult",
    "StudyStatus",
    "TrainResult",
    "Trial",
    "export",
    "run",
    "status",
    "train",
]
