"""`import sftune` without Ray: status, export and train return typed results, overrides flatten to the
command line's --set items, and bad input raises the ConfigError whose problems the command prints."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import tiny
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

import sftune
from search.api import set_items
from search.cli import main

LR = {"train.learning_rate": FloatDistribution(1e-3, 1e-2, log=True)}


def test_overrides_flatten_to_set_items() -> None:
    assert set_items({"budget": {"n_trials": 4, "timeout": None}, "base.train.max_steps": 10, "name": "x y"}) == [
        "budget.n_trials=4",
        "budget.timeout=null",
        "base.train.max_steps=10",
        'name="x y"',
    ]


def test_status_and_export_return_typed_results(tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture) -> None:
    path = tiny.study_file(tmp_path, bert_dir, name="api")
    study = optuna.create_study(study_name="api", storage=f"sqlite:///{tmp_path / 'api.db'}", direction="maximize")
    config = tiny.classification_config(tmp_path, bert_dir)
    for value in (0.6, 0.8):
        study.add_trial(
            optuna.trial.create_trial(
                params={"train.learning_rate": 0.002},
                distributions=LR,
                value=value,
                user_attrs={"config": config, "best_step": 10},
            )
        )
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"error": "boom"}))

    status = sftune.status(path, top=1)
    assert isinstance(status, sftune.StudyStatus)
    assert status.counts["COMPLETE"] == 2 and status.finished == 2 and status.n_trials_target == 4
    assert status.best.number == 1 and status.best.values == {"accuracy": 0.8} and status.best.value == 0.8
    assert status.best.params == {"train.learning_rate": 0.002} and status.best.config["model"] == str(bert_dir)
    assert status.best.attrs == {"best_step": 10} and [t.number for t in status.top] == [1]
    assert [(t.number, t.state, t.error) for t in status.failed] == [(2, "FAIL", "boom")]
    assert main(["status", str(path), "--top", "1"]) == 0  # the command prints the same table
    assert capsys.readouterr().out == status.table() + "\n"

    lines: list[str] = []
    exported = sftune.export(path, tmp_path / "out.yaml", trial=0, say=lines.append)
    assert exported.path == tmp_path / "out.yaml" and exported.trial.number == 0 and exported.files is None
    assert lines[0].startswith("exported trial 0 (COMPLETE, accuracy 0.6000)")
    assert sftune.status(path, name="api").name == "api"  # keyword overrides are --set items


def test_train_from_a_file_and_a_mapping(tmp_path: Path, bert_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = tiny.classification_config(tmp_path, bert_dir, max_steps=4, eval_every=2)
    path = tiny.write_config(tmp_path / "train.yaml", config)
    lines: list[str] = []
    result = sftune.train(path, say=lines.append, **{"train.max_steps": 2})
    assert isinstance(result, sftune.TrainResult) and result.step == 2 and "accuracy" in result.metrics
    assert (result.output_dir / "metrics.json").exists() and lines[-1].endswith("metrics.json")
    again = sftune.train(dict(config, output_dir=str(tmp_path / "again")), say=None, train={"max_steps": 2})
    assert again.metrics == result.metrics and [h["step"] for h in again.history] == [2]


def test_bad_input_raises_the_problems_the_command_prints(
    tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    path = tiny.study_file(tmp_path, bert_dir, name="bad")
    with pytest.raises(sftune.ConfigError) as caught:
        sftune.run(path, budget={"n_trials": 0}, resources={"cpu": -1}, say=None)
    assert [(p.key, p.message) for p in caught.value.problems] == [
        ("budget.n_trials", "must be >= 1, found 0"),
        ("resources.cpu", "must be > 0, found -1.0"),
    ]
    assert main(["run", str(path), "--set", "budget.n_trials=0", "--set", "resources.cpu=-1"]) == 2
    assert capsys.readouterr().err.strip() == caught.value.render()
    with pytest.raises(sftune.ConfigError, match="no study named 'bad'"):
        sftune.status(path)
    with pytest.raises(sftune.ConfigError, match="unknown key"):
        sftune.train(tiny.classification_config(tmp_path, bert_dir), say=None, train={"no_such": 1})
    assert not (tmp_path / "bad.db").exists()
