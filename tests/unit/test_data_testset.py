"""The held-out test split: never seen by a trial, evaluated once for the best, reproduced by `sftune train`."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import tiny
import yaml

from search.cli import main
from search.config import load_study
from search.space import sample_params
from search.study import open_study
from search.testset import evaluate_best_on_test
from trainer import config_from_dict, run_job


def _run_trials(cfg, study: optuna.Study, n: int) -> None:
    """Trials as the Ray worker and the driver run them with `objective.use: best` (evaluate_test=False)."""
    for _ in range(n):
        trial = study.ask()
        data = cfg.trial_config(sample_params(trial, cfg.space), trial.number)
        result = run_job(
            config_from_dict(data, source="trial"),
            cache_dir=cfg.cache_dir,
            evaluate_test=False,
            keep_best=("accuracy", "maximize"),
        )
        assert result.test_metrics == {}
        trial.set_user_attr("config", data)
        trial.set_user_attr("best_step", int(result.best["step"]))
        study.tell(trial, result.best["accuracy"])


def test_best_trial_test_score_is_stored_and_reproduced_by_train(
    tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    path = tiny.study_file(
        tmp_path,
        bert_dir,
        name="held",
        max_steps=8,
        space={"train.learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
    )
    data = yaml.safe_load(path.read_text())
    data["base"]["data"]["test_fraction"] = 0.2
    data["base"]["train"]["eval_every"] = 2
    data["objective"]["use"] = "best"  # the chosen model is the best evaluation's: the test must be of that one
    path.write_text(yaml.safe_dump(data))
    cfg = load_study(path)
    study = open_study(cfg)
    _run_trials(cfg, study, 2)
    assert main(["status", str(path)]) == 0
    assert "held-out test: not evaluated yet" in capsys.readouterr().out

    results = evaluate_best_on_test(study, cfg, top=1, say=lambda _m: None)
    best = max(study.trials, key=lambda t: (t.value, -t.number))
    assert [r["number"] for r in results] == [best.number]
    for row in results:
        assert row["retrained"]["accuracy"] == row["values"]["accuracy"]  # the trial's own model, repeated exactly
    best_step = study.trials[results[0]["number"]].user_attrs["best_step"]
    retrained = json.loads((cfg.output_dir / "test" / f"{results[0]['number']:04d}" / "metrics.json").read_text())
    assert retrained["step"] == best_step  # stopped at the chosen evaluation, as export's stop_at_step does
    again = optuna.load_study(study_name="held", storage=cfg.storage)
    for row in results:
        stored = again.trials[row["number"]].user_attrs["test_metrics"]
        assert stored == row["test_metrics"] and set(stored) == {"test_accuracy", "test_f1_macro", "test_eval_loss"}
    assert again.user_attrs["test_trial"] == results[0]["number"]
    assert again.user_attrs["test_metrics"] == results[0]["test_metrics"]

    assert main(["status", str(path)]) == 0
    status = capsys.readouterr().out
    assert f"held-out test of trial {results[0]['number']} (evaluated once" in status and "test_accuracy" in status
    out = tmp_path / "best.yaml"
    assert main(["export", str(path), "--out", str(out)]) == 0
    assert "# Held-out test (evaluated once, never seen by the search): test_" in out.read_text()
    assert main(["train", str(out), "--set", f"output_dir={tmp_path / 'again'}"]) == 0
    assert "held-out test (" in capsys.readouterr().out
    saved = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert saved["test_metrics"] == results[0]["test_metrics"]


def test_a_study_without_a_test_split_says_so(tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture) -> None:
    path = tiny.study_file(tmp_path, bert_dir, name="plain")
    cfg = load_study(path)
    study = open_study(cfg)
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.5))
    assert main(["status", str(path)]) == 0
    assert "held-out test: none (the base config has no data.test or data.test_fraction)" in capsys.readouterr().out
    assert main(["test", str(path)]) == 2
    err = capsys.readouterr().err
    assert "base.data.test: the study's base config holds out no test split" in err and "Traceback" not in err


def test_a_study_with_no_complete_trial_has_nothing_to_test(
    tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    path = tiny.study_file(tmp_path, bert_dir, name="pruned")
    data = yaml.safe_load(path.read_text())
    data["base"]["data"]["test_fraction"] = 0.2
    path.write_text(yaml.safe_dump(data))
    cfg = load_study(path)
    study = open_study(cfg)
    study.add_trial(
        optuna.trial.create_trial(
            params={}, distributions={}, state=optuna.trial.TrialState.PRUNED, intermediate_values={10: 0.5}
        )
    )
    said: list[str] = []
    assert evaluate_best_on_test(study, cfg, say=said.append) == []  # what `sftune run` calls: no exception
    assert said == ["held-out test: study 'pruned' has no complete trial to test yet"]
    assert main(["test", str(path)]) == 2
    assert "has no complete trial to test yet" in capsys.readouterr().err
