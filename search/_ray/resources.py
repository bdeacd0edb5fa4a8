"""What a study's `resources.cpu` and `resources.gpu` mean to a trial and to Ray, on a local or a joined cluster.

`resources.cpu` has two meanings, and this is the one place that reads it:

- on any cluster, a trial's job runs `resources.cpu` threads (`trial_threads`);
- on a cluster this driver joins (`--address`, `RAY_ADDRESS`, or one this process already joined), each
  trial asks Ray for `resources.cpu` CPUs, so Ray places it on a node that has them (`joined_request`);
- on a local cluster this driver starts, Ray gets one CPU slot per concurrent trial (`local_cluster_cpus`)
  and each trial asks for one slot (`local_request`): Ray starts one idle worker per CPU, so exactly the
  workers the trials will use are started (and warmed); the trial still runs `resources.cpu` threads.

`resources.gpu` means the same everywhere: the GPU share each trial asks Ray for.

With `resources.workers` > 1 each of these is what one rank of a trial asks for (`search._ray.ranks`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from search.config import StudyConfig

LOCAL_SLOT_CPUS = 1
"""Ray CPUs a trial takes on a local cluster: one slot, whatever its `resources.cpu`."""


def trial_threads(cfg: StudyConfig) -> int:
    """The CPU threads a trial's job runs: `resources.cpu`, at least one, on any cluster."""
    return max(1, int(cfg.resources.cpu))


def joined_request(cfg: StudyConfig) -> dict[str, float]:
    """What each trial asks Ray for on a joined cluster: `resources.cpu` CPUs and `resources.gpu` GPUs."""
    return {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu}


def local_request(cfg: StudyConfig) -> dict[str, float]:
    """What each trial asks Ray for on a local cluster this driver starts: one CPU slot and `resources.gpu`."""
    return {"cpu": LOCAL_SLOT_CPUS, "gpu": cfg.resources.gpu}


def local_cluster_cpus(cfg: StudyConfig) -> int:
    """The CPUs a local cluster offers Ray: one slot per concurrent trial (`budget.concurrency`), or per rank of
    each when trials run over several workers (`resources.workers`; their coordinators ask for no CPU,
    `search._ray.ranks.COORDINATOR`)."""
    if cfg.resources.workers > 1:
        return cfg.budget.concurrency * LOCAL_SLOT_CPUS * cfg.resources.workers
    return cfg.budget.concurrency * LOCAL_SLOT_CPUS
