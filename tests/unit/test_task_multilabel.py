"""task: multilabel: a list of labels per row, BCE (pos_weight with balanced class weights), a fixed or tuned
threshold, f1_micro / f1_macro / exact_match, per-label counts in the data report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tiny

from search.cli import main
from trainer import config_from_dict, prepare, run_job
from trainer.tasks.multilabel import ThresholdMetrics, multilabel_metrics, pos_weights


class _Pred:
    def __init__(self, logits: np.ndarray, labels: np.ndarray) -> None:
        self.predictions, self.label_ids = logits, labels


def test_metrics_on_known_rows() -> None:
    truth = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]], dtype=float)
    probs = np.array([[0.9, 0.1, 0.6], [0.2, 0.7, 0.1], [0.8, 0.4, 0.1], [0.1, 0.1, 0.1]])
    m = multilabel_metrics(probs, truth, 0.5)
    # tp 4 (r0:0,2 r1:1 r2:0), fn 1 (r2:1), fp 0 -> micro 8/9; per label 1, 2/3, 1
    assert m["f1_micro"] == pytest.approx(8 / 9)
    assert m["f1_macro"] == pytest.approx((1 + 2 / 3 + 1) / 3)
    assert m["exact_match"] == pytest.approx(3 / 4)
    assert multilabel_metrics(probs, truth, 0.3)["exact_match"] == 1.0
    assert pos_weights([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0]]) == [1 / 3, 3.0]


def test_tuned_threshold_is_chosen_on_validation_and_reused_on_test() -> None:
    truth = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=float)
    probs = np.array([[0.28, 0.1], [0.1, 0.35], [0.4, 0.27], [0.1, 0.2]])
    logits = np.log(probs / (1 - probs))
    metrics = ThresholdMetrics("tune")
    val = metrics(_Pred(logits, truth))
    assert val["threshold"] == pytest.approx(0.25) and val["f1_micro"] == 1.0
    test_truth = np.array([[0, 0], [1, 1]], dtype=float)
    test = metrics(
        _Pred(np.log(np.array([[0.27, 0.2], [0.9, 0.9]]) / (1 - np.array([[0.27, 0.2], [0.9, 0.9]]))), test_truth)
    )
    assert test["threshold"] == pytest.approx(0.25)  # not re-tuned on the test rows
    assert test["exact_match"] == 0.5
    assert ThresholdMetrics(0.5)(_Pred(logits, truth))["f1_micro"] == 0.0


def test_training_learns_with_tuned_threshold_and_pos_weight(tmp_path: Path, bert_dir: Path) -> None:
    data = tiny.multilabel_config(tmp_path, bert_dir, max_steps=60, eval_every=20, class_weights="balanced")
    cfg = config_from_dict(data, base_dir=tmp_path)
    prep = prepare(cfg)
    assert prep.examples.labels == ["film", "negative", "positive"]
    assert prep.train[0]["labels"] == [float(j in prep.examples.train[0]["label_ids"]) for j in range(3)]
    assert prep.stats["train"]["label_counts"] == [
        sum(j in r["label_ids"] for r in prep.examples.train) for j in range(3)
    ]
    result = run_job(cfg, prepared=prep)
    first, last = result.history[0], result.history[-1]
    assert last["f1_micro"] > first["f1_micro"] and last["f1_micro"] > 0.85, result.history
    assert last["exact_match"] > 0.6 and 0 < last["threshold"] < 1
    assert set(result.metrics) == {"f1_micro", "f1_macro", "exact_match", "eval_loss", "threshold"}


def test_bad_multilabel_input_exits_2(tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture) -> None:
    data = tiny.multilabel_config(tmp_path, bert_dir)
    rows = tiny.multilabel_rows(20, seed=3)
    rows[6]["labels"] = "positive"
    tiny.write_jsonl(tmp_path / "data" / "ml_train.jsonl", rows)
    err = tiny.refused_train(tmp_path, data, capsys)
    assert (
        "train.yaml: data.label_column: train row 7 of '" in err
        and "ml_train.jsonl': column 'labels' expected a list of label names or ids, found 'positive' (str)" in err
    )
    rows[6]["labels"] = ["positive"]
    tiny.write_jsonl(tmp_path / "data" / "ml_train.jsonl", rows)
    val = tiny.multilabel_rows(10, seed=4)
    val[2]["labels"] = ["sports"]
    tiny.write_jsonl(tmp_path / "data" / "ml_val.jsonl", val)
    err = tiny.refused_train(tmp_path, data, capsys)
    assert (
        "validation row 3 of" in err
        and "label 'sports' is not among the labels ['film', 'negative', 'positive']" in err
    )
    data["task_options"] = {"threshold": 1.5}
    err = tiny.refused_train(tmp_path, data, capsys)
    assert "task_options.threshold: expected a number in (0, 1) or tune, found 1.5" in err
    # a list of labels given to task: classification points to multilabel
    tiny.write_jsonl(tmp_path / "data" / "ml_val.jsonl", tiny.multilabel_rows(10, seed=4))
    data["task"], data["task_options"] = "classification", {}
    err = tiny.refused_train(tmp_path, data, capsys)
    assert "task: multilabel" in err


def test_data_report_counts_each_label(tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture) -> None:
    path = tiny.write_config(tmp_path / "train.yaml", tiny.multilabel_config(tmp_path, bert_dir))
    assert main(["data", str(path)]) == 0
    out = capsys.readouterr().out
    rows = tiny.multilabel_rows(240, seed=1)
    films = sum("film" in r["labels"] for r in rows)
    assert f"labels: film {films} (" in out and "labels per row: mean" in out
