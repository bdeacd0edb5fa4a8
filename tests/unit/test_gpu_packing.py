"""The trials-per-GPU rule: what fits one GPU, from a trial's reported memory; unknown until reported."""

from __future__ import annotations

import math

import pytest

from search._ray.gpu import CONTEXT_MB, check_packing, trials_per_gpu


@pytest.mark.parametrize(
    "share, concurrency, expected",
    [
        (0.25, 8, 4),
        (0.25, 2, 2),
        (1 / 3, 8, 3),
        (0.3, 8, 3),
        (0.5, 1, 1),
        (1.0, 4, 1),
        (2.0, 4, 1),
        (0, 4, 0),
    ],
)
def test_trials_per_gpu(share: float, concurrency: int, expected: int) -> None:
    assert trials_per_gpu(share, concurrency) == expected


def test_unknown_until_a_trial_reports_its_peak() -> None:
    verdict = check_packing(0.25, 8, None)
    assert verdict.verdict == "unknown" and verdict.per_gpu == 4
    assert "not known" in verdict.message
    assert check_packing(0.25, 8, {"cuda_total_mb": 80_000}).verdict == "unknown"


def test_fits_tight_and_over() -> None:
    total = 80_000.0
    fits = check_packing(0.25, 8, {"cuda_reserved_peak_mb": 3_000, "cuda_total_mb": total})
    assert (fits.verdict, fits.per_gpu, fits.need_mb) == ("fits", 4, 3_000 + CONTEXT_MB)
    assert fits.fit == math.floor(total / (3_000 + CONTEXT_MB))
    tight = check_packing(0.125, 8, {"cuda_reserved_peak_mb": 9_000, "cuda_total_mb": total})
    assert tight.verdict == "tight"  # 8 x 9,500 = 76,000 > 90 % of 80,000
    over = check_packing(0.125, 8, {"cuda_reserved_peak_mb": 11_000, "cuda_total_mb": total})
    assert over.verdict == "over" and over.fit == 6
    assert "resources.gpu: 0.166 (6 per GPU)" in over.message
    assert trials_per_gpu(0.166, 99) == 6  # the share it suggests packs exactly that many


def test_a_trial_larger_than_the_gpu() -> None:
    over = check_packing(0.5, 2, {"cuda_reserved_peak_mb": 90_000, "cuda_total_mb": 80_000})
    assert over.verdict == "over" and over.fit == 0
    assert "needs more than the GPU has" in over.message


def test_no_gpu_share_needs_no_check() -> None:
    assert check_packing(0, 8, {"cuda_reserved_peak_mb": 1e9, "cuda_total_mb": 1}).verdict == "fits"
