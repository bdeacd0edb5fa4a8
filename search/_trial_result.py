"""What a trial sends the driver: the one definition of its reports' keys, shared by the worker and the driver.

A trial reports, in order: one `ReadyReport` (where it runs), an `EvaluationReport` per evaluation
(its metrics at top level, beside the keys below), then one `FinalReport` (`DONE_KEY`) or one
`ErrorReport` (`ERROR_KEY`). A trial on another node than the driver adds its output files to the
final report (`FILES_KEY`, a tar from `pack`, written back by `unpack`). Tune may flatten a nested
dict to `key/name` entries: read them with `nested`. No Ray and no Optuna here: Ray workers import it.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any, TypedDict

ERROR_KEY = "sftune_error"
DONE_KEY = "sftune_done"
READY_KEY = "sftune_ready"
FILES_KEY = "sftune_files"
LOST_KEY = "sftune_lost"
"""A trial over several workers whose rank died: why (the trial fails as a dead worker does, its params queued)."""
MAX_FILES_BYTES = 512 * 2**20
"""Trial outputs larger than this stay on their node (a LoRA adapter is a few MB; a full model may not be)."""


class ReadyReport(TypedDict):
    """The first report: where the trial runs (kept as the trial's `node`, `host`, `worker_*` attributes)."""

    sftune_ready: bool
    preloaded: bool
    host: str
    node: str
    pid: int


class EvaluationReport(TypedDict, total=False):
    """One evaluation; the metrics themselves (`accuracy`, `eval_loss`, ...) sit beside these keys."""

    step: int
    max_steps: int | None
    seconds: dict[str, float]
    memory: dict[str, float]
    precision: str
    model_dtype: str
    generations: list[dict[str, str]]
    """With `eval:` generation metrics: a few samples of this evaluation (prompt, reference, output)."""
    template: str
    """The prompt format the data was tokenized with, in one line (sft: `chatml`, `file <path> sha256:<hash>`)."""


class FinalReport(TypedDict, total=False):
    """The end of a trial that ran to its end: its final metrics beside these keys."""

    sftune_done: bool
    step: int
    seconds: dict[str, float]
    data_warnings: dict[str, Any]
    memory: dict[str, float]
    sftune_files: bytes | None


class ErrorReport(TypedDict):
    """The end of a trial whose job raised: the last line of the error, and the end of its traceback."""

    sftune_error: str
    traceback: str


def ready_report(*, preloaded: bool, host: str, node: str, pid: int, **more: Any) -> dict[str, Any]:
    """`more`: `effective_batch` (rows per optimizer step) and, for a trial over several workers, `ranks` (each
    rank's rank, pid, host and node)."""
    return {**ReadyReport(sftune_ready=True, preloaded=preloaded, host=host, node=node, pid=pid), **more}


def evaluation_report(metrics: dict[str, float], step: int, **more: Any) -> dict[str, Any]:
    """`more`: the `EvaluationReport` keys a job knows (max_steps, seconds, memory, precision, model_dtype,
    template, generations)."""
    return {**metrics, "step": step, **more}


def final_report(metrics: dict[str, float], **more: Any) -> dict[str, Any]:
    """`more`: the `FinalReport` keys (step, seconds, data_warnings, memory); `files` adds `FILES_KEY`."""
    files = more.pop("files", None)
    report = {**metrics, **more, DONE_KEY: True}
    if files is not None:
        report[FILES_KEY] = files
    return report


def error_report(error: str, traceback: str) -> dict[str, Any]:
    return dict(ErrorReport(sftune_error=error, traceback=traceback))


def lost_report(why: str) -> dict[str, Any]:
    """The end of a multi-worker trial whose rank died (or whose ranks could not start): not the job's error."""
    return {LOST_KEY: why}


def lost_of(result: dict[str, Any] | None) -> str | None:
    """Why a multi-worker trial lost a rank, when it did, else None."""
    return str(result[LOST_KEY]) if result and LOST_KEY in result else None


def is_ready(result: dict[str, Any]) -> bool:
    return bool(result.get(READY_KEY))


def is_done(result: dict[str, Any] | None) -> bool:
    return bool(result and result.get(DONE_KEY))


def error_of(result: dict[str, Any] | None) -> str | None:
    """The job's error when the trial reported one, else None."""
    return str(result[ERROR_KEY]) if result and ERROR_KEY in result else None


def worker_attrs(ready: dict[str, Any]) -> dict[str, Any]:
    """A ready report as the trial's user attributes: node, host, worker_preloaded, worker_pid."""
    attrs: dict[str, Any] = {key: ready[key] for key in ("node", "host") if ready.get(key)}
    attrs["worker_preloaded"] = bool(ready.get("preloaded"))
    if ready.get("pid"):
        attrs["worker_pid"] = int(ready["pid"])
    if ready.get("effective_batch"):
        attrs["effective_batch"] = int(ready["effective_batch"])
    if ready.get("ranks"):  # a trial over several workers: worker_pid, node and host are rank 0's
        ranks = [dict(r) for r in ready["ranks"]]
        attrs.update({"workers": len(ranks), "ranks": ranks, "worker_pid": int(ranks[0]["pid"])})
        if ready.get("pid"):  # Tune's own pid of the trial's actor: the coordinator that waits on the ranks
            attrs["coordinator_pid"] = int(ready["pid"])
        attrs.update({key: ranks[0][key] for key in ("node", "host") if ranks[0].get(key)})
    return attrs


def step_of(result: dict[str, Any]) -> int:
    return int(result.get("step", 0))


def max_steps_of(result: dict[str, Any]) -> int | None:
    max_steps = result.get("max_steps")
    return int(max_steps) if max_steps else None


def nested(result: dict[str, Any], key: str) -> dict[str, Any]:
    """A dict the worker reported under `key` (Tune may flatten it to `key/name` entries)."""
    value = result.get(key)
    if isinstance(value, dict):
        return dict(value)
    return {k.split("/", 1)[1]: v for k, v in result.items() if k.startswith(key + "/")}


def seconds_of(result: dict[str, Any]) -> dict[str, float]:
    """The job's timing from a Tune result."""
    return nested(result, "seconds")


def memory_of(result: dict[str, Any]) -> dict[str, float]:
    """The job's CUDA memory figures (empty on CPU)."""
    return nested(result, "memory")


def data_warnings_of(result: dict[str, Any]) -> dict[str, Any]:
    return nested(result, "data_warnings")


def take_files(result: dict[str, Any]) -> bytes | None:
    """The output files a remote trial sent (removed from `result`), or None."""
    return result.pop(FILES_KEY, None)


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
                raise ValueError(f"refusing {member.name!r} from a trial's outputs: not a plain file inside its folder")
        tar.extractall(folder)
