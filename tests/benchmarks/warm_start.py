"""What the Ray door's warm-worker reaches buy: time from `sftune run` to the first training step, with and
without warm workers (search._ray.cluster.warm_workers, over search/_ray/_internals.py).

    python tests/benchmarks/warm_start.py              # the quickstart (bundled MiniLM), 3 runs of each
    python tests/benchmarks/warm_start.py --tiny       # a tiny random model: the start-up alone
    python tests/benchmarks/warm_start.py --repeat 5

Each run is a fresh `sftune run` in its own folder (2 trials, 2 at a time, 10 steps each, nothing
cached): "warm" is sftune as shipped; "cold" replaces `warm_workers` with nothing, so each trial's
actor starts a fresh Ray worker that imports the training stack when the trial begins. The runs
alternate, so both see the same machine load. Prints each run's figures and the medians.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

COLD = (
    "import sys, search._ray.cluster as c; c.warm_workers = lambda warm: []; "
    "from search.cli import main; sys.exit(main(sys.argv[1:]))"
)


def study_file(out: Path, tiny_model: bool) -> Path:
    if tiny_model:
        import tiny

        return tiny.study_file(
            out, tiny.make_model(out / "model", "bert"), name="warm", n_trials=2, concurrency=2, max_steps=10
        )
    study = yaml.safe_load((REPO / "studies" / "quickstart.yaml").read_text())
    base = yaml.safe_load((REPO / "studies" / "quickstart-train.yaml").read_text())
    for split in ("train", "validation"):
        base["data"][split] = str(REPO / "studies" / base["data"][split])
    base["train"].update(max_steps=10, eval_every=10)
    base["output_dir"] = str(out / "train")
    study.update(
        name="warm",
        storage=f"sqlite:///{out / 'warm.db'}",
        base=base,
        pruner={"name": "none"},
        budget={"n_trials": 2, "concurrency": 2},
        space=str(REPO / "spaces" / "lora-classification.yaml"),
        output_dir=str(out / "runs"),
    )
    path = out / "warm.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def one_run(variant: str, tiny_model: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="sftune-warm-") as tmp:
        path = study_file(Path(tmp), tiny_model)
        head = [sys.executable, "-m", "search"] if variant == "warm" else [sys.executable, "-c", COLD]
        started = time.time()
        run = subprocess.run([*head, "run", str(path)], capture_output=True, text=True, cwd=REPO)
        wall = time.time() - started
        if run.returncode != 0:
            raise SystemExit(f"{variant} run failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
        ray_line = next((line for line in run.stdout.splitlines() if line.startswith("ray:")), "")
        trials = optuna.load_study(study_name="warm", storage=f"sqlite:///{Path(tmp) / 'warm.db'}").trials
        firsts = [
            t.user_attrs["seconds"]["first_step_at"]
            for t in trials
            if t.user_attrs.get("seconds", {}).get("first_step_at")
        ]
        preloaded = sum(bool(t.user_attrs.get("worker_preloaded")) for t in trials)
        return {
            "first_step": min(firsts) - started,
            "last_first_step": max(firsts) - started,
            "wall": wall,
            "preloaded": preloaded,
            "ray": ray_line,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="a tiny random model instead of the bundled MiniLM")
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"warm": [], "cold": []}
    for i in range(args.repeat):
        for variant in ("warm", "cold") if i % 2 == 0 else ("cold", "warm"):
            r = one_run(variant, args.tiny)
            results[variant].append(r)
            print(
                f"{variant}: first step {r['first_step']:.1f} s "
                f"(both trials stepping by {r['last_first_step']:.1f} s), run {r['wall']:.1f} s, "
                f"{r['preloaded']:.0f}/2 trials on preloaded workers; {r['ray']}",
                flush=True,
            )
    print("\nmedians over", args.repeat, "runs each:")
    for variant, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in ("first_step", "last_first_step", "wall")}
        print(
            f"  {variant}: first step {med['first_step']:.1f} s · both trials stepping {med['last_first_step']:.1f} s"
            f" · whole run {med['wall']:.1f} s"
        )


if __name__ == "__main__":
    main()
