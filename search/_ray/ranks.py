"""A trial over several workers (`resources.workers` > 1): one Tune trial, N data-parallel ranks through Ray Train.

The Tune trial (`RanksTrial`, a class trainable) starts a `TrainRun` actor that builds a Ray Train `TorchTrainer`
with one rank per worker (each asking Ray for the per-worker `resources.cpu` and `resources.gpu`; gloo on CPU,
NCCL on GPUs) and fits it: Train V2 started from inside a Tune trial. Every rank runs the same config, the one the
driver asked Optuna for once, on the data the driver prepared once (an object-store reference every rank reads);
the HF Trainer inside each rank trains with DDP over the process group Ray Train set up. Every rank reports each
evaluation in step (Ray Train's report is collective), and a Train callback in the controller hands rank 0's to the
trial (`TuneReportCallback` does the same for a function trainable, which cannot be stopped: see `_trial_class`), so
the driver judges one trial as any other. When Tune stops the trial (pruned, ended), its `cleanup` kills the
`TrainRun` actor and Ray ends what it owns, the controller and every rank; the ranks' placement group is removed by
the trial and by the driver's scheduler (`release_group`). A rank that dies fails the trial as a dead worker does
(its params queued again), naming the rank; a rank whose job raised fails it with that error. Only rank 0 writes
the trial's files (`trainer.job` saves on the main process).

Nothing here imports Optuna; the checks (`ranks_problems`, `placement_problem`) import no Ray.
"""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from search.config import Resources
    from search.space import Space
    from trainer import Problem, TrainConfig


# ---- checks before any trial (no Ray) ------------------------------------------------------------------------


def ranks_problems(r: Resources, base: TrainConfig | None, space: Space, source: str) -> list[Problem]:
    """What stops a study from running `resources.workers` ranks per trial: every problem, in the user's words."""
    from trainer import Problem
    from trainer.tasks import get_task

    if isinstance(r.workers, bool) or not isinstance(r.workers, int) or r.workers < 1:
        return [Problem(source, "resources.workers", f"must be a whole number >= 1, found {r.workers!r}")]
    problems: list[Problem] = []
    if r.batch not in BATCH_MEANINGS:
        problems.append(
            Problem(source, "resources.batch", f"expected one of {', '.join(BATCH_MEANINGS)}, found {r.batch!r}")
        )
    elif r.batch == "effective" and base is not None:
        problems.extend(_undivided(r.workers, base, space, source))
    if r.fsdp:
        problems.extend(_fsdp_problems(r, base, space, source))
    if r.workers == 1:
        return problems
    if r.gpu and r.gpu != int(r.gpu):
        problems.append(
            Problem(
                source,
                "resources.gpu",
                (
                    f"with workers: {r.workers} each rank needs a whole GPU of its own (NCCL runs one rank per GPU; "
                    f"ranks sharing a GPU fail or crawl), found gpu: {r.gpu:g}; use gpu: 1, or workers: 1 to pack "
                    "trials on a GPU"
                ),
            )
        )
    elif r.gpu > 1:
        problems.append(
            Problem(
                source,
                "resources.gpu",
                (
                    f"with workers: {r.workers} each rank trains on one GPU, so gpu: {r.gpu:g} per rank would leave "
                    f"GPUs idle; use gpu: 1 and workers: {r.workers * int(r.gpu)}"
                ),
            )
        )
    if base is not None:
        try:
            task = get_task(base.task, source)
        except Exception:  # noqa: BLE001 - a task that fails to load is reported by the task check
            task = None
        if task is not None and not getattr(task, "data_parallel", True):
            problems.append(
                Problem(
                    source,
                    "resources.workers",
                    (
                        f"task {base.task} says it cannot train data-parallel (its data_parallel is False); "
                        "use workers: 1"
                    ),
                )
            )
    return problems


BATCH_MEANINGS = ("per_worker", "effective")
"""What `train.batch_size` means in a study (`resources.batch`): each rank's batch, or rows per optimizer step."""


def per_worker_batch(effective: int, workers: int, accumulation: int) -> int:
    """Each rank's batch for an effective batch (rows per optimizer step); ValueError when it does not divide."""
    share = int(workers) * int(accumulation)
    if int(effective) % share:
        raise ValueError(
            f"resources.batch is effective: train.batch_size {effective} does not divide by workers "
            f"x gradient_accumulation = {workers} x {accumulation}"
        )
    return int(effective) // share


def _undivided(workers: int, base: TrainConfig, space: Space, source: str) -> list[Problem]:
    """With `resources.batch: effective`, every batch size the study can run must divide by workers x accumulation."""
    from trainer import Problem

    def values(key: str, fallback: int) -> list[int] | None:
        param = next((p for p in space.params if p.name == key), None)
        if param is None:
            return [int(space.fixed.get(key, fallback))]
        found = param.grid_values()
        return None if found is None else [int(v) for v in found if v is not None]

    sizes = values("train.batch_size", base.train.batch_size)
    steps = values("train.gradient_accumulation", base.train.gradient_accumulation)
    if sizes is None or steps is None:
        return [
            Problem(
                source,
                "resources.batch",
                "effective needs train.batch_size and "
                "train.gradient_accumulation to take whole values (int or categorical in the space)",
            )
        ]
    bad = sorted({(b, a) for b in sizes for a in steps if b % (workers * a)})
    if not bad:
        return []
    shown = ", ".join(f"{b} (x{a} accumulation)" if len(steps) > 1 else str(b) for b, a in bad[:6])
    more = f" and {len(bad) - 6} more" if len(bad) > 6 else ""
    return [
        Problem(
            source,
            "resources.batch",
            (
                f"effective: each rank takes train.batch_size / (workers x gradient_accumulation), but batch size "
                f"{shown}{more} does not divide by {workers} x {'/'.join(str(a) for a in steps)}; choose batch sizes "
                f"that are multiples of it (a categorical such as [{workers * steps[0] * 2}, {workers * steps[0] * 4}])"
            ),
        )
    ]


FSDP_WORDS = ("full_shard", "shard_grad_op", "hybrid_shard", "hybrid_shard_zero2", "no_shard", "offload", "auto_wrap")
"""The words of the HF Trainer's `fsdp` option."""


def _fsdp_problems(r: Resources, base: TrainConfig | None, space: Space, source: str) -> list[Problem]:
    """`resources.fsdp` shards a full fine-tune over a trial's ranks, one GPU each."""
    from trainer import Problem

    problems = []
    words = str(r.fsdp).split()
    unknown = [w for w in words if w not in FSDP_WORDS]
    if unknown or not words:
        problems.append(
            Problem(
                source,
                "resources.fsdp",
                f"expected the Trainer's fsdp words ({', '.join(FSDP_WORDS)}), found {r.fsdp!r}",
            )
        )
    if r.workers < 2 or not r.gpu:
        problems.append(
            Problem(
                source,
                "resources.fsdp",
                (
                    f"FSDP shards a model over several GPUs: it needs workers >= 2 and gpu: 1, found workers: "
                    f"{r.workers}, gpu: {r.gpu:g}"
                ),
            )
        )
    lora = (base is not None and base.peft.method != "full") or any(p.name == "peft.method" for p in space.params)
    if lora:
        problems.append(
            Problem(
                source,
                "resources.fsdp",
                "FSDP is for full fine-tunes (peft.method: full, not "
                "searched); a LoRA trial fits one GPU, use workers without fsdp",
            )
        )
    return problems


def placement_problem(
    workers: int, per_rank: Mapping[str, float], nodes: list[dict[str, Any]], where: str, source: str
) -> Problem | None:
    """A Problem when the alive nodes (as `ray.nodes()`) can never place `workers` ranks of `per_rank` at once.

    Ranks may spread over nodes: each node holds as many ranks as its CPUs and GPUs allow, and together they
    must hold `workers`. The message names the largest placement possible.
    """
    from trainer import Problem

    cpu, gpu = float(per_rank.get("cpu", 0)), float(per_rank.get("gpu", 0))
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive")]
    fits = [_ranks_on(res, cpu, gpu) for res in alive]
    if sum(fits) >= workers:
        return None
    asked = f"{cpu:g} CPU" + (f" and {gpu:g} GPU" if gpu else "")
    where_they_fit = ", ".join(f"{n}" for n in fits) if fits else "none"
    return Problem(
        source,
        "resources.workers",
        (
            f"each trial asks for {workers} workers of {asked} each, but {where} can place at most {sum(fits)} such "
            f"worker(s) at once (per node: {where_they_fit}; {len(alive)} node(s) alive); lower resources.workers to "
            f"{max(sum(fits), 1)} or less, lower the per-worker resources, or add nodes"
        ),
    )


def _ranks_on(resources: Mapping[str, float], cpu: float, gpu: float) -> int:
    counts = []
    if cpu > 0:
        counts.append(int(resources.get("CPU", 0) // cpu))
    if gpu > 0:
        counts.append(int(resources.get("GPU", 0) // gpu))
    return min(counts) if counts else 0


COORDINATOR = {"cpu": 0, "memory": 1}
"""What a multi-worker trial's Tune actor asks for: no CPU (it only waits on its ranks, so a node with one CPU
still holds a rank beside it) and one byte of memory, since Tune refuses an empty request."""


# ---- a failed Train run, judged ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RanksVerdict:
    """Why a Train run failed: `retry` True when a rank died (the job itself did not fail)."""

    message: str
    retry: bool


LOST_PEER = (
    "gloo",
    "nccl",
    "connection closed by peer",
    "connection reset by peer",
    "broken pipe",
    "DistBackendError",
    "DistNetworkError",
)
"""Words of an error a rank raises when another rank vanished under a collective: not the job's own error."""


def judge_failure(failures: Mapping[int, BaseException], workers: int, fallback: str = "") -> RanksVerdict:
    """How a multi-worker trial ended, from Ray Train's `WorkerGroupError.worker_failures` (rank -> error).

    A rank whose actor died (Ray's `RayActorError`) or that only lost its peers: `retry`, naming the ranks that
    died. Otherwise the job raised on a rank: that error (rank 0's first), not retried.
    """
    died = {rank: err for rank, err in failures.items() if _is_dead_actor(err)}
    lost = {rank: err for rank, err in failures.items() if rank not in died and _lost_peer(err)}
    raised = {rank: err for rank, err in failures.items() if rank not in died and rank not in lost}
    if died or (lost and not raised):
        ranks = died or lost
        what = "died" if died else "lost its peers"
        named = ", ".join(f"rank {rank} of {workers} {what} ({_last_line(err)})" for rank, err in sorted(ranks.items()))
        return RanksVerdict(named, retry=True)
    if raised:
        rank = min(raised)
        return RanksVerdict(f"rank {rank} of {workers}: {_last_line(raised[rank])}", retry=False)
    return RanksVerdict(fallback or f"the trial's {workers} ranks failed", retry=True)


def _is_dead_actor(err: BaseException) -> bool:
    """A rank's process (or node) is gone: Ray's actor errors, or Ray Train's failed health check of one."""
    dead = (
        "RayActorError",
        "ActorDiedError",
        "ActorUnavailableError",
        "NodeDiedError",
        "WorkerCrashedError",
        "WorkerHealthCheckFailedError",
        "WorkerHealthCheckTimeoutError",
    )
    return any(k.__name__ in dead for k in type(err).__mro__)


def _lost_peer(err: BaseException) -> bool:
    text = f"{type(err).__name__}: {err}".lower()
    return any(word.lower() in text for word in LOST_PEER)


def _last_line(err: BaseException, limit: int = 240) -> str:
    """The error's type and its last line, cut to `limit` characters (Ray's own run long)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    text = f"{type(err).__name__}: {lines[-1]}" if lines else type(err).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---- the Tune trial: a coordinator of N ranks ----------------------------------------------------------------


def runnable(cfg: Any, prepared: Any, per_rank: Mapping[str, float]) -> Any:
    """In the driver: the Tune trainable of a study whose trials run `resources.workers` ranks of `per_rank` each.

    The study's tokenized data is put in Ray's object store once, here; every rank of every trial reads it from
    there. The Tune trial itself (the coordinator, and Ray Train's controller beside it) asks for no CPU
    (`COORDINATOR`): the ranks ask for theirs."""
    import ray
    from ray import tune

    ranks = {
        "workers": cfg.resources.workers,
        "cpu": per_rank.get("cpu", 1),
        "gpu": per_rank.get("gpu", 0),
        "fsdp": cfg.resources.fsdp,
    }
    shared = {"ref": ray.put(prepared)} if prepared is not None else None
    return tune.with_resources(tune.with_parameters(_trial_class(), prepared=shared, ranks=ranks), dict(COORDINATOR))


GROUP_KEY = "placement_group"
"""The ready report's key for the ranks' placement group (its id, hex)."""


def release_group(group: str | None) -> None:
    """Remove the ranks' placement group `group` (an id, hex), if it is still there.

    Ray Train removes it when a run ends; after a killed controller only a cleaner of Ray Train's that needs Ray's
    state API (a dashboard) would. The trial removes it when Tune stops it, and the driver's scheduler when the
    trial ends in any way (its coordinator killed included): whichever comes first; the rest find it gone."""
    if not group:
        return
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    try:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(group))))
    except Exception:  # noqa: BLE001 - best-effort cleanup: already gone is fine
        pass


POLL_S = 0.5
"""How often a waiting trial looks whether its Train run ended without a report."""


def _trial_class() -> type:
    """`RanksTrial`, the Tune trainable of a multi-worker trial (built here: Ray is imported only where it runs).

    A class, not a function: Tune calls its `cleanup` when it stops the trial (pruned, or the run ends), and
    `cleanup` kills the actor that runs the Train run, so Ray ends what that actor owns (the Train controller,
    every rank, their placement group) at once. A function trial's actor outlives a stop while its thread
    waits on `fit()`, and its ranks train on.
    """
    import ray
    from ray import tune
    from ray.util.queue import Empty, Queue

    from search._trial_result import error_report, is_done, is_ready, lost_report

    class RanksTrial(tune.Trainable):
        def setup(
            self,
            config: dict[str, Any],
            prepared: Any = None,
            ranks: Mapping[str, Any] | None = None,
        ) -> None:
            self.results = Queue(maxsize=1, actor_options={"num_cpus": 0})  # rank 0's reports, one at a time
            # an actor handle: Ray's stubs type a created actor as handle-or-class, whose fit has no .remote
            self.run = cast(Any, ray.remote(num_cpus=0)(TrainRun).remote())
            self.fitted = self.run.fit.remote(config["sftune"], prepared, dict(ranks or {}), self.results)
            self.group: Any = None  # the ranks' placement group, which outlives a killed Train controller

        def step(self) -> dict[str, Any]:
            while True:
                try:
                    report = self.results.get(timeout=POLL_S)
                except Empty:
                    if ray.wait([self.fitted], timeout=0)[0]:
                        return self._ended(ray.get(self.fitted))
                    continue
                if is_ready(report):
                    self.group = report.get(GROUP_KEY)
                if is_done(report):
                    return {**report, "done": True}
                return report

        def _ended(self, verdict: dict[str, Any] | None) -> dict[str, Any]:
            if verdict is None:  # fit() returned after its last report: nothing more to say
                return {"done": True}
            if verdict["retry"]:
                return {**lost_report(verdict["message"]), "done": True}
            return {**error_report(verdict["message"], verdict["traceback"]), "done": True}

        def cleanup(self) -> None:
            actors: list[Any] = [self.run, self.results.actor]  # handles, however Ray's stubs type them
            for actor in actors:
                try:
                    ray.kill(actor, no_restart=True)
                except Exception:  # noqa: BLE001 - best-effort cleanup: a dead actor is fine
                    pass
            release_group(self.group)

    return RanksTrial


class TrainRun:
    """A Ray actor that fits one trial's TorchTrainer: it owns Ray Train's controller, so killing it ends the run."""

    def fit(self, spec: dict[str, Any], prepared: Any, ranks: dict[str, Any], results: Any) -> dict[str, Any] | None:
        """Train; None when the run finished, else `{message, retry, traceback}`: how it failed."""
        from ray import train
        from ray.train.torch import TorchConfig, TorchTrainer

        workers, gpu = int(ranks.get("workers", 2)), float(ranks.get("gpu", 0))
        per_rank = {"CPU": float(ranks.get("cpu", 1))} | ({"GPU": gpu} if gpu else {})
        storage = Path(tempfile.gettempdir()) / "sftune-ranks"  # Ray Train's own run files (no checkpoints)
        storage.mkdir(parents=True, exist_ok=True)
        trainer = TorchTrainer(
            rank_loop,
            train_loop_config={"sftune": spec, "prepared": prepared, "fsdp": ranks.get("fsdp")},
            torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
            scaling_config=train.ScalingConfig(
                num_workers=workers,
                use_gpu=bool(gpu),
                resources_per_worker=per_rank,
                placement_strategy=ranks.get("placement", "PACK"),
            ),
            run_config=train.RunConfig(
                name=f"trial_{spec['number']:04d}_{uuid.uuid4().hex[:8]}",
                storage_path=str(storage),
                callbacks=[_rank0_to(results)],
                # A retry is the driver's (the params queued again), never Ray Train's.
                # ray.train's FailureConfig is Train V2's at run time; mypy resolves it to V1's (ray.air), which
                # lacks these two
                failure_config=train.FailureConfig(  # type: ignore[call-arg]
                    max_failures=0, controller_failure_limit=0, max_preemption_failures=0
                ),
            ),
        )
        try:
            trainer.fit()
        except train.WorkerGroupError as exc:
            verdict = judge_failure(exc.worker_failures, workers)
            return {"message": verdict.message, "retry": verdict.retry, "traceback": str(exc)[-4000:]}
        except train.TrainingFailedError as exc:  # the controller's own failure (a group that could not start)
            return {
                "message": f"the trial's {workers} ranks failed: {_last_line(exc)}",
                "retry": True,
                "traceback": str(exc)[-4000:],
            }
        return None


def _rank0_to(results: Any) -> Any:
    """A Ray Train callback (it runs in the controller) that puts rank 0's report of each round in `results`."""
    from ray.train import UserCallback

    class Rank0Reports(UserCallback):
        def __init__(self, queue: Any) -> None:
            self.queue = queue

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            self.queue.put(dict(metrics[0]))  # blocks while the trial has not taken the previous one

    return Rank0Reports(results)


def rank_loop(loop_config: dict[str, Any]) -> None:
    """What each rank runs: the trial's job over the process group Ray Train set up; every report goes to Ray
    Train in step with the other ranks, and Tune hears rank 0's."""
    import ray
    import ray.train
    import torch.distributed as dist

    from search._ray.worker import effective_batch, run_trial_job
    from search._trial_result import ready_report

    spec = loop_config["sftune"]
    context = ray.train.get_context()
    rank, workers = context.get_world_rank(), context.get_world_size()
    node = ray.get_runtime_context().get_node_id()
    me = {"rank": rank, "pid": os.getpid(), "host": socket.gethostname(), "node": node}
    everyone: list[Any] = [None] * workers
    dist.all_gather_object(everyone, me)  # the process group is up: every rank's pid and node, for the trial
    shared = loop_config.get("prepared")
    prepared = ray.get(shared["ref"]) if isinstance(shared, dict) and "ref" in shared else shared
    group = ray.util.get_current_placement_group() if rank == 0 else None  # removed when the trial ends
    ray.train.report(
        ready_report(
            preloaded=False,
            host=me["host"],
            node=node,
            pid=me["pid"],
            ranks=everyone,
            effective_batch=effective_batch(spec["config"], workers),
            **{GROUP_KEY: group.id.hex() if group is not None else None},
        )
    )
    # An error raised here fails the Train run, which the trial judges (`judge_failure`).
    run_trial_job(spec, prepared, ray.train.report, node=node, files=rank == 0, fsdp=loop_config.get("fsdp"))
