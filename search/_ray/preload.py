"""Imported by each Ray worker of a local cluster that `sftune run` starts, before it takes any work.

Ray starts its idle workers while the cluster itself starts; importing torch, transformers' Trainer,
peft and the model's code there (~5 s on two cores) overlaps with the driver's own start-up
(tokenizing, opening the study, starting Tune) instead of delaying the first trials.
`SFTUNE_WARM` (set by the driver) names the model and the task.
"""

from __future__ import annotations

import json
import os


def _warm() -> None:
    spec = json.loads(os.environ.get("SFTUNE_WARM") or "{}")
    if not spec:
        return
    # Should anything ask torch whether CUDA is there, ask NVML: initialising CUDA now would fix the
    # visible devices before Ray sets CUDA_VISIBLE_DEVICES for the trial this worker will run.
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    from trainer import warm

    warm(spec.get("location"), spec.get("task"))
    import ray.tune.trainable.function_trainable  # noqa: F401 - what Tune builds a trial's actor from

    import search._ray.worker  # noqa: F401 - the trainable


try:
    _warm()
except Exception:  # noqa: BLE001 - warming is an optimisation: never keep a worker from starting
    pass
