"""Faults a study survives, on a real local Ray cluster and a real SQLite database: a trial's worker
killed with SIGKILL, and the driver interrupted with Ctrl-C (SIGINT to its process group) at several moments
on a machine kept busy on purpose.

Every run is started as a terminal starts it: its own process group, SIGINT at its default
(`_servers.sigint_default`), so these tests pass however pytest itself was started (a background job of a
script inherits SIGINT ignored)."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import _servers
import optuna
import psutil
import pytest
import tiny
from optuna.trial import TrialState

pytestmark = pytest.mark.integration


def _start(path: Path) -> subprocess.Popen:
    return subprocess.Popen(
        _servers.sigint_default([sys.executable, "-m", "search", "run", str(path)]),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


STEPS, EVERY = 1500, 50
"""Trials long enough that a fault injected early lands mid-trial, however fast the machine trains (a bf16
CPU runs a warm tiny trial at ~150 steps a second)."""


def _running_trial(storage: str, name: str, early: int = STEPS // 5) -> optuna.trial.FrozenTrial | None:
    """A RUNNING trial that has reported an evaluation (and its worker's pid), no later than step `early`."""
    try:
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    except Exception:  # noqa: BLE001 - not created yet
        return None
    for t in trials:
        if (
            t.state == TrialState.RUNNING
            and t.intermediate_values
            and "worker_pid" in t.user_attrs
            and max(t.intermediate_values) <= early
        ):
            return t
    return None


def _wait_for_running_trial(
    storage: str, name: str, proc: subprocess.Popen, early: int = STEPS // 5
) -> optuna.trial.FrozenTrial:
    """A RUNNING trial that has reported an evaluation (and its worker's pid), no later than step `early`."""
    deadline = time.time() + 240
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.5)
        trial = _running_trial(storage, name, early)
        if trial is not None:
            return trial
    raise AssertionError(f"no running trial was seen at an evaluation up to step {early}")


def _finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def test_a_killed_worker_fails_its_trial_and_the_study_still_finishes(tmp_path: Path, bert_dir: Path) -> None:
    path = tiny.study_file(
        tmp_path, bert_dir, name="wkill", n_trials=2, concurrency=1, max_steps=STEPS, eval_every=EVERY
    )
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
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 2
    assert TrialState.RUNNING not in [t.state for t in trials]


class _Lines:
    """The lines a run prints, read as they come (a thread), so a test can wait for one."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, found: Callable[[], bool], timeout: float = 240) -> None:
        """Until `found()` (checked at each line, and every half second for states outside the output)."""
        deadline = time.time() + timeout
        with self._changed:
            while not found():
                assert self.proc.poll() is None or self._thread.is_alive(), "".join(self.lines)
                assert time.time() < deadline, "".join(self.lines)
                self._changed.wait(0.5)

    def finish(self, timeout: float) -> tuple[int, str]:
        code = self.proc.wait(timeout=timeout)
        self._thread.join(timeout=30)
        return code, "".join(self.lines)


def _ray_is_starting(proc: subprocess.Popen, lines: _Lines) -> bool:
    """The run's local Ray cluster has begun to start (its GCS server runs), or has started."""
    if any(line.startswith("ray:") for line in lines.lines):
        return True
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        return False
    for child in children:
        try:
            if "gcs_server" in child.name():
                return True
        except psutil.Error:  # it ended meanwhile
            continue
    return False


MOMENTS = {
    # moment: (n_trials, max_steps, eval_every); short trials where no trial needs to be cut mid-way
    "while-ray-starts": (2, 60, 20),
    "while-the-first-trials-start": (2, 60, 20),
    "mid-trial": (2, STEPS, EVERY),  # both cut mid-way: the rerun runs their params again, side by side
}


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_ctrl_c_exits_130_fails_running_trials_and_a_rerun_finishes(
    tmp_path: Path, bert_dir: Path, moment: str
) -> None:
    """Ctrl-C (SIGINT to the run's process group) while Ray starts, while the first trials start, and mid-trial,
    on a machine the test keeps busy: each time exit 130, the "interrupted" line, no trial left RUNNING, and
    running the same command again finishes the study."""
    n_trials, steps, every = MOMENTS[moment]
    path = tiny.study_file(
        tmp_path, bert_dir, name="sigint", n_trials=n_trials, concurrency=2, max_steps=steps, eval_every=every
    )
    storage = f"sqlite:///{tmp_path / 'sigint.db'}"
    with _servers.busy_cpus(seconds=300):
        proc = _start(path)
        lines = _Lines(proc)
        try:
            if moment == "while-ray-starts":
                lines.wait_for(lambda: _ray_is_starting(proc, lines))
            elif moment == "while-the-first-trials-start":
                lines.wait_for(lambda: any(re.match(r"trial \d+ started", line) for line in lines.lines))
            else:
                lines.wait_for(lambda: _running_trial(storage, "sigint") is not None)
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
            code, out = lines.finish(timeout=180)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert code == 130, out
    assert "interrupted" in out and "Traceback" not in out, out
    try:
        trials = optuna.load_study(study_name="sigint", storage=storage).trials
    except KeyError:  # interrupted before the study was created
        trials = []
    assert TrialState.RUNNING not in [t.state for t in trials], out
    cut = [t for t in trials if t.state == TrialState.FAIL]
    assert all("interrupted" in t.user_attrs["error"] for t in cut), out
    queued = [t.system_attrs["fixed_params"] for t in trials if t.state == TrialState.WAITING]
    assert sorted(map(str, queued)) == sorted(str(t.params) for t in cut)
    if moment == "mid-trial":
        assert cut, out  # a trial was running when the run was interrupted

    again = subprocess.run(
        [sys.executable, "-m", "search", "run", str(path)], capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stdout + again.stderr
    trials = optuna.load_study(study_name="sigint", storage=storage).trials
    assert TrialState.RUNNING not in [t.state for t in trials]
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == n_trials
    finished = [t.params for t in trials if t.state == TrialState.COMPLETE]
    assert all(t.params in finished for t in cut)  # the interrupted params were run again


LOCKED_FOR_GOOD = """
import sys
from search.storage import _faults, _rdb
_faults.RETRY_FOR_S = float(sys.argv[2])  # the documented 120 s, shortened for the test
_rdb.SQLITE_BUSY_S = 0  # SQLite's own wait off: every write meets the lock at once
from search.cli import main
sys.exit(main(["run", sys.argv[1]]))
"""


def test_a_database_gone_for_good_ends_the_run_within_one_retry_window(tmp_path: Path, bert_dir: Path) -> None:
    """The study database stops taking writes for good mid-study (locked by another process, as a stopped
    server refuses every call): the run ends with one `error:` line and exit 1 about one retry window after,
    not after each storage call has waited out a window of its own; the counts line keeps the finished
    trials storage last gave."""
    window = 15.0
    path = tiny.study_file(
        tmp_path, bert_dir, name="gone", n_trials=4, concurrency=1, max_steps=STEPS, eval_every=EVERY
    )
    db = tmp_path / "gone.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCKED_FOR_GOOD, str(path), str(window)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines = _Lines(proc)
    holder = None
    try:

        def one_complete_one_running() -> bool:
            try:
                trials = optuna.load_study(study_name="gone", storage=f"sqlite:///{db}").get_trials(deepcopy=False)
            except Exception:  # noqa: BLE001 - not created yet: poll again
                return False
            states = [t.state for t in trials]
            return TrialState.COMPLETE in states and any(
                t.state == TrialState.RUNNING and t.intermediate_values for t in trials
            )

        lines.wait_for(one_complete_one_running, timeout=400)
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        locked = time.monotonic()
        code, out = lines.finish(timeout=300)
        took = time.monotonic() - locked
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        if holder is not None:
            holder.close()
    assert code == 1, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "stayed locked by other writers" in errors[0], out
    assert "Traceback" not in out, out
    # the rest of the trial (up to its next evaluation), one window, then Ray's shutdown; before, every call
    # (history, error, tell, counts, best line, stale check...) waited a window of its own
    assert took < 2 * window + 25, (took, out)
    counts = [line for line in out.splitlines() if "finished " in line and "/4" in line]
    assert counts and all("finished 0/4" not in line for line in counts[-2:]), out


@pytest.mark.parametrize("vital", ["raylet", "gcs_server"])
def test_a_local_cluster_that_dies_mid_study_ends_the_run_and_a_rerun_finishes(
    tmp_path: Path, bert_dir: Path, vital: str
) -> None:
    """The local cluster's raylet (or GCS) killed mid-trial: one `error:` line with the hint, exit 1, the trials
    that ran FAIL with the reason and their params queued, no trial started on the dead cluster, no traceback;
    running the same command again finishes the study."""
    path = tiny.study_file(
        tmp_path, bert_dir, name="dead", n_trials=2, concurrency=2, max_steps=STEPS, eval_every=EVERY
    )
    storage = f"sqlite:///{tmp_path / 'dead.db'}"
    proc = _start(path)
    lines = _Lines(proc)
    try:
        lines.wait_for(lambda: _running_trial(storage, "dead") is not None)
        victims = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.name() == vital]
        assert len(victims) == 1, victims
        victims[0].kill()
        code, out = lines.finish(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 1, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: the local Ray cluster died (its {vital} ended): its running trials were marked FAIL "
        "and their params queued; run the same command again to finish the study"
    ], out
    assert "Traceback" not in out, out
    trials = optuna.load_study(study_name="dead", storage=storage).trials
    started = [t for t in trials if t.state != TrialState.WAITING]
    assert started and all(t.state == TrialState.FAIL for t in started), out  # none RUNNING, none new
    assert all(t.user_attrs["error"].startswith(f"the local Ray cluster died (its {vital} ended)") for t in started)
    queued = [t.system_attrs["fixed_params"] for t in trials if t.state == TrialState.WAITING]
    assert sorted(map(str, queued)) == sorted(str(t.params) for t in started)

    again = subprocess.run(
        [sys.executable, "-m", "search", "run", str(path)], capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stdout + again.stderr
    trials = optuna.load_study(study_name="dead", storage=storage).trials
    assert TrialState.RUNNING not in [t.state for t in trials]
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2
    assert sorted(str(t.params) for t in trials if t.state == TrialState.COMPLETE) == sorted(map(str, queued))
