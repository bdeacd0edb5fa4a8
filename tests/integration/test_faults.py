"""Faults a study survives, on a real local Ray cluster and a real SQLite database: a trial's worker
killed with SIGKILL, and the driver interrupted with Ctrl-C (SIGINT to its process group)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import tiny
from optuna.trial import TrialState

pytestmark = pytest.mark.integration


def _start(path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "search", "run", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


STEPS, EVERY = 1500, 50
"""Trials long enough that a fault injected early lands mid-trial, however fast the machine trains (a bf16
CPU runs a warm tiny trial at ~150 steps a second)."""


def _wait_for_running_trial(storage: str, name: str, proc: subprocess.Popen,
                            early: int = STEPS // 5) -> optuna.trial.FrozenTrial:
    """A RUNNING trial that has reported an evaluation (and its worker's pid), no later than step `early`."""
    deadline = time.time() + 240
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.5)
        try:
            trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
        except Exception:  # noqa: BLE001 - not created yet
            continue
        for t in trials:
            if (t.state == TrialState.RUNNING and t.intermediate_values and "worker_pid" in t.user_attrs
                    and max(t.intermediate_values) <= early):
                return t
    raise AssertionError(f"no running trial was seen at an evaluation up to step {early}")


def _finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def test_a_killed_worker_fails_its_trial_and_the_study_still_finishes(tmp_path: Path, bert_dir: Path) -> None:
    path = tiny.study_file(tmp_path, bert_dir, name="wkill", n_trials=3, concurrency=1, max_steps=STEPS,
                            eval_every=EVERY)
    storage = f"sqlite:///{tmp_path / 'wkill.db'}"
    proc = _start(path)
    victim = _wait_for_running_trial(storage, "wkill", proc)
    os.kill(victim.user_attrs["worker_pid"], signal.SIGKILL)
    code, out = _finish(proc)
    assert code == 0, out
    trials = optuna.load_study(study_name="wkill", storage=storage).trials
    killed = trials[victim.number]
    assert killed.state == TrialState.FAIL
    assert "worker died" in killed.user_attrs["error"], killed.user_attrs["error"]
    retried = [t for t in trials if t.user_attrs.get("retry_of") == victim.number]
    assert retried and retried[0].params == killed.params  # its params were not lost
    assert retried[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 3
    assert TrialState.RUNNING not in [t.state for t in trials]


def test_ctrl_c_exits_130_fails_running_trials_and_a_rerun_finishes(tmp_path: Path, bert_dir: Path) -> None:
    path = tiny.study_file(tmp_path, bert_dir, name="sigint", n_trials=3, concurrency=2, max_steps=STEPS,
                            eval_every=EVERY)
    storage = f"sqlite:///{tmp_path / 'sigint.db'}"
    proc = _start(path)
    _wait_for_running_trial(storage, "sigint", proc)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    code, out = _finish(proc, timeout=120)
    assert code == 130, out
    assert "interrupted" in out and "Traceback" not in out
    trials = optuna.load_study(study_name="sigint", storage=storage).trials
    assert TrialState.RUNNING not in [t.state for t in trials]
    cut = [t for t in trials if t.state == TrialState.FAIL]
    assert cut and all("interrupted" in t.user_attrs["error"] for t in cut)
    queued = [t.system_attrs["fixed_params"] for t in trials if t.state == TrialState.WAITING]
    assert sorted(map(str, queued)) == sorted(str(t.params) for t in cut)

    again = subprocess.run([sys.executable, "-m", "search", "run", str(path)], capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    trials = optuna.load_study(study_name="sigint", storage=storage).trials
    assert TrialState.RUNNING not in [t.state for t in trials]
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 3
    finished = [t.params for t in trials if t.state == TrialState.COMPLETE]
    assert all(t.params in finished for t in cut)  # the interrupted params were run again
