"""The storage contract: every test runs on SQLite and on a real PostgreSQL server (STORAGE_MODES, the way
optuna/testing/storages.py parametrizes Optuna's own storage tests)."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import optuna
import pytest
import tiny
import yaml
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from search.cli import main
from search.config import load_study
from search.space import sample_params
from search.storage import count_states, fail_stale, finished, record_heartbeats, requeue, storage_problem
from search.study import open_study

pytestmark = pytest.mark.integration

DISTS = {"train.learning_rate": FloatDistribution(1e-3, 1e-2, log=True), "peft.r": IntDistribution(2, 8)}


def _cfg(tmp: Path, model: Path, url: str, **extra):
    return load_study(tiny.study_file(tmp, model, storage=url, **extra))


def test_create_resume_and_states(tmp_path: Path, bert_dir: Path, storage_url: str) -> None:
    cfg = _cfg(tmp_path, bert_dir, storage_url, n_trials=3)
    study = open_study(cfg)
    assert study.user_attrs["objective_metrics"] == ["accuracy"]
    assert len(study.user_attrs["base_config"]["fingerprint"]) == 64
    done = study.ask()
    sample_params(done, cfg.space)
    study.tell(done, 0.6)
    pruned = study.ask()
    sample_params(pruned, cfg.space)
    pruned.report(0.1, 10)
    study.tell(pruned, state=TrialState.PRUNED)
    failed = study.ask()
    sample_params(failed, cfg.space)
    study.tell(failed, state=TrialState.FAIL)
    requeue(study, failed)
    sample_params(study.ask(), cfg.space)  # takes the queued retry: RUNNING with the failed trial's params
    again = open_study(cfg)  # the same name in the same storage: the same study, resumed
    assert again.study_name == study.study_name and len(again.trials) == 4
    assert count_states(again) == {"COMPLETE": 1, "PRUNED": 1, "FAIL": 1, "RUNNING": 1, "WAITING": 0}
    assert finished(again) == 2
    assert again.trials[3].params == failed.params and again.trials[3].user_attrs["retry_of"] == 2


def test_status_and_export_name_the_true_best(
    tmp_path: Path, bert_dir: Path, storage_url: str, capsys: pytest.CaptureFixture
) -> None:
    """A diverged trial (inf, and NaN where the database keeps it) is never ranked, whatever its direction."""
    path = tiny.study_file(tmp_path, bert_dir, storage=storage_url, objective={"metric": "eval_loss"})
    cfg = load_study(path)
    study = open_study(cfg)
    config = cfg.trial_config({}, 0)
    for value in (0.4, 0.3, 0.5):
        study.add_trial(
            create_trial(
                value=value,
                params={"peft.r": 4, "train.learning_rate": 2e-3},
                distributions=DISTS,
                user_attrs={"config": config},
            )
        )
    study.add_trial(
        create_trial(
            value=-math.inf,
            params={"peft.r": 5, "train.learning_rate": 2e-3},
            distributions=DISTS,
            user_attrs={"config": config},
        )
    )
    if storage_url.startswith("postgresql"):  # PostgreSQL stores NaN (SQLite cannot: it becomes NULL)
        nan = study.ask()
        study._storage.set_trial_state_values(nan._trial_id, TrialState.COMPLETE, [math.nan])
    assert main(["status", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["best"]["number"] == 1 and info["best"]["values"] == {"eval_loss": 0.3}
    assert [row["number"] for row in info["top"]] == [1, 0, 2]
    out = tmp_path / "best.yaml"
    assert main(["export", str(path), "--out", str(out)]) == 0
    assert "trial 1" in out.read_text().splitlines()[0]


DEAD_DRIVER = textwrap.dedent("""
    import os, signal, sys
    from search.config import load_study
    from search.space import sample_params
    from search.storage import record_heartbeats
    from search.study import open_study
    cfg = load_study(sys.argv[1])
    study = open_study(cfg)
    beating = study.ask()
    sample_params(beating, cfg.space)
    record_heartbeats(study, [beating.number])
    silent = study.ask()  # killed between its ask and its first heartbeat
    sample_params(silent, cfg.space)
    print(beating.number, silent.number, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_a_killed_drivers_trials_are_failed_and_queued_by_the_next(
    tmp_path: Path, bert_dir: Path, storage_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SFTUNE_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("SFTUNE_HEARTBEAT_GRACE", "3")
    path = tiny.study_file(tmp_path, bert_dir, storage=storage_url)
    cfg = load_study(path)
    live_study = open_study(cfg)  # a live driver: its trial must survive everything below
    live = live_study.ask()
    sample_params(live, cfg.space)
    stop = threading.Event()

    def beat() -> None:  # what a live driver's adapter does: a heartbeat thread for its running trials
        while not stop.wait(0.5):
            record_heartbeats(live_study, [live.number])

    record_heartbeats(live_study, [live.number])
    beating = threading.Thread(target=beat)
    beating.start()
    dead = subprocess.run([sys.executable, "-c", DEAD_DRIVER, str(path)], capture_output=True, text=True, timeout=120)
    assert dead.returncode == -signal.SIGKILL, dead.stderr
    killed = [int(n) for n in dead.stdout.split()]
    other = open_study(cfg)  # the next driver
    failed: list = []
    deadline = time.time() + 20
    while len(failed) < 2 and time.time() < deadline:
        failed += fail_stale(other)
        time.sleep(0.5)
    stop.set()
    beating.join()
    assert sorted(t.number for t in failed) == killed
    trials = {t.number: t for t in other.trials}
    assert trials[live.number].state == TrialState.RUNNING  # never failed by another driver
    for number in killed:
        assert trials[number].state == TrialState.FAIL
        assert "stopped" in trials[number].user_attrs["error"]
    retries = [t for t in trials.values() if t.state == TrialState.WAITING]
    assert sorted(t.params["peft.r"] for t in retries) == sorted(trials[n].params["peft.r"] for n in killed)
    assert {t.user_attrs["retry_of"] for t in retries} == set(killed)
    retry = other.ask()  # the next ask takes a retry, with the killed trial's params
    assert retry.params == trials[retry.user_attrs["retry_of"]].params
    assert fail_stale(other) == []  # nothing is failed twice
    live_study.tell(live, 0.5)


def test_sessions_in_other_time_zones_agree(
    tmp_path: Path, bert_dir: Path, postgres_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL stamps heartbeats as naive timestamps in the session's zone: a driver at UTC-10 must not
    look 24 hours stale to one at UTC+14."""
    url = postgres_server.new_database("tz")
    monkeypatch.setenv("SFTUNE_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("SFTUNE_HEARTBEAT_GRACE", "3")
    cfg = _cfg(tmp_path, bert_dir, url)
    monkeypatch.setenv("PGTZ", "Pacific/Honolulu")
    west = open_study(cfg)
    trial = west.ask()
    record_heartbeats(west, [trial.number])
    monkeypatch.setenv("PGTZ", "Pacific/Kiritimati")
    east = open_study(cfg)
    assert fail_stale(east) == []
    assert east.trials[0].state == TrialState.RUNNING


def test_storage_problem_names_a_lost_postgres_connection(postgres_server) -> None:
    import psycopg

    url = postgres_server.new_database("gone")
    conn = psycopg.connect(postgres_server.uri, autocommit=True)
    victim = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)
    pid = victim.execute("select pg_backend_pid()").fetchone()[0]
    conn.execute("select pg_terminate_backend(%s)", (pid,))
    with pytest.raises(psycopg.OperationalError) as lost:
        victim.execute("select 1")
    assert storage_problem(lost.value) == "lost the connection to the database server"


@pytest.fixture(scope="module")
def shared_ray() -> str:
    """One local Ray cluster (started in this process, 2 CPUs) that both drivers join by its address."""
    import ray

    ctx = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ctx.address_info["gcs_address"]
    ray.shutdown()


def test_two_drivers_share_one_budget(tmp_path: Path, bert_dir: Path, storage_url: str, shared_ray: str) -> None:
    """Two `sftune run` drivers started together on one study stop together at its n_trials."""
    path = tiny.study_file(tmp_path, bert_dir, storage=storage_url, n_trials=4, concurrency=1, max_steps=20)
    data = yaml.safe_load(path.read_text())
    cmds = []
    for i in range(2):
        own = dict(data, output_dir=str(tmp_path / f"runs-{i}"))
        cmds.append(
            [
                sys.executable,
                "-m",
                "search",
                "run",
                str(tiny.write_config(tmp_path / f"d{i}.yaml", own)),
                "--address",
                shared_ray,
            ]
        )
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for c in cmds]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n=== next driver ===\n".join(outs)
    study = optuna.load_study(study_name="s", storage=storage_url)
    states = [t.state for t in study.trials]
    assert TrialState.RUNNING not in states
    assert sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states) in (4, 5)
    assert TrialState.FAIL not in states, [t.user_attrs.get("error") for t in study.trials]
    ran = [sum(line.endswith("started") or " started: " in line for line in out.splitlines()) for out in outs]
    assert sum(ran) == len(states)


def test_a_disk_filling_up_mid_run_ends_it_with_one_line(tmp_path: Path, bert_dir: Path, shared_ray: str) -> None:
    """The driver's files may not grow any more once its first trial evaluated (RLIMIT_FSIZE on the running
    driver, whose Python ignores SIGXFSZ): exit 1, one error line, no traceback, the database intact."""
    import resource
    import sqlite3

    db = tmp_path / "full.db"
    path = tiny.study_file(
        tmp_path, bert_dir, name="full", storage=f"sqlite:///{db}", n_trials=6, concurrency=1, max_steps=40
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "search", "run", str(path), "--address", shared_ray],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        try:
            with sqlite3.connect(db) as con:
                if con.execute("select count(*) from trial_intermediate_values").fetchone()[0]:
                    break
        except sqlite3.Error:
            continue
    size = db.stat().st_size
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (size, size))
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, out + err
    assert "Traceback" not in out + err
    said = out + err
    assert (
        "writing the study database failed with a disk I/O error" in said
        or "the disk holding the study database is full" in said
    ), said
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert optuna.load_study(study_name="full", storage=f"sqlite:///{db}").trials  # still readable
