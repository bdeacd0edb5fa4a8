"""The worker side of the Ray adapter: the function each Tune trial runs.

A trial gets its complete train config through Tune's own trial config and the study's tokenized data
through Ray's object store (`tune.with_parameters`), so a node needs the installed package and the
model, not the driver's files. It reports where it runs, then every evaluation, then how it ended, each
as `search._trial_result` defines it; the driver decides.
Nothing here imports Optuna, and a stub job (driver benchmarks) never imports the training stack.
"""

from __future__ import annotations

import importlib
import os
import socket
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from search._trial_result import error_report, evaluation_report, final_report, pack, ready_report


def _import(ref: str) -> Callable[..., dict[str, float]]:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def trainable(config: dict[str, Any], prepared: Any = None) -> None:
    """Runs in a Ray worker: say where it runs, train (or run a stub job), report every evaluation."""
    import ray
    from ray import tune

    spec = config["sftune"]
    preloaded = "transformers.trainer" in sys.modules  # a warmed (or reused) worker
    node = ray.get_runtime_context().get_node_id()
    tune.report(
        ready_report(
            preloaded=preloaded,
            host=socket.gethostname(),
            node=node,
            pid=os.getpid(),
            effective_batch=effective_batch(spec.get("config"), workers=1),
        )
    )
    try:
        if spec.get("job"):
            _run_stub(spec, tune)
            return
        run_trial_job(spec, prepared, tune.report, node=node)
    except Exception as exc:  # reported as the trial's error, kept in the database
        if type(exc).__name__ in ("SessionTerminatedError", "StopIteration"):
            raise
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        if type(exc).__name__ == "OutOfMemory":  # trainer's: its message is the outcome ("out of memory at step N")
            last = str(exc)
        tune.report(error_report(last, traceback.format_exc()[-4000:]))


def run_trial_job(
    spec: dict[str, Any],
    prepared: Any,
    send: Callable[[dict[str, Any]], None],
    *,
    node: str,
    files: bool = True,
    fsdp: str | None = None,
) -> None:
    """The trial's fine-tuning job: each evaluation, then the final report, through `send` (Tune's report in a
    trial's worker; Ray Train's in each rank of a trial over several workers, `search._ray.ranks`). `files`:
    whether a node other than the driver's sends the trial's output files back (rank 0's only); `fsdp`: the
    Trainer's FSDP option of a full fine-tune sharded over the ranks."""
    from trainer import config_from_dict, describe_template, resolve_model_dtype, resolve_precision, run_job

    number = spec["number"]
    cfg = config_from_dict(spec["config"], source=f"trial {number}")
    cfg.output_dir = str(writable_dir(Path(cfg.output_dir)))
    timing: dict[str, float] = {}
    memory: dict[str, float] = {}  # CUDA figures (trainer._memory); empty on CPU
    precision = resolve_precision(cfg.train.precision)[1]  # what run_job will use: bf16 | fp32
    template = describe_template(prepared.template) if prepared is not None else ""  # e.g. chatml
    # fp32 | bf16 | fp16: what the weights are held in
    model_dtype = resolve_model_dtype(cfg.train.model_dtype, cfg.peft.method, precision=cfg.train.precision)

    generations: list[dict[str, Any]] = []  # each generating evaluation's samples (`eval:`)

    class TuneReporter:
        def report(self, step: int, metrics: dict[str, float]) -> bool:
            fresh = generations[-1] if generations and generations[-1]["step"] == step else None
            send(
                evaluation_report(
                    metrics,
                    step,
                    max_steps=timing.get("max_steps"),
                    seconds=dict(timing),
                    memory=dict(memory),
                    precision=precision,
                    model_dtype=model_dtype,
                    **({"template": template} if template else {}),
                    **({"generations": fresh["samples"]} if fresh else {}),
                )
            )
            return False  # the scheduler in the driver stops a pruned trial

    keep_best = tuple(spec["keep_best"]) if spec.get("keep_best") else None  # objective.use: best
    result = run_job(
        cfg,
        TuneReporter(),
        threads=cfg.train.threads,
        prepared=prepared,
        timing=timing,
        evaluate_test=False,
        keep_best=keep_best,
        memory=memory,  # never the test split
        generations=generations,
        fsdp=fsdp or None,
    )
    remote = files and spec.get("driver_node") not in (None, node)  # the driver cannot read this node's disk
    send(
        final_report(
            result.metrics,
            step=result.step,
            seconds=result.seconds,
            data_warnings=result.data_warnings,
            memory=result.memory,
            **({"files": pack(Path(cfg.output_dir))} if remote else {}),
        )
    )


def _run_stub(spec: dict[str, Any], tune: Any) -> None:
    """A `module:function(config, report) -> final metrics` job: what the driver benchmark runs."""
    job = _import(spec["job"])

    def report(step: int, metrics: dict[str, float]) -> None:
        tune.report(evaluation_report(metrics, step))

    final = job(spec["config"], report)
    tune.report(final_report(final))


def effective_batch(config: Any, workers: int) -> int | None:
    """Rows per optimizer step of a trial config: the per-device batch x workers x gradient accumulation."""
    train = config.get("train") if isinstance(config, dict) else None
    if not isinstance(train, dict):
        return None
    return int(train.get("batch_size") or 16) * workers * int(train.get("gradient_accumulation") or 1)


def writable_dir(wanted: Path) -> Path:
    """The trial's output folder: the driver's path where this node can write it, else a local temp folder."""
    try:
        wanted.mkdir(parents=True, exist_ok=True)
        return wanted
    except OSError:
        local = Path(tempfile.gettempdir()) / "sftune-trials" / wanted.parent.parent.name / wanted.name
        local.mkdir(parents=True, exist_ok=True)
        return local
