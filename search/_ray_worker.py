"""The worker side of the Ray adapter: the function each Tune trial runs.

A trial gets its complete train config through Tune's own trial config and the study's tokenized data
through Ray's object store (`tune.with_parameters`), so a node needs the installed package and the
model, not the driver's files. It reports where it runs, then every evaluation; the driver decides.
Nothing here imports Optuna, and a stub job (driver benchmarks) never imports the training stack.
"""

from __future__ import annotations

import importlib
import os
import socket
import sys
import traceback
from typing import Any, Callable

ERROR_KEY = "sftune_error"
DONE_KEY = "sftune_done"
READY_KEY = "sftune_ready"


def _import(ref: str) -> Callable[..., dict[str, float]]:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def trainable(config: dict[str, Any], prepared: Any = None) -> None:
    """Runs in a Ray worker: say where it runs, train (or run a stub job), report every evaluation."""
    import ray
    from ray import tune

    spec = config["sftune"]
    preloaded = "transformers.trainer" in sys.modules  # a warmed (or reused) worker
    tune.report({READY_KEY: True, "preloaded": preloaded, "host": socket.gethostname(),
                 "node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()})
    try:
        if spec.get("job"):
            _run_stub(spec, tune)
            return
        from trainer import config_from_dict, run_job

        number = spec["number"]
        cfg = config_from_dict(spec["config"], source=f"trial {number}")
        timing: dict[str, float] = {}

        class TuneReporter:
            def report(self, step: int, metrics: dict[str, float]) -> bool:
                tune.report({**metrics, "step": step, "max_steps": timing.get("max_steps"),
                             "seconds": dict(timing)})
                return False  # the scheduler in the driver stops a pruned trial

        result = run_job(cfg, TuneReporter(), threads=cfg.train.threads, prepared=prepared, timing=timing)
        tune.report({**result.metrics, "step": result.step, DONE_KEY: True, "seconds": result.seconds})
    except Exception as exc:  # noqa: BLE001 - reported as the trial's error, kept in the database
        if type(exc).__name__ in ("SessionTerminatedError", "StopIteration"):
            raise
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        tune.report({ERROR_KEY: last, "traceback": traceback.format_exc()[-4000:]})


def _run_stub(spec: dict[str, Any], tune: Any) -> None:
    """A `module:function(config, report) -> final metrics` job: what the driver benchmark runs."""
    job = _import(spec["job"])

    def report(step: int, metrics: dict[str, float]) -> None:
        tune.report({**metrics, "step": step})

    final = job(spec["config"], report)
    tune.report({**final, DONE_KEY: True})
