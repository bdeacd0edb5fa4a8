"""Storage contention: several drivers' database traffic on one study, without Ray or training.

    python tests/benchmarks/storage_contention.py [--drivers 2] [--trials 60] [--storage URL]

Each driver is a process doing what a driver does per trial: fail_stale, ask, sample, store the config,
report three evaluations (a user attribute and an intermediate value each), tell; plus a heartbeat thread
for its running trial. Run once with sftune's storage (retries) and once with Optuna's plain RDBStorage,
it prints trials stored, errors raised to the driver, lock retries and wall time per driver.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SPACE = {"x": (1e-5, 1e-2), "y": (2, 64)}


def driver(url: str, n: int, plain: bool, out: mp.Queue) -> None:  # one process
    sys.path.insert(0, str(REPO))
    import optuna

    from search import storage as s
    from search.storage._rdb import SQLITE_BUSY_S

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = (
        optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": SQLITE_BUSY_S}})
        if plain
        else s.open_storage(url)
    )
    errors: list[str] = []
    try:
        study = optuna.load_study(study_name="contention", storage=storage, sampler=optuna.samplers.RandomSampler())
    except Exception as exc:  # noqa: BLE001
        out.put({"done": 0, "errors": 1, "kinds": [f"load: {type(exc).__name__}"], "retries": 0, "seconds": 0})
        return
    done = 0
    current: list[int] = []
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(1.0):
            try:
                s.record_heartbeats(study, list(current))
            except Exception as exc:  # noqa: BLE001
                errors.append(f"heartbeat: {type(exc).__name__}")

    threading.Thread(target=beat, daemon=True).start()
    started = time.time()
    while done < n:
        try:
            s.fail_stale(study)
            trial = study.ask()
            current[:] = [trial.number]
            x = trial.suggest_float("x", *SPACE["x"], log=True)
            y = trial.suggest_int("y", *SPACE["y"])
            trial.set_user_attr("config", {"train": {"learning_rate": x, "r": y}, "pad": "x" * 800})
            for step in (10, 20, 30):
                trial.set_user_attr("history", [{"step": step, "accuracy": 0.5}] * (step // 10))
                trial.report(0.5 + step / 100, step)
            study.tell(trial, 0.8)
            done += 1
        except Exception as exc:  # noqa: BLE001 - counted: these are what a driver would see
            errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}")
            if len(errors) > 200:
                break
    stop.set()
    retries = getattr(s.rdb_storage(study), "retries", 0)
    out.put(
        {
            "done": done,
            "errors": len(errors),
            "kinds": sorted(set(errors))[:3],
            "retries": retries,
            "seconds": round(time.time() - started, 1),
        }
    )


def run(url: str, drivers: int, n: int, plain: bool) -> None:
    import optuna

    optuna.create_study(study_name="contention", storage=url, load_if_exists=True)
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=driver, args=(url, n, plain, q)) for _ in range(drivers)]
    for p in procs:
        p.start()
    results = [q.get(timeout=1800) for _ in procs]
    for p in procs:
        p.join()
    study = optuna.load_study(study_name="contention", storage=url)
    states: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
    name = "optuna RDBStorage (no retries)" if plain else "sftune storage (retries)"
    print(f"{name}: {drivers} drivers x {n} trials on {url.split('://')[0]}", flush=True)
    for i, r in enumerate(results):
        print(f"  driver {i}: {json.dumps(r)}", flush=True)
    print(f"  study holds: {states}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--drivers", type=int, default=2)
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--storage", default=None, help="a SQLAlchemy URL (default: a fresh SQLite file per run)")
    args = parser.parse_args()
    for plain in (True, False):
        url = args.storage or f"sqlite:///{tempfile.mkdtemp(prefix='contention-')}/study.db"
        run(url, args.drivers, args.trials, plain)


if __name__ == "__main__":
    main()
