"""Running out of memory is an outcome of a trial's params, not a fault of the machine it ran on.

A job that raises torch's `OutOfMemoryError` (CUDA), Python's `MemoryError` or torch's CPU allocator's
"can't allocate memory" ends with `OutOfMemory`: "out of memory at step N (peak X MiB)". A study trial
that ends so is FAIL with that message and its params are not run again (they would run out again);
the study goes on. No batch halving: see docs/train-config.md.
"""

from __future__ import annotations

import resource
from typing import Any

MB = 1024 * 1024


class OutOfMemory(RuntimeError):
    """The job ran out of memory; `step` is the optimizer step it was in, `peak_mib` the most it held."""

    def __init__(self, step: int, peak_mib: float, device: str, detail: str = "") -> None:
        self.step, self.peak_mib, self.device = step, peak_mib, device
        where = "GPU memory allocated" if device == "cuda" else "process resident memory"
        super().__init__(
            f"out of memory at step {step} (peak {peak_mib:.0f} MiB, {where})" + (f": {detail}" if detail else "")
        )


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


def peak_mib(device: str) -> float:
    """The run's peak: CUDA's most allocated since the run began (trainer._memory resets it); on CPU the
    process's peak resident set (Linux reports KiB)."""
    import torch

    if device == "cuda" and torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / MB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def out_of_memory(exc: BaseException, state: Any, model: Any, device: str) -> OutOfMemory:
    """`exc` as an OutOfMemory at the step Trainer's `state` was in (the one under way while training)."""
    done = int(getattr(state, "global_step", 0) or 0)
    step = done + 1 if model is None or getattr(model, "training", True) else done
    detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return OutOfMemory(step, peak_mib(device), device, detail)
