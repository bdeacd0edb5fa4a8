"""Coordinator benchmark: how many concurrent trials one sftune driver holds (no training anywhere).

The real driver (Optuna searcher and pruner adapter, Tune's scheduler, the study's storage, progress)
runs a study over a local Ray cluster with many logical CPUs; each trial runs `stub_job.job`, which
sleeps and reports like a fine-tuning job (SFTUNE_STUB_EVALS evaluations, SFTUNE_STUB_EVAL_S apart)
and never imports torch or transformers. Per run it prints: results handled per second (against
what the trials offered), report-to-decision latency p50/p99 (from the worker's `tune.report` to the
driver's pruning decision), ask and tell times as the study grows, the driver process's CPU share,
the memory of the trial workers while they wait, and the trials that did not end COMPLETE or PRUNED.

    python tests/benchmarks/driver_scale.py                        # 8, 32, 64 trials at a time; SQLite
                                                                   # and PostgreSQL; 1,000-trial studies
    python tests/benchmarks/driver_scale.py --concurrency 64 --trials 300 --prefill 9700 --storage postgres
    python tests/benchmarks/driver_scale.py --samplers             # ask/tell of TPE and GP vs study size

`--prefill N` first adds N finished trials to the study (as `scale.py` does), so a run measures a
study that grows to N + --trials. `--samplers` times one ask (with the space sampled) and one tell on
studies of 100 to 10,000 trials, without Ray. PostgreSQL is a local `pgserver`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


# -------------------------------------------------------------------------------------------- storage


def postgres_url(out: Path) -> tuple[str, Any]:
    import pgserver

    server = pgserver.get_server(out / "pgdata", cleanup_mode="stop")
    uri = server.get_uri()
    return uri.replace("postgresql://", "postgresql+psycopg://", 1), server


def storage_url(kind: str, out: Path) -> tuple[str, Any]:
    if kind == "sqlite":
        return f"sqlite:///{out / 'driver-scale.db'}", None
    if kind == "postgres":
        return postgres_url(out)
    return kind, None  # any SQLAlchemy URL


# --------------------------------------------------------------------------------------------- study


def study_file(out: Path, name: str, storage: str, n_trials: int, concurrency: int, sampler: str) -> Path:
    import yaml

    sampler_spec: dict[str, Any] = {"name": sampler, "seed": 0}
    if sampler == "tpe":
        sampler_spec["n_startup_trials"] = 10
    path = out / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "storage": storage,
                "objective": {"metric": "accuracy", "direction": "maximize"},
                "sampler": sampler_spec,
                "pruner": {"name": "successive-halving", "min_resource": 50, "reduction_factor": 3},
                "budget": {"n_trials": n_trials, "concurrency": concurrency, "max_failures": n_trials},
                "resources": {"cpu": 1, "gpu": 0},
                "base": str(REPO / "studies" / "quickstart-train.yaml"),
                "space": str(REPO / "spaces" / "lora-classification.yaml"),
                "output_dir": str(out / "runs"),
            }
        )
    )
    return path


def prefill(study: Any, space: Any, n: int, seed: int = 0) -> float:
    """Add `n` finished trials drawn from `space` (60% pruned at step 50, the rest complete at 200)."""
    import optuna
    from optuna.trial import TrialState, create_trial

    from search.space import sample_params

    if n <= 0:
        return 0.0
    started = time.time()
    draw = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    rng = random.Random(seed)
    batch = []
    for _i in range(n):
        trial = draw.ask()
        params = sample_params(trial, space)
        frozen = draw._storage.get_trial(trial._trial_id)
        lr = params.get("train.learning_rate", 1e-3)
        quality = 0.92 - 0.08 * (math.log10(lr) + 3.0) ** 2
        pruned = rng.random() < 0.6
        steps = [50] if pruned else [50, 100, 150, 200]
        curve = {s: 0.5 + (quality - 0.5) * math.sqrt(s / 200) + rng.gauss(0, 0.01) for s in steps}
        batch.append(
            create_trial(
                state=TrialState.PRUNED if pruned else TrialState.COMPLETE,
                value=None if pruned else curve[200],
                params=frozen.params,
                distributions=frozen.distributions,
                intermediate_values=curve,
                user_attrs={"history": [{"step": s, "accuracy": v} for s, v in curve.items()]},
            )
        )
        draw.tell(trial, 0.0)
        if len(batch) == 500:
            study.add_trials(batch)
            batch = []
    study.add_trials(batch)
    return time.time() - started


# ------------------------------------------------------------------------------------------ workers


class WorkerMemory(threading.Thread):
    """Samples the RSS and USS (memory only this process holds) of Ray's worker processes."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: dict[int, tuple[str, float, float]] = {}
        self.stop_event = threading.Event()

    def run(self) -> None:
        import psutil

        while not self.stop_event.wait(3.0):
            for proc in psutil.process_iter(["pid", "cmdline"]):
                try:
                    cmd = " ".join(proc.info["cmdline"] or [])
                    if not cmd.startswith("ray::") or proc.ppid() == 1:
                        continue
                    if proc.pid not in self.mine():
                        continue
                    info = proc.memory_full_info()
                    self.samples[proc.pid] = (cmd.split()[0], info.rss / 2**20, info.uss / 2**20)
                except Exception:  # noqa: BLE001 - a worker that just exited
                    continue

    def mine(self) -> set[int]:
        import psutil

        me = psutil.Process()
        try:
            return {p.pid for p in me.children(recursive=True)}
        except Exception:  # noqa: BLE001 - a process gone meanwhile: none counted
            return set()

    def stop(self) -> dict[str, Any]:
        self.stop_event.set()
        self.join()
        kinds: dict[str, list[tuple[float, float]]] = {}
        for kind, rss, uss in self.samples.values():
            kinds.setdefault(kind, []).append((rss, uss))
        return {
            k: {"n": len(v), "rss_mb": statistics.median(r for r, _ in v), "uss_mb": statistics.median(u for _, u in v)}
            for k, v in kinds.items()
        }


# -------------------------------------------------------------------------------------------- a run


def one_run(args: argparse.Namespace) -> dict[str, Any]:
    """One study through the real driver over a local Ray cluster; returns its figures."""
    import optuna

    import search._driver as driver_mod
    from search._ray import run_trials
    from search.config import load_study
    from search.storage import count_states
    from search.study import open_study

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    url, server = storage_url(args.storage, out)
    name = f"scale-c{args.concurrency}-{args.sampler}-{int(time.time())}"
    total = args.prefill + args.trials
    cfg = load_study(study_file(out, name, url, total, args.concurrency, args.sampler))
    study = open_study(cfg)
    filled = prefill(study, cfg.space, args.prefill)

    latencies: list[float] = []
    results = [0]
    torch_in_workers = [0]
    in_driver = {"suggest": 0.0, "complete": 0.0, "result": 0.0, "tick": 0.0}
    originals = {name: getattr(driver_mod.Driver, name) for name in in_driver}

    def timed(name: str) -> Any:
        method = originals[name]

        def wrapper(self: Any, *a: Any) -> Any:
            started = time.perf_counter()
            try:
                return method(self, *a)
            finally:
                in_driver[name] += time.perf_counter() - started
                if name == "result" and "sent_at" in a[1]:
                    latencies.append(time.time() - float(a[1]["sent_at"]))
                    results[0] += 1
                    torch_in_workers[0] += int(a[1].get("stub_torch_loaded", 0) > 0)

        return wrapper

    for name in in_driver:
        setattr(driver_mod.Driver, name, timed(name))

    class Quiet:
        def message(self, text: str) -> None:
            print(f"  | {text}", flush=True) if text.startswith(("waiting", "trial")) else None

        def trial_started(self, number: int, params: dict[str, Any]) -> None: ...
        def trial_reported(self, number: int, step: int, max_steps: int | None, metrics: dict) -> None: ...
        def trial_finished(self, number: int | None, state: str, values: Any, message: str) -> None:
            if state == "FAIL":
                print(f"  | trial {number} FAIL: {message}", flush=True)

        def counts(self, **kw: Any) -> None: ...
        def close(self) -> None: ...

    os.environ["SFTUNE_STUB_EVALS"] = str(args.evals)
    os.environ["SFTUNE_STUB_EVAL_S"] = str(args.eval_s)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO), os.environ.get("PYTHONPATH", "")])
    for key, value in (
        ("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1"),
        ("RAY_AIR_NEW_OUTPUT", "0"),
        ("TUNE_MAX_PENDING_TRIALS_PG", str(args.concurrency)),
        ("RAY_USAGE_STATS_ENABLED", "0"),
    ):
        os.environ.setdefault(key, value)
    import psutil
    import ray

    from search._ray.cluster import warm_workers, worker_env

    for key, value in worker_env().items():  # as `sftune run` sets for its trial workers
        os.environ.setdefault(key, value)
    # As on a local cluster: trial actors use Ray's started workers (no preload: a stub job imports nothing).
    warm_workers({})
    ray.init(
        num_cpus=args.cpus,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
        object_store_memory=256 * 2**20,
        _temp_dir=str(Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))),
    )
    memory = WorkerMemory()
    memory.start()
    me = psutil.Process()
    try:
        cpu0, t0 = me.cpu_times(), time.time()
        profile = None
        if args.profile:
            import cProfile

            profile = cProfile.Profile()
            profile.enable()
        driver = run_trials(cfg, study, progress=Quiet(), resources={"cpu": 1, "gpu": 0}, job="stub_job:job")
        cpu1, wall = me.cpu_times(), time.time() - t0
        if profile is not None:
            profile.disable()
            profile.dump_stats(str(out / "driver.prof"))
    finally:
        workers = memory.stop()
        ray.shutdown()
        for name, method in originals.items():
            setattr(driver_mod.Driver, name, method)
    counts = count_states(study)
    ask, tell, decide = driver.timings["ask"], driver.timings["tell"], driver.timings["decide"]
    n = len(ask)
    first, last = slice(0, max(1, n // 10)), slice(max(0, n - max(1, n // 10)), n)
    cpu_s = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    offered = args.concurrency / args.eval_s
    done = study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED])
    mine = [t for t in done if t.number >= args.prefill and t.datetime_start and t.datetime_complete]
    trial_walls = [(t.datetime_complete - t.datetime_start).total_seconds() for t in mine]
    fails = [
        t.user_attrs.get("error", "") for t in study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.FAIL])
    ]
    row = {
        "storage": args.storage,
        "sampler": args.sampler,
        "concurrency": args.concurrency,
        "prefill": args.prefill,
        "trials": n,
        "study_size": total,
        "wall_s": wall,
        "prefill_s": filled,
        "results": results[0],
        "results_per_s": results[0] / wall,
        "offered_per_s": offered,
        "latency_p50_ms": 1000 * pct(latencies, 0.5),
        "latency_p99_ms": 1000 * pct(latencies, 0.99),
        "decide_p50_ms": 1000 * pct(decide, 0.5),
        "decide_p99_ms": 1000 * pct(decide, 0.99),
        "ask_first_ms": 1000 * statistics.median(ask[first]) if n else float("nan"),
        "ask_last_ms": 1000 * statistics.median(ask[last]) if n else float("nan"),
        "tell_first_ms": 1000 * statistics.median(tell[: max(1, len(tell) // 10)]) if tell else float("nan"),
        "tell_last_ms": 1000 * statistics.median(tell[-max(1, len(tell) // 10) :]) if tell else float("nan"),
        "driver_cpu": cpu_s / wall,
        "driver_cpu_s_per_trial": cpu_s / max(1, n),
        "in_driver_s_per_trial": {k: v / max(1, n) for k, v in in_driver.items()},
        "load_avg": os.getloadavg()[0],
        "trial_wall_p50_s": pct(trial_walls, 0.5),
        "busy": results[0] * args.eval_s / (args.concurrency * wall),
        "workers": workers,
        "counts": counts,
        "reports_from_workers_with_torch": torch_in_workers[0],
        "fail": len(fails),
        "fail_errors": sorted(set(fails))[:3],
    }
    if server is not None:
        server.cleanup()
    return row


# ---------------------------------------------------------------------------------------- samplers


def sampler_costs(out: Path, sizes: list[int], samplers: list[str], repeats: int) -> list[dict[str, Any]]:
    """One ask (the space sampled) and one tell, on SQLite studies of each size, per sampler, through the
    storage the driver uses (write-ahead log, running trials read at most every 0.5 s)."""
    import warnings

    import optuna

    from search.config import load_study
    from search.storage import ReadLessOften, open_storage
    from search.study import build_sampler

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with Study.optimize"
    rows = []
    for size in sizes:
        url = f"sqlite:///{out / f'samplers-{size}.db'}"
        storage = ReadLessOften(open_storage(url))  # as the driver opens its study (WAL, the read cache)
        cfg = load_study(study_file(out, f"samplers-{size}", url, size, 8, "tpe"))
        base = optuna.create_study(study_name="base", storage=storage, direction="maximize")
        prefill(base, cfg.space, size)
        for name in samplers:
            if name == "gp" and size > args_gp_max:
                continue
            cfg.sampler = {"name": name, "seed": 0}
            from search.space import sample_params

            row: dict[str, Any] = {"sampler": name, "size": size}
            for where in ("sqlite", "memory"):
                study = optuna.load_study(study_name="base", storage=storage, sampler=build_sampler(cfg))
                if where == "memory":  # the sampler's own cost, without the database's
                    trials = study.get_trials(deepcopy=False)
                    study = optuna.create_study(direction="maximize", sampler=build_sampler(cfg))
                    study.add_trials(trials)
                asks, tells = [], []
                for _ in range(repeats):
                    t = time.perf_counter()
                    trial = study.ask()
                    sample_params(trial, cfg.space)
                    asks.append(time.perf_counter() - t)
                    t = time.perf_counter()
                    study.tell(trial, 0.5 + 0.4 * random.random())
                    tells.append(time.perf_counter() - t)
                suffix = "" if where == "sqlite" else "_memory"
                row[f"ask_ms{suffix}"] = 1000 * statistics.median(asks)
                row[f"tell_ms{suffix}"] = 1000 * statistics.median(tells)
            rows.append(row)
            print(
                f"  {name} at {size} trials: ask {row['ask_ms']:.1f} ms, tell {row['tell_ms']:.1f} ms on SQLite; "
                f"in memory {row['ask_ms_memory']:.1f} / {row['tell_ms_memory']:.1f} ms "
                f"(load average {os.getloadavg()[0]:.0f})",
                flush=True,
            )
    return rows


args_gp_max = 1000


# --------------------------------------------------------------------------------------------- main


def print_runs(rows: list[dict[str, Any]]) -> None:
    header = [
        "storage",
        "sampler",
        "concurrent",
        "study grows to",
        "trials run",
        "results/s (offered)",
        "report->decision p50 / p99 ms",
        "decide p50 / p99 ms",
        "slots busy",
        "ask ms (first / last 10%)",
        "tell ms (first / last 10%)",
        "driver CPU cores",
        "driver CPU s / trial",
        "in driver s / trial",
        "worker USS / RSS MB",
        "not COMPLETE/PRUNED",
        "load avg",
    ]
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for r in rows:
        w = r["workers"].get("ray::ImplicitFunc") or next(
            iter(r["workers"].values()), {"uss_mb": float("nan"), "rss_mb": float("nan")}
        )
        print(
            f"| {r['storage']} | {r['sampler']} | {r['concurrency']} | {r['study_size']:,} | "
            f"{r['trials']} | {r['results_per_s']:.1f} ({r['offered_per_s']:.0f}) | {r['latency_p50_ms']:.0f} / "
            f"{r['latency_p99_ms']:.0f} | {r['decide_p50_ms']:.0f} / {r['decide_p99_ms']:.0f} | "
            f"{100 * r['busy']:.0f}% | "
            f"{r['ask_first_ms']:.0f} / {r['ask_last_ms']:.0f} | {r['tell_first_ms']:.0f} / {r['tell_last_ms']:.0f} | "
            f"{r['driver_cpu']:.2f} | {r['driver_cpu_s_per_trial']:.2f} | "
            f"{sum(r['in_driver_s_per_trial'].values()):.2f} | "
            f"{w['uss_mb']:.0f} / {w['rss_mb']:.0f} | {r['fail']} | {r['load_avg']:.0f} |",
            flush=True,
        )


def main() -> int:
    global args_gp_max
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--concurrency", default="8,32,64", help="comma-separated: trials at a time")
    p.add_argument("--trials", type=int, default=1000, help="trials this driver runs")
    p.add_argument("--prefill", type=int, default=0, help="finished trials added to the study first")
    p.add_argument("--storage", default="sqlite,postgres", help="comma-separated: sqlite | postgres | a URL")
    p.add_argument("--sampler", default="tpe", help="tpe | gp | random")
    p.add_argument("--evals", type=int, default=4, help="evaluations per trial (50 steps apart)")
    p.add_argument("--eval-s", type=float, default=1.0, help="seconds between a trial's evaluations")
    p.add_argument(
        "--cpus",
        type=int,
        default=0,
        help="logical CPUs of the local Ray cluster (default: one per "
        "concurrent trial, as `sftune run` starts it; Ray starts one worker per CPU)",
    )
    p.add_argument("--samplers", action="store_true", help="only time ask and tell against study size")
    p.add_argument("--sizes", default="100,1000,10000")
    p.add_argument("--gp-max", type=int, default=1000, help="largest study the GP sampler is timed on")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", default=None)
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--table", default="", help=argparse.SUPPRESS)
    p.add_argument("--profile", action="store_true", help="with --one: cProfile the driver's loop to OUT/driver.prof")
    args = p.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="sftune-driver-scale-"))
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    if args.samplers:
        args_gp_max = args.gp_max
        rows = sampler_costs(out, [int(x) for x in args.sizes.split(",")], ["tpe", "gp"], args.repeats)
        print(
            "\n| sampler | study size | ask ms (space sampled), SQLite | tell ms, SQLite | ask ms, in memory | "
            "tell ms, in memory |\n|---|---|---|---|---|---|"
        )
        for r in rows:
            print(
                f"| {r['sampler']} | {r['size']:,} | {r['ask_ms']:.1f} | {r['tell_ms']:.1f} | "
                f"{r['ask_ms_memory']:.1f} | {r['tell_ms_memory']:.1f} |"
            )
        return 0

    if args.one:  # a child: one run, its figures as JSON on the last line
        args.concurrency = int(args.concurrency)
        args.cpus = max(args.cpus, args.concurrency)
        print("RESULT " + json.dumps(one_run(args)), flush=True)
        return 0

    if args.table:  # print the table of earlier runs' JSON lines (files with RESULT lines)
        rows = []
        for f in args.table.split(","):
            rows += [json.loads(x[7:]) for x in Path(f).read_text().splitlines() if x.startswith("RESULT ")]
        print_runs(rows)
        return 0

    rows = []
    for storage in [s.strip() for s in args.storage.split(",") if s.strip()]:
        for c in [int(x) for x in args.concurrency.split(",")]:
            print(
                f"{storage}: {c} trials at a time, {args.trials} trials"
                + (f" on a study of {args.prefill:,}" if args.prefill else "")
                + " ...",
                flush=True,
            )
            cmd = [
                sys.executable,
                __file__,
                "--one",
                "--concurrency",
                str(c),
                "--trials",
                str(args.trials),
                "--prefill",
                str(args.prefill),
                "--storage",
                storage,
                "--sampler",
                args.sampler,
                "--evals",
                str(args.evals),
                "--eval-s",
                str(args.eval_s),
                "--cpus",
                str(max(args.cpus, c)),
                "--out",
                str(out / f"{storage.split(':')[0]}-{c}"),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                print(f"  failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}", flush=True)
                continue
            rows.append(json.loads(lines[-1][7:]))
            r = rows[-1]
            print(
                f"  {r['trials']} trials in {r['wall_s']:.0f}s, {r['results_per_s']:.1f} results/s, "
                f"p99 {r['latency_p99_ms']:.0f} ms, driver {r['driver_cpu']:.2f} cores, workers {r['workers']}, "
                f"states {r['counts']}",
                flush=True,
            )
    print_runs(rows)
    (out / "driver-scale.json").write_text(json.dumps(rows, indent=2))
    print(f"(work folder: {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
