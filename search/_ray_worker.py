"""The worker side of the Ray adapter: the function each Tune trial runs, and how it gets its config.

A trial's function imports the training stack, reports that it is ready, and only then receives
its config, which the driver samples at that moment and posts to Ray's key-value store. Nothing
here imports Optuna, so a worker starts with what training needs and no more.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from typing import Any

ERROR_KEY = "sftune_error"
DONE_KEY = "sftune_done"
READY_KEY = "sftune_ready"


def post(key: str, value: dict[str, Any]) -> None:
    """In the driver: leave a trial's config for its worker under `key`."""
    from ray.experimental.internal_kv import _internal_kv_put

    _internal_kv_put(key.encode(), json.dumps(value).encode(), overwrite=True)


def collect(key: str, timeout: float = 300.0) -> dict[str, Any]:
    """In a worker: the config the driver posted under `key` (it is posted before `tune.report` returns)."""
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_get

    deadline = time.time() + timeout
    while True:
        raw = _internal_kv_get(key.encode())
        if raw is not None:
            _internal_kv_del(key.encode())
            return json.loads(raw)
        if time.time() > deadline:
            raise RuntimeError(f"the driver posted no config for this trial within {timeout:g} s")
        time.sleep(0.02)


def trainable(config: dict[str, Any]) -> None:
    """Runs in a Ray worker: import the training stack, say ready, take the trial's config, train.

    Every evaluation is reported to Tune (the driver's scheduler prunes from it).
    """
    from ray import tune

    from trainer import config_from_dict, run_job, warm

    spec = config["sftune"]
    preloaded = "transformers.trainer" in sys.modules  # a warmed (or reused) worker
    try:
        warm(**spec.get("warm", {}))
    except Exception:  # noqa: BLE001 - the job below reports what really fails
        pass
    tune.report({READY_KEY: True, "preloaded": preloaded})
    try:
        posted = collect(spec["mailbox"])
        number = posted["number"]
        cfg = config_from_dict(posted["config"], source=f"trial {number}")

        timing: dict[str, float] = {}

        class TuneReporter:
            def report(self, step: int, metrics: dict[str, float]) -> bool:
                tune.report({**metrics, "step": step, "seconds": dict(timing)})
                return False  # the scheduler in the driver stops a pruned trial

        result = run_job(cfg, TuneReporter(), threads=cfg.train.threads, cache_dir=spec.get("cache_dir"),
                         timing=timing)
        tune.report({**result.metrics, "step": result.step, DONE_KEY: True, "seconds": result.seconds})
    except Exception as exc:  # noqa: BLE001 - reported as the trial's error, kept in the database
        if type(exc).__name__ in ("SessionTerminatedError", "StopIteration"):
            raise
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        tune.report({ERROR_KEY: last, "traceback": traceback.format_exc()[-4000:]})
