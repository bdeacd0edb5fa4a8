"""Warm start from an earlier study (issue 23): does a study warm-started from a study of the same task on
another data subset reach 99% of its best sooner than a cold one?

    python tests/benchmarks/warm_start_studies.py --seeds 0,1,2          # MiniLM + LoRA on SST-2 subsets
    python tests/benchmarks/warm_start_studies.py --quick --seeds 0,1,2  # tiny random model, a smoke run

Per seed: an earlier study on training subset A (`--n-trials` trials), then the same study on subset B (same
validation rows, a disjoint training sample) twice: cold, and warm-started from the earlier one's `--top` best.
The earlier study's sampler seed is the seed + 100 (another search path); the cold and warm studies share the
seed.
Each of the two is scored against the better final best of the pair: the trials and the seconds (from the
first trial's start) until a complete trial reached 99% of it. Prints each seed's figures and the medians.
The runs are real `sftune run` commands, one after another (2 at a time within each).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from _sst2_studies import add_arguments, run_study, sample_rows, study_file, write_rows


def write_subsets(out: Path, quick: bool, seed: int, n_train: int, n_val: int) -> tuple[str, dict[str, Path]]:
    """The model, and the validation rows with two disjoint training subsets (A for the earlier study, B for
    the new one)."""
    model, train, val = sample_rows(out, quick, seed, 2 * n_train, n_val)
    rows = {"a": train[:n_train], "b": train[n_train : 2 * n_train], "val": val}
    return model, {name: write_rows(out / f"{name}.jsonl", r) for name, r in rows.items()}


def study(
    out: Path, name: str, model: str, train: Path, val: Path, args: argparse.Namespace, seed: int, warm: str = ""
) -> Path:
    return study_file(
        out,
        name,
        model,
        train,
        val,
        args,
        seed=seed,
        objective={"metric": "accuracy", "direction": "maximize"},
        pruner={"name": "none"},
        eval_every=args.max_steps // 2,
        **({"warm_start": [{"study": warm, "top": args.top}]} if warm else {}),
    )


def curve(out: Path, name: str) -> list[tuple[int, float, float]]:
    """(trial number, seconds from the first trial's start to its end, value) of each complete trial."""
    import optuna

    s = optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'studies.db'}")
    done = [t for t in s.trials if t.state.name == "COMPLETE" and t.datetime_complete]
    start = min(t.datetime_start for t in s.trials if t.datetime_start)
    return sorted((t.number, (t.datetime_complete - start).total_seconds(), t.value) for t in done)


def reach(points: list[tuple[int, float, float]], target: float) -> tuple[int, float]:
    """Trials run and seconds until a complete trial reached `target` (by completion time)."""
    for i, (_, seconds, value) in enumerate(sorted(points, key=lambda p: p[1])):
        if value >= target:
            return i + 1, seconds
    return len(points) + 1, float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, max_steps=60)
    parser.add_argument("--top", type=int, default=2)
    args = parser.parse_args()
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        with tempfile.TemporaryDirectory(prefix="sftune-warmstart-") as tmp:
            out = Path(tmp)
            model, files = write_subsets(out, args.quick, seed, args.train_samples, args.eval_samples)
            # The earlier study samples with another seed: with the same seed the cold study's first trials
            # would be the earlier study's, so it would meet the very config the warm start carries.
            run_study(study(out, "earlier", model, files["a"], files["val"], args, seed + 100), out)
            run_study(study(out, "cold", model, files["b"], files["val"], args, seed), out)
            run_study(study(out, "warm", model, files["b"], files["val"], args, seed, warm="earlier"), out)
            cold, warm = curve(out, "cold"), curve(out, "warm")
            target = 0.99 * max(v for *_, v in cold + warm)
            row = {
                "seed": seed,
                "target": target,
                "cold_best": max(v for *_, v in cold),
                "warm_best": max(v for *_, v in warm),
                "cold": reach(cold, target),
                "warm": reach(warm, target),
            }
            rows.append(row)
            print(
                f"seed {seed}: 99% of {target / 0.99:.4f} = {target:.4f} · cold best {row['cold_best']:.4f}, "
                f"reached after {row['cold'][0]} trials / {row['cold'][1]:.0f} s · warm best "
                f"{row['warm_best']:.4f}, reached after {row['warm'][0]} trials / {row['warm'][1]:.0f} s",
                flush=True,
            )
    med = {
        k: (statistics.median(r[k][0] for r in rows), statistics.median(r[k][1] for r in rows))
        for k in ("cold", "warm")
    }
    print(
        f"median over {len(rows)} seeds: trials to 99%: cold {med['cold'][0]}, warm {med['warm'][0]}; "
        f"seconds: cold {med['cold'][1]:.0f}, warm {med['warm'][1]:.0f}"
    )


if __name__ == "__main__":
    main()
