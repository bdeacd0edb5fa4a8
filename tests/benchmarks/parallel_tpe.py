"""Sampler benchmark (simulated, no training): sftune's TPE against Optuna's on trials run in parallel.

A discrete-event simulation of an asynchronous study: W workers, each asks a trial, "trains" it
(evaluations at steps 50, 100, 150, 200 on a synthetic learning curve whose plateau depends on the
params, with evaluation noise; a step costs time in proportion to the batch size), reports each
evaluation to the study's pruner (successive halving from step 50, as the shipped studies) and asks
the next trial as soon as its trial ends. The same seeds run with `running_trials: reported`
(sftune's default: a running trial counts as finished at its latest evaluation) and `worst` (Optuna's
constant liar: every running trial counts as bad). Per worker count it prints, over the seeds: the
median best true plateau of the trials that completed, the median simulated time to a trial that
completes within 1% of the space's optimum, and how many trials completed.

    python tests/benchmarks/parallel_tpe.py                    # W = 2, 8, 64; 12, 64, 256 trials; 10 seeds
    python tests/benchmarks/parallel_tpe.py --workers 64 --trials 512 --seeds 20

It measures the sampler's use of parallel slots only: the curve is a model, not a fine-tuning job.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import statistics
import sys
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from search.tpe import TPESampler

SPACE = {
    "lr": FloatDistribution(1e-5, 1e-2, log=True),
    "batch_size": CategoricalDistribution([8, 16, 32]),
    "warmup": FloatDistribution(0.0, 0.1),
    "r": IntDistribution(4, 64, log=True),
}
STEPS = (50, 100, 150, 200)


def plateau(p: dict) -> float:
    """The accuracy a config ends at: best near lr 1e-3 (higher for larger batches), little effect of r."""
    best_lr = 6e-4 * (p["batch_size"] / 8) ** 0.5
    miss = (math.log10(p["lr"]) - math.log10(best_lr)) ** 2
    return (
        0.92
        - 0.12 * miss
        - 0.2 * (p["warmup"] - 0.03) ** 2
        + 0.004 * math.log2(p["r"] / 4) / 4
        + 0.01 * (p["batch_size"] == 32)
    )


def optimum() -> float:
    rng = random.Random(0)
    best = 0.0
    for _ in range(200000):
        p = {
            "lr": 10 ** rng.uniform(-5, -2),
            "batch_size": rng.choice([8, 16, 32]),
            "warmup": rng.uniform(0, 0.1),
            "r": rng.choice([4, 8, 16, 32, 64]),
        }
        best = max(best, plateau(p))
    return best


def curve(p: dict, step: int, rng: random.Random) -> float:
    """Accuracy at `step`: rises to the plateau at a rate that grows with the learning rate; noise 0.005."""
    rate = min(1.0, p["lr"] / 1e-3) * (8 / p["batch_size"]) ** -0.25
    return plateau(p) * (1 - 0.5 * math.exp(-rate * step / 40)) + rng.gauss(0, 0.005)


def simulate(mode: str, workers: int, n_trials: int, seed: int, target: float) -> dict:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize",
        sampler=TPESampler(seed=seed, n_startup_trials=4, running_trials=mode),
        pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=50, reduction_factor=3),
    )
    rng = random.Random(seed)
    events: list[tuple[float, int, int]] = []  # (time, trial number, evaluation index)
    trials: dict[int, optuna.Trial] = {}
    last: dict[int, float] = {}
    asked = 0
    reached = math.inf
    now = 0.0

    def start(at: float) -> None:
        nonlocal asked
        trial = study.ask(SPACE)
        trials[trial.number] = trial
        asked += 1
        heapq.heappush(events, (at + STEPS[0] * trial.params["batch_size"] / 8, trial.number, 0))

    for _ in range(min(workers, n_trials)):
        start(0.0)
    while events:
        now, number, i = heapq.heappop(events)
        trial = trials[number]
        last[number] = curve(trial.params, STEPS[i], rng)
        trial.report(last[number], STEPS[i])
        done = None
        if trial.should_prune():
            done = TrialState.PRUNED
        elif i == len(STEPS) - 1:
            done = TrialState.COMPLETE
        else:
            heapq.heappush(events, (now + (STEPS[i + 1] - STEPS[i]) * trial.params["batch_size"] / 8, number, i + 1))
        if done is not None:
            if done == TrialState.COMPLETE:
                study.tell(trial, last[number])
                if plateau(trial.params) >= target and reached == math.inf:
                    reached = now
            else:
                study.tell(trial, state=done)
            if asked < n_trials:
                start(now)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    return {
        "best": max((plateau(t.params) for t in complete), default=0.0),
        "reached": reached,
        "complete": len(complete),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", default="2,8,64")
    p.add_argument("--trials", default="12,64,256", help="trials per study, one per worker count")
    p.add_argument("--seeds", type=int, default=10)
    args = p.parse_args()
    top = optimum()
    target = 0.99 * top
    print(f"space optimum (plateau) {top:.4f}; target {target:.4f} (99%)")
    print(
        "| workers | trials | running_trials | median best plateau | median time to 99% (seeds reaching it) "
        "| median complete |"
    )
    print("|---|---|---|---|---|---|")
    for w, n in zip((int(x) for x in args.workers.split(",")), (int(x) for x in args.trials.split(",")), strict=False):
        for mode in ("reported", "worst"):
            runs = [simulate(mode, w, n, seed, target) for seed in range(args.seeds)]
            times = [r["reached"] for r in runs]
            hit = [t for t in times if t < math.inf]
            med_t = statistics.median(times)
            print(
                f"| {w} | {n} | {mode} | {statistics.median(r['best'] for r in runs):.4f} | "
                f"{'never' if med_t == math.inf else f'{med_t:.0f}'} ({len(hit)}/{len(runs)}) | "
                f"{statistics.median(r['complete'] for r in runs):.0f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
