"""An SFT trial's `eval_loss` is the mean over every validation target token: the same at any eval batch size."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import tiny

from trainer import config_from_dict, prepare, run_job


def _rows(n: int, seed: int) -> list[dict[str, str]]:
    """Answers from one to a dozen words: rows whose target token counts differ ten-fold."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        rows.append({"prompt": f"add {a} and {b} :", "response": " " + " ".join([str(a + b)] * rng.randint(1, 12))})
    return rows


def _config(tmp: Path, model_dir: Path, eval_batch_size: int) -> dict:
    tiny.write_jsonl(tmp / "data" / "train.jsonl", _rows(64, seed=1))
    tiny.write_jsonl(tmp / "data" / "val.jsonl", _rows(29, seed=2))
    return {
        "model": str(model_dir),
        "task": "sft",
        "data": {"train": "data/train.jsonl", "validation": "data/val.jsonl"},
        "peft": {"method": "full"},
        "train": {
            "learning_rate": 3e-3,
            "batch_size": 8,
            "eval_batch_size": eval_batch_size,
            "max_steps": 12,
            "eval_every": 6,
            "max_length": 32,
            "seed": 0,
            "precision": "fp32",
        },
        "save": "model",
        "output_dir": str(tmp / f"out-{eval_batch_size}"),
    }


def _by_hand(model_dir: Path, rows: list[dict]) -> tuple[float, float]:
    """(mean over all target tokens, Trainer's old figure at 7 rows a batch: the row-weighted mean of batch means)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    sums, counts = [], []
    with torch.no_grad():
        for row in rows:
            labels = torch.tensor([row["labels"]])
            loss = model(input_ids=torch.tensor([row["input_ids"]]), labels=labels).loss
            count = int((labels[:, 1:] != -100).sum())
            sums.append(float(loss) * count)
            counts.append(count)
    batches = [(sum(sums[i : i + 7]) / sum(counts[i : i + 7]), len(sums[i : i + 7])) for i in range(0, len(sums), 7)]
    return sum(sums) / sum(counts), sum(m * n for m, n in batches) / len(sums)


def test_eval_loss_is_the_same_at_eval_batch_sizes_1_7_and_64(tmp_path: Path, gpt2_dir: Path) -> None:
    losses = {}
    for size in (1, 7, 64):
        result = run_job(config_from_dict(_config(tmp_path, gpt2_dir, size), base_dir=tmp_path))
        losses[size] = result.metrics["eval_loss"]
    assert losses[1] == pytest.approx(losses[7], rel=1e-5) and losses[1] == pytest.approx(losses[64], rel=1e-5)

    prep = prepare(config_from_dict(_config(tmp_path, gpt2_dir, 7), base_dir=tmp_path))
    per_token, old_way = _by_hand(tmp_path / "out-7" / "model", list(prep.validation))
    assert losses[7] == pytest.approx(per_token, rel=1e-5)
    assert abs(old_way - per_token) > 1e-3 * per_token, "the rows must tell the two weightings apart"
