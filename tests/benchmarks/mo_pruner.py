"""Pruning a two-objective study (issue 23): the Pareto front reached per unit of time, with and without
`mo-successive-halving`.

    python tests/benchmarks/mo_pruner.py --seeds 0,1,2          # MiniLM + LoRA on an SST-2 subset
    python tests/benchmarks/mo_pruner.py --quick --seeds 0,1,2  # tiny random model, a smoke run

Per seed, the same two-objective study (accuracy, maximized; eval_loss, minimized; same data, space, TPE
seed) runs twice, one after the other: with no pruner and with `mo-successive-halving` (min_resource =
the evaluation interval, reduction_factor 3). Each is scored by the hypervolume of the Pareto front of its
complete trials, counted as they complete (seconds from the study's first trial start), against one
reference point for the pair (accuracy 0, and 1.1x the worst eval_loss any complete trial of either
ended with). Per seed: each run's wall time, final hypervolume, trials pruned, the hypervolume each had at
25%, 50% and 100% of the longer run's time, and the seconds each took to reach 99% of the better final
hypervolume of the pair. Then the medians over the seeds. The runs are real `sftune run` commands.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

from _sst2_studies import add_arguments, run_study, sample_rows, study_file, write_rows

OBJECTIVES = [{"metric": "accuracy", "direction": "maximize"}, {"metric": "eval_loss", "direction": "minimize"}]
PRUNERS: dict[str, dict[str, Any]] = {
    "none": {"name": "none"},
    "mo-sha": {"name": "mo-successive-halving", "reduction_factor": 3},
}


def trials(out: Path, name: str) -> tuple[list[tuple[float, float, float]], float, int]:
    """((seconds from the first trial's start to its end, accuracy, eval_loss) of each complete trial, the study's
    wall time from the first trial's start to its last trial's end, trials pruned)."""
    import optuna

    s = optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'studies.db'}")
    start = min(t.datetime_start for t in s.trials if t.datetime_start)
    ended = [t for t in s.trials if t.datetime_complete]
    wall = max((t.datetime_complete - start).total_seconds() for t in ended)
    done = [
        ((t.datetime_complete - start).total_seconds(), t.values[0], t.values[1])
        for t in ended
        if t.state.name == "COMPLETE"
    ]
    return sorted(done), wall, sum(t.state.name == "PRUNED" for t in s.trials)


def hypervolume(points: list[tuple[float, float]], ref_loss: float) -> float:
    """The area dominated by (accuracy, eval_loss) points (accuracy up, loss down) against (0, ref_loss)."""
    area, best_loss = 0.0, ref_loss
    for acc, loss in sorted(points, key=lambda p: -p[0]):  # by accuracy, highest first
        if loss < best_loss:
            area += acc * (best_loss - loss)
            best_loss = loss
    return area


def hv_at(done: list[tuple[float, float, float]], seconds: float, ref_loss: float) -> float:
    return hypervolume([(a, loss) for t, a, loss in done if t <= seconds], ref_loss)


def reach(done: list[tuple[float, float, float]], target: float, ref_loss: float) -> float:
    """Seconds until the front of the trials completed so far reached `target` hypervolume (inf: never)."""
    for t, *_ in done:
        if hv_at(done, t, ref_loss) >= target:
            return t
    return float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, max_steps=90)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--keep", default=None, help="a folder to keep each seed's studies and logs in")
    args = parser.parse_args()
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        with tempfile.TemporaryDirectory(prefix="sftune-mo-") as tmp:
            out = Path(args.keep) / f"seed{seed}" if args.keep else Path(tmp)
            model, train_rows, val_rows = sample_rows(out, args.quick, seed, args.train_samples, args.eval_samples)
            train, val = write_rows(out / "train.jsonl", train_rows), write_rows(out / "val.jsonl", val_rows)
            got = {}
            for name in PRUNERS:
                path = study_file(
                    out,
                    name,
                    model,
                    train,
                    val,
                    args,
                    seed=seed,
                    objective=OBJECTIVES,
                    pruner=PRUNERS[name],
                    eval_every=args.eval_every,
                )
                run_study(path, out)
                got[name] = trials(out, name)
            ref_loss = 1.1 * max(loss for done, *_ in got.values() for *_, loss in done)
            finals = {k: hypervolume([(a, loss) for _, a, loss in done], ref_loss) for k, (done, *_) in got.items()}
            target = 0.99 * max(finals.values())
            longest = max(wall for _, wall, _ in got.values())
            row: dict[str, Any] = {"seed": seed}
            for name, (done, wall, pruned) in got.items():
                row[name] = {
                    "wall": wall,
                    "hv": finals[name],
                    "pruned": pruned,
                    "at": [hv_at(done, f * longest, ref_loss) for f in (0.25, 0.5, 1.0)],
                    "to99": reach(done, target, ref_loss),
                }
            rows.append(row)
            print(f"seed {seed}: reference eval_loss {ref_loss:.3f}; target 99% of {target / 0.99:.4f}", flush=True)
            for name in PRUNERS:
                r = row[name]
                print(
                    f"  {name:7s} wall {r['wall']:5.0f} s · hypervolume {r['hv']:.4f} · pruned {r['pruned']} · "
                    f"at 25/50/100% of {longest:.0f} s: {' / '.join(f'{v:.4f}' for v in r['at'])} · "
                    f"to 99%: {r['to99']:.0f} s",
                    flush=True,
                )
    print(f"medians over {len(rows)} seeds:")
    for name in PRUNERS:
        med = {k: statistics.median(r[name][k] for r in rows) for k in ("wall", "hv", "pruned", "to99")}
        at = [statistics.median(r[name]["at"][i] for r in rows) for i in range(3)]
        print(
            f"  {name:7s} wall {med['wall']:.0f} s · hypervolume {med['hv']:.4f} · pruned {med['pruned']:g} · "
            f"at 25/50/100%: {' / '.join(f'{v:.4f}' for v in at)} · to 99%: {med['to99']:.0f} s"
        )


if __name__ == "__main__":
    main()
