"""On a GPU, a process that runs trial after trial (a reused Ray worker) returns to its memory baseline.

Six short trials of the bundled MiniLM + LoRA run one after another in this process, which is what
a reused Ray worker does: three run to the end, three are stopped at their first evaluation the way
Ray stops a pruned trial (its report raises SystemExit(0)). After each, the CUDA memory still
allocated must be back at the baseline, and the trial must have recorded its figures.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SHARED_DATA

from trainer import config_from_dict, run_job

pytestmark = pytest.mark.integration

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU (torch.cuda.is_available() is False here)", allow_module_level=True)

MB = 1024 * 1024
SLACK_MB = 8.0
"""What may stay between trials besides the baseline; MiniLM alone is ~87 MiB in fp32."""


class _PrunedAtFirst:
    def report(self, step: int, metrics: dict) -> bool:
        raise SystemExit(0)  # what Ray's tune.report does in a trial the scheduler stopped


def test_six_trials_in_one_process_return_to_the_memory_baseline(tmp_path: Path) -> None:
    base = {
        "model": "minilm-l6",
        "task": "classification",
        "data": {
            "train": str(SHARED_DATA / "sst2" / "train.jsonl"),
            "validation": str(SHARED_DATA / "sst2" / "validation.jsonl"),
            "max_train_samples": 512,
            "max_eval_samples": 128,
        },
        "peft": {"method": "lora", "r": 8},
        "train": {"learning_rate": 1e-3, "batch_size": 32, "max_steps": 20, "eval_every": 10, "max_length": 64},
    }
    torch.cuda.init()
    start = torch.cuda.memory_allocated()
    ends, records = [], []
    for i in range(6):
        cfg = config_from_dict(
            {**base, "output_dir": str(tmp_path / f"t{i}"), "peft": {"method": "lora", "r": 4 * (i + 1)}},
            source=f"trial {i}",
        )
        memory: dict[str, float] = {}
        if i % 2:
            with pytest.raises(SystemExit):
                run_job(cfg, _PrunedAtFirst(), memory=memory)
        else:
            assert run_job(cfg, memory=memory).memory is memory
        ends.append(torch.cuda.memory_allocated())
        records.append(memory)
    print("\nCUDA memory per trial (MiB):", *records, sep="\n  ")
    # The first trial may leave what a CUDA process keeps once it has run kernels (cuBLAS workspace);
    # from then on every trial must end where the one before it ended.
    baseline = ends[0]
    assert (baseline - start) / MB < SLACK_MB, f"the first trial left {(baseline - start) / MB:.1f} MiB allocated"
    for i, end in enumerate(ends[1:], start=1):
        assert abs(end - baseline) / MB < SLACK_MB, f"trial {i} ended {(end - baseline) / MB:+.1f} MiB off baseline"
    for _i, memory in enumerate(records):
        assert memory["cuda_peak_mb"] > memory["cuda_allocated_start_mb"] + 50, memory  # the model was there
        assert abs(memory["cuda_allocated_end_mb"] - baseline / MB) < SLACK_MB, memory
        assert memory["cuda_reserved_end_mb"] < memory["cuda_reserved_peak_mb"], memory  # the cache was emptied
        assert memory["cuda_total_mb"] > 1000
