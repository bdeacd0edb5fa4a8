"""Pruners compared on recorded learning curves: median, successive halving and sftune's learning-curve
pruner, and early evaluations on a validation sample (`eval.early_sample`) against the whole set.

Two steps. `record` runs a real sftune study with no pruner (random sampler, seed 0: every trial trains to
the end) on a dataset subset, once with every evaluation on the whole validation set and once with
`--early-sample` (the same params in the same order, so the same training: the last evaluation's values
are identical; only the early evaluations and their cost differ), and writes every trial's curve, its
params and its measured seconds (setup, training, each evaluation) to a json file:

    python tests/benchmarks/pruners.py record --dataset sst2 --out /tmp/prune-bench
    python tests/benchmarks/pruners.py record --dataset sst2 --out /tmp/prune-bench --early-sample 0.2

`replay` then runs each pruner, Optuna's own objects on an in-memory Optuna study, over the recorded
trials, one trial after another in a random order (one order per seed; the same orders for every pruner):
each trial reports its recorded evaluations until the pruner stops it. That isolates the pruning rule
from the sampler and from the machine's load: every pruner sees the same trials and the same costs.
It prints, per pruner, medians over the seeds of: optimizer steps and seconds (the recorded seconds of
what was trained and evaluated) until an evaluation first reaches 99% of the best final value of the pool,
the same to the end of all trials, the best value found, and how often the pool's best trial was pruned:

    python tests/benchmarks/pruners.py replay /tmp/prune-bench/sst2-full.json --seeds 20

With a second record (`--paired`: the early-sample one), the same orders run on it too, and it prints how
often the trial that wins (best final value among those not pruned) is the same as with whole-set
evaluations, against how often two different random orders agree (chance).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import lora_base, write_subset  # noqa: E402 - the same data subset and base config as compare.py

# -------------------------------------------------------------------------------------------- record


def record(args: argparse.Namespace) -> Path:
    import optuna
    import yaml

    variant = f"sample{args.early_sample:g}" if args.early_sample else "full"
    out = Path(args.out) / f"{args.dataset}-{variant}"
    out.mkdir(parents=True, exist_ok=True)
    write_subset(args.dataset, 0, args.train_samples, args.eval_samples, out)  # compare.py's --seed 0 subset
    base = lora_base(args.model, out, args.max_steps, args.eval_every, 64, 0, out)
    if args.early_sample:
        base["eval"] = {"early_sample": args.early_sample}
    study = {
        "name": "record",
        "storage": f"sqlite:///{out / 'record.db'}",
        "objective": {"metric": "accuracy", "direction": "maximize"},
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "budget": {"n_trials": args.n_trials, "concurrency": args.concurrency},
        "resources": {"cpu": max(1, (os.cpu_count() or 1) // args.concurrency)},
        "base": base,
        "space": str(REPO / "spaces" / "lora-classification.yaml"),
        "output_dir": str(out / "runs"),
    }
    (out / "study.yaml").write_text(yaml.safe_dump(study))
    started = time.time()
    with (out / "run.log").open("w") as log:
        subprocess.run(
            [sys.executable, "-m", "search", "run", str(out / "study.yaml")], check=True, stdout=log, stderr=log
        )
    s = optuna.load_study(study_name="record", storage=study["storage"])
    trials = []
    for t in s.trials:
        if t.state.name != "COMPLETE":
            continue
        history = t.user_attrs.get("history", [])
        seconds = t.user_attrs.get("seconds", {})
        trials.append(
            {
                "number": t.number,
                "params": t.params,
                "value": t.value,
                "curve": [[h["step"], h["accuracy"]] for h in history],
                "seconds": {k: seconds.get(k) for k in ("setup", "train", "eval", "total")},
                "max_steps": args.max_steps,
            }
        )
    path = Path(args.out) / f"{args.dataset}-{variant}.json"
    path.write_text(
        json.dumps(
            {
                "dataset": args.dataset,
                "variant": variant,
                "early_sample": args.early_sample,
                "wall": time.time() - started,
                "trials": trials,
            },
            indent=1,
        )
    )
    print(f"{path}: {len(trials)} trials, {time.time() - started:.0f}s")
    return path


# -------------------------------------------------------------------------------------------- replay


PRUNERS = {
    "none": lambda eval_every: ("none", {}),
    "median": lambda eval_every: ("median", {"n_startup_trials": 2, "n_warmup_steps": eval_every}),
    "successive-halving": lambda eval_every: (
        "successive-halving",
        {"min_resource": eval_every, "reduction_factor": 3},
    ),
    "learning-curve": lambda eval_every: ("learning-curve", {}),
}


def build(name: str, eval_every: int, max_steps: int) -> Any:
    from search.config import pruner_class

    kind, options = PRUNERS[name](eval_every)
    if kind == "learning-curve":
        options = {**options, "max_resource": max_steps}
    return pruner_class(kind)(**options)


def replay_once(trials: list[dict[str, Any]], order: list[int], pruner_name: str, target: float) -> dict[str, Any]:
    """One pass over the trials in `order` with one pruner: what it spent, and when it first reached `target`."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    eval_every = trials[0]["curve"][0][0]
    max_steps = trials[0]["max_steps"]
    study = optuna.create_study(direction="maximize", pruner=build(pruner_name, eval_every, max_steps))
    steps = seconds = 0.0
    hit: dict[str, float] | None = None
    pruned: set[int] = set()
    best = -1.0
    winner = None
    for i in order:
        t = trials[i]
        trial = study.ask()
        sec = t["seconds"]
        per_step = sec["train"] / max_steps
        per_eval = sec["eval"] / len(t["curve"])
        seconds += sec["setup"] or 0.0
        last = 0
        stopped = False
        for step, value in t["curve"]:
            steps += step - last
            seconds += per_step * (step - last) + per_eval
            last = step
            trial.report(value, step)
            if hit is None and value >= target and step == t["curve"][-1][0]:
                hit = {"steps": steps, "seconds": seconds}
            if step < t["curve"][-1][0] and trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                pruned.add(t["number"])
                stopped = True
                break
        if not stopped:
            study.tell(trial, t["value"])
            if t["value"] > best:
                best, winner = t["value"], t["number"]
    return {"hit": hit, "steps": steps, "seconds": seconds, "best": best, "winner": winner, "pruned": pruned}


def replay(args: argparse.Namespace) -> None:
    runs = [json.loads(Path(p).read_text()) for p in [args.record, *([args.paired] if args.paired else [])]]
    trials = runs[0]["trials"]
    pool_best = max(t["value"] for t in trials)
    best_trial = max(trials, key=lambda t: t["value"])["number"]
    target = 0.99 * pool_best
    orders = []
    for seed in range(args.seeds):
        order = list(range(len(trials)))
        random.Random(seed).shuffle(order)
        orders.append(order)
    print(
        f"{runs[0]['dataset']}: {len(trials)} recorded trials, best final accuracy {pool_best:.4f} "
        f"(trial {best_trial}); "
        f"target 99% = {target:.4f}; {args.seeds} random orders, trials one after another"
    )
    print(
        "'to 99%' counts until the first trial that ends (not pruned) at or above the target; "
        "'all' is the whole pass; medians over the orders"
    )
    header = (
        f"{'record':<12} {'pruner':<20} {'steps to 99%':>12} {'s to 99%':>9} {'steps all':>10} "
        f"{'s all':>7} {'best found':>10} {'best pruned':>11} {'missed 99%':>10}"
    )
    print(header)
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        rt = run["trials"]
        for name in args.pruners.split(","):
            outs = [replay_once(rt, order, name, target) for order in orders]
            results[(run["variant"], name)] = outs
            hits = [o["hit"] for o in outs if o["hit"] is not None]
            missed = sum(o["hit"] is None for o in outs)
            med = statistics.median
            print(
                f"{run['variant']:<12} {name:<20} "
                f"{med([h['steps'] for h in hits]) if hits else float('nan'):>12.0f} "
                f"{med([h['seconds'] for h in hits]) if hits else float('nan'):>9.0f} "
                f"{med([o['steps'] for o in outs]):>10.0f} {med([o['seconds'] for o in outs]):>7.0f} "
                f"{med([o['best'] for o in outs]):>10.4f} "
                f"{sum(best_trial in o['pruned'] for o in outs) / len(outs):>11.0%} {missed / len(outs):>10.0%}"
            )
    if len(runs) == 2:
        print("\nthe winner with early evaluations on a sample, against whole-set evaluations (same order):")
        a, b = runs[0]["variant"], runs[1]["variant"]
        finals = [t["value"] for t in runs[0]["trials"]]
        same_finals = [round(x["value"], 6) for x in runs[0]["trials"]] == [
            round(x["value"], 6) for x in runs[1]["trials"]
        ]
        print(f"  last evaluations identical in both records: {same_finals} (of {len(finals)} trials)")
        for name in args.pruners.split(","):
            full, sampled = results[(a, name)], results[(b, name)]
            agree = sum(f["winner"] == s["winner"] for f, s in zip(full, sampled, strict=True)) / len(full)
            chance = statistics.mean(
                f["winner"] == g["winner"] for i, f in enumerate(full) for j, g in enumerate(full) if i != j
            )
            saved = 1 - statistics.median(s["seconds"] for s in sampled) / statistics.median(f["seconds"] for f in full)
            print(
                f"  {name:<20} same winner {agree:.0%} of orders "
                f"(two orders of the whole-set runs agree {chance:.0%}); "
                f"seconds of the whole pass {saved:+.0%} saved"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="run a study with no pruner and write its curves")
    r.add_argument("--dataset", default="sst2")
    r.add_argument("--model", default="minilm-l6")
    r.add_argument("--out", required=True)
    r.add_argument("--n-trials", type=int, default=12)
    r.add_argument("--concurrency", type=int, default=2)
    r.add_argument("--train-samples", type=int, default=2000)
    r.add_argument("--eval-samples", type=int, default=500)
    r.add_argument("--max-steps", type=int, default=200)
    r.add_argument("--eval-every", type=int, default=25)
    r.add_argument("--early-sample", type=float, default=None)
    q = sub.add_parser("replay", help="run the pruners over recorded curves")
    q.add_argument("record")
    q.add_argument("--paired", default=None, help="a second record of the same trials (early sample)")
    q.add_argument("--seeds", type=int, default=20)
    q.add_argument("--pruners", default="none,median,successive-halving,learning-curve")
    args = p.parse_args()
    record(args) if args.cmd == "record" else replay(args)


if __name__ == "__main__":
    main()
