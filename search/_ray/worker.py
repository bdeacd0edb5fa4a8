"""The worker side of the Ray adapter: the function each Tune trial runs.

A trial gets its complete train config through Tune's own trial config and the study's tokenized data
through Ray's object store (`tune.with_parameters`), so a node needs the installed package and the
model, not the driver's files. It reports where it runs, then every evaluation; the driver decides.
Nothing here imports Optuna, and a stub job (driver benchmarks) never imports the training stack.
"""

from __future__ import annotations

import importlib
import io
import os
import socket
import sys
import tarfile
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable

ERROR_KEY = "sftune_error"
DONE_KEY = "sftune_done"
READY_KEY = "sftune_ready"
FILES_KEY = "sftune_files"
MAX_FILES_BYTES = 512 * 2**20
"""Trial outputs larger than this stay on their node (a LoRA adapter is a few MB; a full model may not be)."""


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
    tune.report({READY_KEY: True, "preloaded": preloaded, "host": socket.gethostname(), "node": node,
                 "pid": os.getpid()})
    try:
        if spec.get("job"):
            _run_stub(spec, tune)
            return
        from trainer import config_from_dict, resolve_precision, run_job

        number = spec["number"]
        cfg = config_from_dict(spec["config"], source=f"trial {number}")
        cfg.output_dir = str(writable_dir(Path(cfg.output_dir)))
        timing: dict[str, float] = {}
        memory: dict[str, float] = {}  # CUDA figures (trainer._memory); empty on CPU
        precision = resolve_precision(cfg.train.precision)[1]  # what run_job will use: bf16 | fp32

        class TuneReporter:
            def report(self, step: int, metrics: dict[str, float]) -> bool:
                tune.report({**metrics, "step": step, "max_steps": timing.get("max_steps"),
                             "seconds": dict(timing), "memory": dict(memory), "precision": precision})
                return False  # the scheduler in the driver stops a pruned trial

        keep_best = tuple(spec["keep_best"]) if spec.get("keep_best") else None  # objective.use: best
        result = run_job(cfg, TuneReporter(), threads=cfg.train.threads, prepared=prepared, timing=timing,
                         evaluate_test=False, keep_best=keep_best, memory=memory)  # never the test split
        final = {**result.metrics, "step": result.step, DONE_KEY: True, "seconds": result.seconds,
                 "data_warnings": result.data_warnings, "memory": result.memory}
        if spec.get("driver_node") not in (None, node):  # the driver cannot read this node's disk
            final[FILES_KEY] = pack(Path(cfg.output_dir))
        tune.report(final)
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


def writable_dir(wanted: Path) -> Path:
    """The trial's output folder: the driver's path where this node can write it, else a local temp folder."""
    try:
        wanted.mkdir(parents=True, exist_ok=True)
        return wanted
    except OSError:
        local = Path(tempfile.gettempdir()) / "sftune-trials" / wanted.parent.parent.name / wanted.name
        local.mkdir(parents=True, exist_ok=True)
        return local


def pack(folder: Path) -> bytes | None:
    """A trial's outputs (metrics.json, config.yaml, a saved adapter or model) as one tar, for the driver."""
    files = [f for f in folder.rglob("*") if f.is_file() and "_trainer" not in f.relative_to(folder).parts]
    if sum(f.stat().st_size for f in files) > MAX_FILES_BYTES:
        return None
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for f in files:
            tar.add(f, arcname=str(f.relative_to(folder)))
    return buf.getvalue()


def unpack(data: bytes, folder: Path) -> None:
    """In the driver: a remote trial's outputs written into its output folder."""
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4+ (Debian 12's 3.11.2 has no filters)
            tar.extractall(folder, filter="data")
            return
        root = folder.resolve()
        for member in tar.getmembers():  # the same rule by hand: plain files and folders inside `folder`
            target = (folder / member.name).resolve()
            if not (member.isfile() or member.isdir()) or not target.is_relative_to(root):
                raise ValueError(f"refusing {member.name!r} from a trial's outputs: not a plain file inside "
                                 "its folder")
        tar.extractall(folder)
