"""Scale benchmark: `sftune status` and `sftune export` on a study database of 10,000 finished trials.

    python tests/benchmarks/scale.py [--trials 10000] [--storage URL] [--out DIR]

Builds the study (SQLite by default; any SQLAlchemy URL, e.g. PostgreSQL, with --storage) with the
trials a real study stores (params, full config, one intermediate value per evaluation, history),
then times the real CLI commands, each a fresh process, three times, and prints the figures.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

REPO = Path(__file__).resolve().parents[2]


def build(storage: str, name: str, n: int, base: dict) -> float:
    t0 = time.time()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.set_user_attr("objective_metrics", ["accuracy"])
    rng = random.Random(0)
    dists = {
        "train.learning_rate": FloatDistribution(1e-5, 1e-3, log=True),
        "train.batch_size": CategoricalDistribution([8, 16, 32]),
        "peft.r": IntDistribution(4, 64, log=True),
    }
    batch = []
    for i in range(n):
        params = {
            "train.learning_rate": 10 ** rng.uniform(-5, -3),
            "train.batch_size": rng.choice([8, 16, 32]),
            "peft.r": rng.randint(4, 64),
        }
        pruned = rng.random() < 0.6
        steps = [50] if pruned else [50, 100, 150, 200]
        curve = {s: min(0.95, 0.5 + rng.random() * 0.1 * (j + 1)) for j, s in enumerate(steps)}
        config = {
            **base,
            "train": {
                **base["train"],
                "learning_rate": params["train.learning_rate"],
                "batch_size": params["train.batch_size"],
            },
            "peft": {**base["peft"], "r": params["peft.r"]},
            "output_dir": f"runs/scale/trials/{i:05d}",
        }
        batch.append(
            create_trial(
                state=TrialState.PRUNED if pruned else TrialState.COMPLETE,
                value=curve[steps[-1]],
                params=params,
                distributions=dists,
                intermediate_values=curve,
                user_attrs={"config": config, "history": [{"step": s, "accuracy": v} for s, v in curve.items()]},
            )
        )
        if len(batch) == 500:
            study.add_trials(batch)
            batch = []
    study.add_trials(batch)
    return time.time() - t0


def timed(cmd: list[str]) -> float:
    t0 = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.time() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=10_000)
    p.add_argument("--storage", default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="sftune-scale-"))
    out.mkdir(parents=True, exist_ok=True)
    storage = args.storage or f"sqlite:///{out / 'scale.db'}"
    base = yaml.safe_load((REPO / "studies" / "quickstart-train.yaml").read_text())
    base["data"] = {
        k: str((REPO / "studies" / v).resolve()) if k in ("train", "validation") else v for k, v in base["data"].items()
    }
    name = f"scale-{args.trials}"
    study_file = out / "scale.yaml"
    study_file.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "storage": storage,
                "objective": {"metric": "accuracy"},
                "base": base,
                "space": str(REPO / "spaces" / "lora-classification.yaml"),
                "budget": {"n_trials": args.trials},
            }
        )
    )
    print(f"building {args.trials} trials in {storage} ...", flush=True)
    print(f"  built in {build(storage, name, args.trials, base):.1f}s", flush=True)
    sftune = [sys.executable, "-m", "search"]
    rows = [
        ("sftune status", [*sftune, "status", str(study_file)]),
        ("sftune status --json", [*sftune, "status", str(study_file), "--json"]),
        ("sftune export (best)", [*sftune, "export", str(study_file), "--out", str(out / "best.yaml")]),
        (
            "sftune export --trial 1234",
            [
                *sftune,
                "export",
                str(study_file),
                "--out",
                str(out / "t.yaml"),
                "--trial",
                str(min(1234, args.trials - 1)),
            ],
        ),
        ("python -c 'import search.cli' (floor)", [sys.executable, "-c", "import search.cli, trainer"]),
    ]
    print(f"\n{args.trials} finished trials, {storage.split(':')[0]}; each command a fresh process, 3 runs")
    print("| command | median s | min s |\n|---|---|---|")
    for label, cmd in rows:
        times = [timed(cmd) for _ in range(3)]
        print(f"| {label} | {statistics.median(times):.2f} | {min(times):.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
