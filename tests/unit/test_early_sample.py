"""`eval.early_sample`: early evaluations score a fixed, seeded sample of the validation rows, the last one all
of them (the same final metrics as without it); bad values and `objective.use: best` with it exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import tiny
import yaml

from search.cli import main
from trainer import config_from_dict, run_job
from trainer.job import early_sample


def test_the_sample_is_fixed_ordered_and_sized() -> None:
    rows = list(range(100))
    ten = early_sample(rows, 10)
    assert ten is not None and len(ten) == 10 and ten == sorted(ten) and ten == early_sample(rows, 10)
    assert early_sample(rows, 0.25) is not None and len(early_sample(rows, 0.25) or []) == 25
    assert early_sample(rows, None) is None and early_sample(rows, 100) is None  # every row: no sample


def test_early_evaluations_score_the_sample_and_the_last_one_every_row(tmp_path: Path, bert_dir: Path) -> None:
    data = tiny.classification_config(tmp_path, bert_dir, max_steps=30, eval_every=10)
    whole = run_job(config_from_dict(data, source="test", base_dir=tmp_path)).history
    data["eval"] = {"early_sample": 0.2}  # 16 of the 80 validation rows
    sampled = run_job(config_from_dict(data, source="test", base_dir=tmp_path)).history
    assert [h["step"] for h in sampled] == [10, 20, 30]
    for early, full in zip(sampled[:-1], whole[:-1], strict=True):
        assert (early["accuracy"] * 16).is_integer()  # scored on 16 rows
        assert early["eval_loss"] != full["eval_loss"]  # not the whole set's loss
    assert sampled[-1] == whole[-1]  # the last evaluation: every row, the same model


@pytest.mark.parametrize("value", [1.5, 0, -0.2])
def test_a_bad_sample_size_exits_2(tmp_path: Path, bert_dir: Path, value: float, capsys) -> None:
    data = tiny.classification_config(tmp_path, bert_dir)
    data["eval"] = {"early_sample": value}
    err = tiny.refused_train(tmp_path, data, capsys)
    assert "eval.early_sample: expected a fraction in (0, 1) or a whole number of rows >= 1" in err
    assert f"found {value}" in err


def test_best_evaluation_objective_with_an_early_sample_exits_2(tmp_path: Path, bert_dir: Path, capsys) -> None:
    path = tiny.study_file(
        tmp_path, bert_dir, name="b", objective={"metric": "accuracy", "use": "best"}, pruner={"name": "median"}
    )
    study = yaml.safe_load(path.read_text())
    study["base"]["eval"] = {"early_sample": 20}
    tiny.write_config(path, study)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "objective.use: best compares every evaluation's value" in err and "Traceback" not in err
    assert not (tmp_path / "b.db").exists()
