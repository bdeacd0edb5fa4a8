"""The Ray adapter: where a study's trials run (`ray_cluster`) and how Ray Tune runs them (`run_trials`).

Its rooms: `cluster` starts or joins the cluster and checks it, `reaper` ends what a dead driver left,
`preload` warms a local cluster's workers, `tuner` builds the Tuner, `shells` are Tune's searcher,
scheduler and callback over `search._driver.Driver`, `worker` is what each trial runs, `ranks` runs a trial
over several workers (Ray Train), `resources` says what `resources.cpu` and `resources.gpu` mean, `gpu`
judges trials packed on one GPU, and `_internals` is the one module that touches Ray's private names. The
names below load on first use: a Ray worker importing `search._ray.worker` (or the preload module) gets
neither Optuna nor the driver with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from search._ray.cluster import ray_cluster
    from search._ray.tuner import run_trials

__all__ = ["ray_cluster", "run_trials"]

_HOMES = {"ray_cluster": "search._ray.cluster", "run_trials": "search._ray.tuner"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
