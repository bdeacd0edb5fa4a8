"""task: regression: float targets (one or several), standardised or not; metrics in the data's units."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tiny

from search.cli import main
from trainer import ConfigError, config_from_dict, prepare, run_job
from trainer.tasks import get_task
from trainer.tasks.regression import regression_metrics


def test_metrics_against_known_values() -> None:
    y = np.array([[1.0], [2.0], [3.0], [4.0]])
    perfect = regression_metrics(y.copy(), y)
    assert perfect == {"rmse": 0.0, "mae": 0.0, "r2": 1.0, "pearson": 1.0, "spearman": 1.0}
    off = regression_metrics(y + np.array([[1.0], [-1.0], [1.0], [-1.0]]), y)
    assert off["rmse"] == pytest.approx(1.0) and off["mae"] == pytest.approx(1.0)
    assert off["r2"] == pytest.approx(1 - 4 / 5)
    flipped = regression_metrics(-y, y)
    assert flipped["pearson"] == pytest.approx(-1.0) and flipped["spearman"] == pytest.approx(-1.0)
    assert regression_metrics(np.ones((4, 1)), y)["pearson"] == 0.0  # a constant prediction: undefined, 0
    task = get_task("regression")
    assert task.default_objective == "rmse"
    assert task.reported_metrics() == {
        "rmse": "minimize",
        "mae": "minimize",
        "r2": "maximize",
        "pearson": "maximize",
        "spearman": "maximize",
        "eval_loss": "minimize",
    }


def test_standardised_training_learns_and_a_saved_model_predicts_in_data_units(tmp_path: Path, bert_dir: Path) -> None:
    data = tiny.regression_config(tmp_path, bert_dir, max_steps=60, eval_every=20)
    data["save"] = "model"
    cfg = config_from_dict(data, base_dir=tmp_path)
    prep = prepare(cfg)
    meta = prep.examples.meta
    assert meta["targets"] == ["score"] and 45 < meta["mean"][0] < 55 and 8 < meta["std"][0] < 12
    assert abs(np.mean([r["labels"][0] for r in prep.train])) < 1e-6  # trained on standardised targets
    result = run_job(cfg, prepared=prep)
    first, last = result.history[0], result.history[-1]
    assert last["rmse"] < first["rmse"] and last["rmse"] < 3.0, result.history  # data units: spread is ~10
    assert last["r2"] > 0.9 and last["pearson"] > 0.95 and last["spearman"] > 0.7
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = Path(cfg.output_dir) / "model"
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    rows = [json.loads(line) for line in (tmp_path / "data" / "reg_val.jsonl").read_text().splitlines()]
    import torch

    with torch.no_grad():
        enc = tok([r["text"] for r in rows], return_tensors="pt", padding=True)
        pred = model(**enc).logits[:, 0].numpy()
    truth = np.array([r["score"] for r in rows])
    assert np.sqrt(np.mean((pred - truth) ** 2)) == pytest.approx(last["rmse"], rel=2e-2)  # data units (bf16 aside)
    assert model.config.sftune_target_scaling["folded_into_head"] is True


def test_two_targets_huber_unstandardised(tmp_path: Path, bert_dir: Path) -> None:
    data = tiny.regression_config(tmp_path, bert_dir, max_steps=6, eval_every=3)
    data["task_options"] = {"target_columns": ["score", "second"], "loss": "huber", "huber_delta": 2.0}
    cfg = config_from_dict(data, base_dir=tmp_path)
    prep = prepare(cfg)
    assert prep.examples.labels == ["score", "second"] and prep.train[0]["labels"] == prep.examples.train[0]["target"]
    result = run_job(cfg, prepared=prep)
    assert set(result.metrics) == {"rmse", "mae", "r2", "pearson", "spearman", "eval_loss"}
    # eval_loss is the MSE over both targets in data units, not the Huber loss it trained with (about
    # delta x |error|, far below): the mean of two squares lies between rmse^2 and 2 rmse^2 (rmse: their roots' mean)
    rmse, loss = result.metrics["rmse"], result.metrics["eval_loss"]
    assert rmse > 10 and rmse**2 <= loss * 1.01 and loss <= 2 * rmse**2 * 1.01


def test_bad_regression_input_exits_2(tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture) -> None:
    data = tiny.regression_config(tmp_path, bert_dir)
    rows = tiny.regression_rows(20, seed=3)
    rows[4]["score"] = "high"
    tiny.write_jsonl(tmp_path / "data" / "reg_train.jsonl", rows)
    err = tiny.refused_train(tmp_path, data, capsys)
    assert "train.yaml: data.label_column: train row 5 of '" in err
    assert "reg_train.jsonl': target column 'score' expected a finite number, found 'high' (str)" in err
    data["task_options"] = {"target_columns": ["score", "nope"]}
    err = tiny.refused_train(tmp_path, data, capsys)
    assert "task_options.target_columns: column 'nope' not found in train data" in err
    data["task_options"] = {"standardize": True, "loss": "hubber"}
    err = tiny.refused_train(tmp_path, data, capsys)
    assert "task_options.loss: expected one of mse, huber, found 'hubber' (str); did you mean 'huber'?" in err


def test_float_labels_for_classification_point_to_regression(
    tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    data = tiny.regression_config(tmp_path, bert_dir)
    data["task"] = "classification"
    err = tiny.refused_train(tmp_path, data, capsys)
    assert "data.label_column: train labels in column 'score'" in err and "task: regression" in err


def test_objective_the_task_does_not_report(tmp_path: Path, bert_dir: Path) -> None:
    from search.config import load_study

    base = tiny.regression_config(tmp_path, bert_dir)
    path = tiny.write_config(
        tmp_path / "s.yaml", {"name": "s", "base": base, "objective": "accuracy", "space": "regression"}
    )
    with pytest.raises(ConfigError) as err:
        load_study(path)
    assert (
        "objective.metric: task regression reports rmse, mae, r2, pearson, spearman, eval_loss; found "
        "'accuracy'" in str(err.value)
    )


def test_data_report_shows_the_target_spread(tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture) -> None:
    path = tiny.write_config(tmp_path / "train.yaml", tiny.regression_config(tmp_path, bert_dir))
    assert main(["data", str(path)]) == 0
    out = capsys.readouterr().out
    assert "target score: mean 5" in out and "trained on standardised targets" in out
    with pytest.raises(ConfigError):
        config_from_dict(
            {**tiny.regression_config(tmp_path, bert_dir), "task_options": {"huber_delta": 0}}, base_dir=tmp_path
        )


def test_options_that_change_the_data_change_its_cache_key(tmp_path: Path, bert_dir: Path) -> None:
    from trainer.job import fingerprint

    data = tiny.regression_config(tmp_path, bert_dir)
    keys = set()
    for options in ({"standardize": True}, {"standardize": False}, {"standardize": True, "loss": "huber"}):
        keys.add(fingerprint(config_from_dict({**data, "task_options": options}, base_dir=tmp_path), str(bert_dir)))
    assert len(keys) == 2  # standardize changes the prepared targets; the loss does not
