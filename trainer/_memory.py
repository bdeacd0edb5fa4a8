"""A run's CUDA memory: the baseline before it, its peak as it goes, what is left after its release.

Figures are in MiB, written into a caller's dict (as `run_job`'s `timing` is), so a worker can
report them mid-run: `cuda_total_mb` (the device), `cuda_allocated_start_mb` (tensors alive before
the run: on a reused worker, what earlier runs left), `cuda_peak_mb` and `cuda_reserved_peak_mb`
(the most tensors and the most the caching allocator held so far; the first evaluation's report
carries the peak of the first steps and that evaluation), `cuda_allocated_end_mb` and
`cuda_reserved_end_mb` (after the run's objects are released and the cache emptied).
Without CUDA nothing is written.
"""

from __future__ import annotations

import gc

MB = 1024 * 1024


def _cuda() -> object | None:
    import torch

    return torch.cuda if torch.cuda.is_available() and torch.cuda.is_initialized() else None


def begin(memory: dict[str, float], device: str) -> None:
    """Before the run's model exists: the device's size and the baseline; the peak counts from here."""
    if device != "cuda":
        return
    import torch

    cuda = torch.cuda
    cuda.init()
    cuda.reset_peak_memory_stats()
    memory["cuda_total_mb"] = round(cuda.get_device_properties(cuda.current_device()).total_memory / MB, 1)
    memory["cuda_allocated_start_mb"] = round(cuda.memory_allocated() / MB, 1)


def note_peak(memory: dict[str, float]) -> None:
    """The peak so far (call at each evaluation, before it is reported)."""
    cuda = _cuda()
    if cuda is None or "cuda_total_mb" not in memory:
        return
    memory["cuda_peak_mb"] = round(cuda.max_memory_allocated() / MB, 1)  # type: ignore[attr-defined]
    memory["cuda_reserved_peak_mb"] = round(cuda.max_memory_reserved() / MB, 1)  # type: ignore[attr-defined]


def release(memory: dict[str, float]) -> None:
    """After the run's last reference is dropped: collect its cycles, empty the cache, record what is left.

    Only with CUDA: on CPU the model goes with its last reference, and a full collection (about a
    second on a busy machine) would delay the end of a pruned trial's thread past the 2 s a reused
    Ray actor waits for it (TUNE_FUNCTION_THREAD_TIMEOUT_S), which then fails the actor's reuse.
    """
    cuda = _cuda()
    if cuda is None or "cuda_total_mb" not in memory:
        return
    gc.collect()
    note_peak(memory)
    cuda.empty_cache()  # type: ignore[attr-defined]
    memory["cuda_allocated_end_mb"] = round(cuda.memory_allocated() / MB, 1)  # type: ignore[attr-defined]
    memory["cuda_reserved_end_mb"] = round(cuda.memory_reserved() / MB, 1)  # type: ignore[attr-defined]
