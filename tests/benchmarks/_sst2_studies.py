"""What the study benchmarks share (warm_start_studies.py, mo_pruner.py): a seeded sample of SST-2 (or tiny
synthetic rows and a tiny random model), a classification study file over the shipped LoRA space, and a real
`sftune run` of it."""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO / "tests"))  # tests/tiny.py, for --quick


def add_arguments(parser: argparse.ArgumentParser, max_steps: int) -> None:
    """The options every study benchmark has: seeds, --quick, trials per study, steps per trial, data sizes."""
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--quick", action="store_true", help="tiny random model and synthetic data")
    parser.add_argument("--n-trials", type=int, default=8)
    parser.add_argument("--max-steps", type=int, default=max_steps)
    parser.add_argument("--train-samples", type=int, default=800)
    parser.add_argument("--eval-samples", type=int, default=300)


def sample_rows(out: Path, quick: bool, seed: int, n_train: int, n_val: int) -> tuple[str, list[str], list[str]]:
    """The model, and `n_train` training and `n_val` validation rows as JSON lines (SST-2 sampled with `seed`,
    or tiny synthetic rows and a tiny random model written under `out` with `quick`)."""
    out.mkdir(parents=True, exist_ok=True)
    if quick:
        import tiny

        model = str(tiny.make_model(out / "model", "bert"))
        train = [json.dumps(r) for r in tiny.sentiment_rows(n_train, seed=seed + 10)]
        val = [json.dumps(r) for r in tiny.sentiment_rows(n_val, seed=seed + 99)]
        return model, train, val
    rng = random.Random(seed)
    train = rng.sample((SHARED / "sst2" / "train.jsonl").read_text().splitlines(), n_train)
    val = (SHARED / "sst2" / "validation.jsonl").read_text().splitlines()
    return "minilm-l6", train, rng.sample(val, min(n_val, len(val)))  # the quickstart's bundled model


def write_rows(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n")
    return path


def study_file(
    out: Path,
    name: str,
    model: str,
    train: Path,
    val: Path,
    args: argparse.Namespace,
    *,
    seed: int,
    objective: Any,
    pruner: dict[str, Any],
    eval_every: int,
    **extra: Any,
) -> Path:
    """`out/<name>.yaml`: a study of MiniLM + LoRA (batch 16, lr 3e-4, r 8 in the base) over the shipped
    `lora-classification` space (a two-param space with `--quick`), `--n-trials` trials of `--max-steps` steps,
    2 one-CPU trials at a time, TPE with `seed`, its database `out/studies.db`; `extra` adds top-level keys
    (`warm_start`)."""
    data: dict[str, Any] = {
        "name": name,
        "storage": f"sqlite:///{out / 'studies.db'}",
        "objective": objective,
        "sampler": {"name": "tpe", "seed": seed},
        "pruner": pruner,
        "budget": {"n_trials": args.n_trials, "concurrency": 2},
        "resources": {"cpu": 1},
        "base": {
            "model": model,
            "task": "classification",
            "data": {"train": str(train), "validation": str(val)},
            "peft": {"method": "lora", "r": 8, "alpha": 16},
            "train": {
                "learning_rate": 3e-4,
                "batch_size": 16,
                "max_steps": args.max_steps,
                "eval_every": eval_every,
                "max_length": 64,
                "seed": 0,
            },
        },
        "space": "lora-classification"
        if not args.quick
        else {
            "train.learning_rate": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
            "peft.r": {"type": "int", "low": 2, "high": 16},
        },
        "output_dir": str(out / "runs" / name),
        **extra,
    }
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_study(path: Path, out: Path) -> None:
    """`sftune run` on the study file, its output in `out/<name>.log`; raises if it does not exit 0."""
    with (out / f"{path.stem}.log").open("w") as log:
        cmd = [sys.executable, "-m", "search", "run", str(path)]
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=out)
