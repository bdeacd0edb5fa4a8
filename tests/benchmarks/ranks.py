"""Two CPU workers against one (`resources.workers`), at the same effective batch: what docs/clusters.md reports.

Runs `sftune run` twice on a fresh local cluster, each a one-trial study of a tiny full fine-tune (120 optimizer
steps, an evaluation every 20) with `resources.batch: effective` and `train.batch_size: 32`: once with one
worker of 2 threads, once with two workers of 1 thread each (16 rows per rank). Prints, per run, the trial's wall
time, how long after the driver's ask the job started (the start-up a multi-worker trial adds), the job's own
setup / train / eval seconds, and the eval_loss curve.

    python tests/benchmarks/ranks.py /tmp/ranks-bench
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import optuna
import tiny
import yaml

RUNS = {
    "one worker x 2 threads": {"cpu": 2, "workers": 1, "batch": "effective"},
    "two workers x 1 thread": {"cpu": 1, "workers": 2, "batch": "effective"},
}


def main(folder: Path) -> dict[str, dict]:
    folder.mkdir(parents=True, exist_ok=True)
    bert = folder / "bert"
    if not bert.exists():
        tiny.make_model(bert, "bert")
    out = {}
    for i, (label, resources) in enumerate(RUNS.items()):
        name = f"ranks{i}"
        path = tiny.study_file(
            folder,
            bert,
            name=name,
            n_trials=1,
            concurrency=1,
            max_steps=120,
            eval_every=20,
            space={"train.batch_size": {"type": "categorical", "choices": [32]}},
            sampler={"name": "grid"},
            resources=resources,
            objective={"metric": "eval_loss", "direction": "minimize"},
        )
        data = yaml.safe_load(path.read_text())
        data["base"]["peft"] = {"method": "full"}
        path.write_text(yaml.safe_dump(data))
        began = time.time()
        run = subprocess.run([sys.executable, "-m", "search", "run", str(path)], capture_output=True, text=True)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        trial = optuna.load_study(study_name=name, storage=f"sqlite:///{folder / (name + '.db')}").trials[0]
        seconds = trial.user_attrs["seconds"]
        asked = trial.datetime_start.timestamp()
        out[label] = {
            "run_s": round(time.time() - began, 1),
            "trial_s": round(trial.datetime_complete.timestamp() - asked, 1),
            "job_starts_after_ask_s": round(seconds["started_at"] - asked, 1),
            **{f"{k}_s": round(seconds[k], 2) for k in ("setup", "train", "eval")},
            "effective_batch": trial.user_attrs["effective_batch"],
            "eval_loss": {step: round(v, 4) for step, v in sorted(trial.intermediate_values.items())},
        }
        print(label, json.dumps(out[label]), flush=True)
    return out


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/sftune-ranks-bench"))
