"""`sftune run` starting its own local Ray cluster (a fresh process, as a user runs it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import tiny
from optuna.trial import TrialState

pytestmark = pytest.mark.integration


def test_trials_run_on_workers_that_imported_the_stack_first(tmp_path: Path, bert_dir: Path) -> None:
    # 4 trials, 2 at a time: the first two start on workers warmed while Ray started, the next two
    # reuse those actors. Each trial's params are sampled only when its worker is ready.
    path = tiny.study_file(tmp_path, bert_dir, name="own", n_trials=4, concurrency=2)
    run = subprocess.run(
        [sys.executable, "-m", "search", "run", str(path)], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "tokenized once for all trials" in run.stdout
    trials = optuna.load_study(study_name="own", storage=f"sqlite:///{tmp_path / 'own.db'}").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert [t.user_attrs["worker_preloaded"] for t in trials] == [True] * 4
    for t in trials:  # the job started at once: the worker was ready before the trial was asked
        assert t.user_attrs["seconds"]["started_at"] >= t.datetime_start.timestamp()
    assert list((tmp_path / "runs" / "cache").glob("prepared-*.pkl"))


def test_rerunning_a_finished_study_starts_no_cluster(tmp_path: Path, bert_dir: Path) -> None:
    path = tiny.study_file(tmp_path, bert_dir, name="again", n_trials=1, concurrency=1, max_steps=10)
    first = subprocess.run(
        [sys.executable, "-m", "search", "run", str(path)], capture_output=True, text=True, timeout=600
    )
    assert first.returncode == 0, first.stdout + first.stderr
    assert "ray: started a local cluster" in first.stdout
    again = subprocess.run(
        [sys.executable, "-m", "search", "run", str(path)], capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing to run" in again.stdout
    assert "ray:" not in again.stdout
