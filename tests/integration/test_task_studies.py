"""A tiny study per task beyond classification and sft (regression, multilabel, token and image classification): two
trials each through a real local Ray cluster and a real SQLite database, the objective one of the task's own
metrics; the best exported and re-run; the HTML report written."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import tiny
import yaml
from optuna.trial import TrialState

from search.cli import main

pytestmark = pytest.mark.integration

CASES = {  # task: (objective, direction, a searched task option or None)
    "regression": ("r2", "maximize", {"task_options.loss": {"type": "categorical", "choices": ["mse", "huber"]}}),
    "multilabel": ("f1_macro", "maximize", {}),
    "token-classification": ("entity_f1", "maximize", {}),
    "image-classification": ("accuracy", "maximize", {}),
}


@pytest.mark.parametrize("task", sorted(CASES))
def test_a_study_of_each_task(
    task: str, tmp_path: Path, bert_dir: Path, ray_cluster: None, capsys: pytest.CaptureFixture
) -> None:
    metric, direction, extra = CASES[task]
    model = {
        "token-classification": lambda: tiny.make_char_model(tmp_path / "char-bert"),
        "image-classification": lambda: tiny.make_image_model(tmp_path / "resnet"),
    }.get(task, lambda: bert_dir)()
    base = tiny.TASK_CONFIGS[task](tmp_path, model, max_steps=20, eval_every=10)
    base["peft"] = {"method": "full"} if task == "image-classification" else {"method": "lora", "r": 4}
    space = {"train.learning_rate": {"type": "float", "low": 1e-3, "high": 5e-3, "log": True}, **extra}
    path = tiny.write_config(
        tmp_path / "s.yaml",
        {
            "name": "s",
            "objective": {"metric": metric, "direction": direction},
            "sampler": {"name": "tpe", "seed": 0},
            "pruner": {"name": "none"},
            "budget": {"n_trials": 2, "concurrency": 2},
            "resources": {"cpu": 1},
            "base": base,
            "space": space,
            "output_dir": str(tmp_path / "runs"),
        },
    )
    assert main(["run", str(path)]) == 0
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}")
    assert study.direction.name.lower() == direction
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        assert sorted(t.intermediate_values) == [10, 20]
        assert t.value == t.intermediate_values[20] == t.user_attrs["history"][-1][metric]
        assert t.user_attrs["config"]["task"] == task
    # the best trial's exported config re-runs to the same metric
    assert main(["export", str(path), "--out", str(tmp_path / "best.yaml")]) == 0
    best = yaml.safe_load((tmp_path / "best.yaml").read_text())
    best["output_dir"] = str(tmp_path / "rerun")
    tiny.write_config(tmp_path / "best.yaml", best)
    assert main(["train", str(tmp_path / "best.yaml")]) == 0
    again = json.loads((tmp_path / "rerun" / "metrics.json").read_text())["metrics"][metric]
    assert again == pytest.approx(study.best_value, abs=1e-4)
    assert main(["report", str(path), "--out", str(tmp_path / "report.html")]) == 0
    assert metric in (tmp_path / "report.html").read_text()
    capsys.readouterr()
