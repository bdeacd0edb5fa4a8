"""How many trials share one GPU, and whether their measured memory fits it.

With a fractional `resources.gpu` (0.25: four trials per GPU), Ray places trials by their GPU share
alone; it knows nothing of memory. The rule here is simple and says what it knows:

- trials on one GPU: at most floor(1 / resources.gpu), and never more than `budget.concurrency`;
- what a trial needs: the most memory its process's caching allocator held (`cuda_reserved_peak_mb`,
  the largest any trial has reported so far; the first evaluation's report already carries the
  peak of the first steps and of that evaluation) plus `CONTEXT_MB` for the CUDA context each
  process has on top (not seen by torch's allocator);
- it fits when trials-per-GPU x need <= the GPU's memory (`cuda_total_mb`, reported by the trial);
  above 90 % of it is tight; above it is over: trials will run out of memory.

Before any trial has reported, the peak is not known and `packing_note` says so. A later trial with
a larger batch, rank or length may need more than the peak seen so far: this is a floor, not a bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CONTEXT_MB = 500.0
"""Per-process CUDA context and kernels (not counted by torch's allocator): about 0.3 to 0.6 GiB."""
TIGHT = 0.9


def trials_per_gpu(gpu_share: float, concurrency: int) -> int:
    """The most trials Ray may place on one GPU: floor(1 / share), capped by the concurrency."""
    if gpu_share <= 0:
        return 0
    return max(1, min(concurrency, math.floor(1.0 / gpu_share + 1e-9)))


@dataclass
class Packing:
    verdict: str
    """fits | tight | over | unknown"""
    per_gpu: int
    need_mb: float | None = None
    total_mb: float | None = None
    fit: int | None = None
    """Trials of this size one GPU holds."""
    message: str = ""


def check_packing(gpu_share: float, concurrency: int, memory: dict[str, float] | None) -> Packing:
    """Judge `concurrency` trials of `gpu_share` each against a trial's reported CUDA memory figures."""
    per_gpu = trials_per_gpu(gpu_share, concurrency)
    memory = memory or {}
    peak = memory.get("cuda_reserved_peak_mb")
    total = memory.get("cuda_total_mb")
    if per_gpu == 0:
        return Packing("fits", 0, message="trials use no GPU")
    if peak is None or not total:
        return Packing(
            "unknown",
            per_gpu,
            message=(
                f"up to {per_gpu} trials per GPU (resources.gpu={gpu_share:g}); their memory is not known until "
                "a trial's first evaluation reports its peak"
            ),
        )
    need = peak + CONTEXT_MB
    fit = max(0, math.floor(total / need))
    used = per_gpu * need
    share = math.floor(1000 / fit) / 1000 if fit else 1.0  # floor(1 / share) == fit
    head = (
        f"{per_gpu} trials per GPU (resources.gpu={gpu_share:g}) x {need:,.0f} MiB each "
        f"({peak:,.0f} MiB peak held by a trial + {CONTEXT_MB:.0f} MiB CUDA context) = {used:,.0f} MiB "
        f"of {total:,.0f} MiB"
    )
    if used > total:
        return Packing(
            "over",
            per_gpu,
            need,
            total,
            fit,
            head + f": over; trials will run out of memory. One GPU "
            f"holds {fit} such trials: set resources.gpu: {share:g} ({fit} per GPU) or more"
            + ("" if fit else "; a trial alone needs more than the GPU has"),
        )
    if used > TIGHT * total:
        return Packing(
            "tight",
            per_gpu,
            need,
            total,
            fit,
            head + ": tight; a trial with a larger batch, rank or length than those seen so far may run out of memory",
        )
    return Packing(
        "fits",
        per_gpu,
        need,
        total,
        fit,
        head + (f": fits (one GPU would hold {fit} such trials)" if fit > per_gpu else ": fits"),
    )
