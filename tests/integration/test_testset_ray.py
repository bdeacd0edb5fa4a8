"""A study with a held-out test split on a real local Ray cluster: `sftune test` stores the score that
`sftune train` of the exported trial reproduces."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import tiny
import yaml

from search.cli import main

pytestmark = pytest.mark.integration


def test_test_score_of_the_best_trial_matches_train_of_its_export(
    tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    path = tiny.study_file(tmp_path, bert_dir, name="heldout", n_trials=2, concurrency=2, max_steps=10)
    data = yaml.safe_load(path.read_text())
    data["base"]["data"]["test_fraction"] = 0.2
    path.write_text(yaml.safe_dump(data))
    run = subprocess.run(
        [sys.executable, "-m", "search", "run", str(path)], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stdout + run.stderr
    storage = f"sqlite:///{tmp_path / 'heldout.db'}"
    by_run = optuna.load_study(study_name="heldout", storage=storage).user_attrs["test_metrics"]  # run's own
    assert "held-out test of trial" in run.stdout

    assert main(["test", str(path)]) == 0  # again, by hand: the same numbers
    study = optuna.load_study(study_name="heldout", storage=storage)
    best = study.best_trial
    stored = best.user_attrs["test_metrics"]
    assert stored == by_run
    assert study.user_attrs["test_trial"] == best.number and study.user_attrs["test_metrics"] == stored
    assert set(stored) == {"test_accuracy", "test_f1_macro", "test_eval_loss"}

    out = tmp_path / "best.yaml"
    assert main(["export", str(path), "--out", str(out)]) == 0
    assert main(["train", str(out), "--set", f"output_dir={tmp_path / 'again'}"]) == 0
    capsys.readouterr()
    saved = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert saved["metrics"]["accuracy"] == best.value  # the trial, reproduced
    assert saved["test_metrics"] == stored  # and its held-out score
