"""A stand-in for a fine-tuning job (no training, no torch): sleeps between evaluations and reports like one.

Used by `driver_scale.py` through `run_trials(..., job="stub_job:job")`. The accuracy curve depends on
the sampled learning rate and LoRA rank (best near lr 1e-3, r 8) plus seeded noise, so the sampler
and the pruner have something real to work on. Settings come from the environment the Ray workers
inherit: SFTUNE_STUB_EVALS (evaluations per trial, default 4), SFTUNE_STUB_EVAL_S (seconds between
them, default 1.0), SFTUNE_STUB_EXIT_S (seconds a stopped trial takes to end, default 0). Every report
carries `sent_at` (Unix time) so the driver's side can time it, and `stub_torch_loaded` (1.0 when torch
is imported in this worker: it should never be).
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from collections.abc import Callable
from typing import Any


def job(config: dict[str, Any], report: Callable[[int, dict[str, float]], None]) -> dict[str, float]:
    n_evals = int(os.environ.get("SFTUNE_STUB_EVALS", "4"))
    eval_s = float(os.environ.get("SFTUNE_STUB_EVAL_S", "1.0"))
    train = config.get("train", {})
    lr = float(train.get("learning_rate", 1e-3))
    rank = float(config.get("peft", {}).get("r", 8))
    quality = 0.92 - 0.08 * (math.log10(lr) + 3.0) ** 2 - 0.01 * abs(math.log2(rank) - 3.0)
    rng = random.Random(str(config.get("output_dir")))
    exit_s = float(os.environ.get("SFTUNE_STUB_EXIT_S", "0"))
    metrics: dict[str, float] = {}
    for k in range(1, n_evals + 1):
        time.sleep(eval_s)
        acc = 0.5 + (quality - 0.5) * math.sqrt(k / n_evals) + rng.gauss(0.0, 0.01)
        metrics = {"accuracy": acc, "f1_macro": acc, "eval_loss": 1.0 - acc}
        try:
            report(50 * k, {**metrics, "sent_at": time.time(), "stub_torch_loaded": float("torch" in sys.modules)})
        except BaseException:
            time.sleep(exit_s)  # a job whose clean-up after a stop takes this long
            raise
    return {**metrics, "step": 50 * n_evals}
