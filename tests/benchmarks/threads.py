"""How the cores are best split among trials: N trials of one thread each side by side, against one trial
with N threads, on the same job (MiniLM + LoRA on an SST-2 subset, bf16 where `auto` picks it).

    python tests/benchmarks/threads.py --steps 60 --repeats 2

Each case runs the job in fresh child processes (so each pays its own start, as a trial does) and prints
the training steps per second of the whole machine (all processes together), the seconds per step each
process saw, and the wall time of the case. The cases alternate so a drift in the machine's load hits both.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SFTUNE_SHARED_DATA", REPO.parent / "shared" / "data"))


def job(args: argparse.Namespace) -> None:
    """One training job (a child): prints its result's seconds as json."""
    from trainer import config_from_dict, run_job

    cfg = config_from_dict(json.loads(args.config), source="threads")
    result = run_job(cfg, threads=args.threads)
    print("RESULT " + json.dumps({"seconds": result.seconds, "step": result.step}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    p.add_argument("--job", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--config", default=None, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.job:
        job(args)
        return
    work = Path(tempfile.mkdtemp(prefix="sftune-threads-"))
    rows = (SHARED / "sst2" / "train.jsonl").read_text().splitlines()
    rng = random.Random(0)
    (work / "train.jsonl").write_text("\n".join(rng.sample(rows, 2000)) + "\n")
    (work / "val.jsonl").write_text("\n".join(rng.sample(rows, 100)) + "\n")
    config = {
        "model": "minilm-l6",
        "task": "classification",
        "data": {"train": str(work / "train.jsonl"), "validation": str(work / "val.jsonl")},
        "peft": {"method": "lora", "r": 8, "alpha": 16},
        "train": {"batch_size": 16, "max_steps": args.steps, "eval_every": args.steps, "max_length": 64},
        "output_dir": str(work / "out"),
    }
    cases = [(args.cores, 1), (1, args.cores)]  # (processes, threads each)
    print(f"{args.steps} steps per job, {args.cores} cores, {args.repeats} repeats, alternating")
    print(f"{'case':<26} {'machine steps/s':>15} {'s/step per job':>15} {'wall s':>7}")
    for _ in range(args.repeats):
        for procs, threads in cases:
            started = time.perf_counter()
            children = []
            for i in range(procs):
                cfg = {**config, "output_dir": str(work / f"out{i}")}
                cmd = [sys.executable, __file__, "--job", "--config", json.dumps(cfg), "--threads", str(threads)]
                children.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
            results = []
            for c in children:
                out, _ = c.communicate()
                line = next(x for x in out.splitlines() if x.startswith("RESULT "))
                results.append(json.loads(line[len("RESULT ") :]))
            wall = time.perf_counter() - started
            per_step = [r["seconds"]["train"] / r["step"] for r in results]
            machine = sum(1 / s for s in per_step)
            label = f"{procs} job(s) x {threads} thread(s)"
            print(f"{label:<26} {machine:>15.2f} {sum(per_step) / len(per_step):>15.3f} {wall:>7.0f}")


if __name__ == "__main__":
    main()
