"""`keep_best` keeps the best evaluation's weights; `train.stop_at_step` re-runs up to that evaluation exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import tiny

from trainer import ConfigError, config_from_dict, run_job


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter" / "adapter_model.safetensors"))


def test_best_evaluation_is_kept_and_reproduced_by_stop_at_step(tmp_path: Path, bert_dir: Path) -> None:
    data = tiny.classification_config(tmp_path, bert_dir, max_steps=40, eval_every=10)
    data["peft"] = {"method": "lora", "r": 4}
    data["save"] = "adapter"
    # Accuracy rises as the tiny model learns, so "minimize accuracy" makes an early evaluation the best.
    result = run_job(config_from_dict(data, base_dir=tmp_path), keep_best=("accuracy", "minimize"))
    worst_first = min(result.history, key=lambda h: (h["accuracy"], h["step"]))
    assert result.best == worst_first
    assert result.best["step"] < result.step == 40  # the best is not the last evaluation
    kept = _weights(tmp_path / "out")

    again = dict(data, output_dir=str(tmp_path / "again"))
    again["train"] = dict(data["train"], stop_at_step=int(result.best["step"]))
    rerun = run_job(config_from_dict(again, base_dir=tmp_path))
    assert rerun.step == result.best["step"]
    assert rerun.metrics == {k: v for k, v in result.best.items() if k != "step"}
    assert rerun.history == [h for h in result.history if h["step"] <= result.best["step"]]
    reproduced = _weights(tmp_path / "again")
    assert kept.keys() == reproduced.keys()
    assert all(kept[k].equal(reproduced[k]) for k in kept)


def test_without_keep_best_the_last_weights_are_saved(tmp_path: Path, bert_dir: Path) -> None:
    data = tiny.classification_config(tmp_path, bert_dir, max_steps=20, eval_every=10)
    data["peft"] = {"method": "lora", "r": 4}
    data["save"] = "adapter"
    result = run_job(config_from_dict(data, base_dir=tmp_path))
    assert result.best is None
    first = _weights(tmp_path / "out")
    data["train"] = dict(data["train"], stop_at_step=10)
    data["output_dir"] = str(tmp_path / "short")
    run_job(config_from_dict(data, base_dir=tmp_path))
    short = _weights(tmp_path / "short")
    assert any(not first[k].equal(short[k]) for k in first)  # training on changed the weights


def test_stop_at_step_must_be_positive(tmp_path: Path, bert_dir: Path) -> None:
    data = tiny.classification_config(tmp_path, bert_dir, stop_at_step=0)
    with pytest.raises(ConfigError, match=r"train\.stop_at_step"):
        config_from_dict(data, base_dir=tmp_path)


def test_export_of_a_best_trial_stops_at_its_best_step(tmp_path: Path, bert_dir: Path) -> None:
    import optuna
    import yaml
    from optuna.distributions import FloatDistribution

    from search.cli import main

    path = tiny.study_file(tmp_path, bert_dir, name="b", objective={"metric": "accuracy", "use": "best"})
    study = optuna.create_study(study_name="b", storage=f"sqlite:///{tmp_path / 'b.db'}", direction="maximize")
    config = {"data": {"train": "t"}, "train": {"max_steps": 30}}
    study.add_trial(
        optuna.trial.create_trial(
            params={"train.learning_rate": 0.002},
            distributions={"train.learning_rate": FloatDistribution(1e-3, 1e-2)},
            value=0.9,
            intermediate_values={10: 0.7, 20: 0.9, 30: 0.8},
            user_attrs={"config": config, "best_step": 20},
        )
    )
    assert main(["export", str(path), "--out", str(tmp_path / "best.yaml")]) == 0
    text = (tmp_path / "best.yaml").read_text()
    assert yaml.safe_load(text)["train"] == {"max_steps": 30, "stop_at_step": 20}
    assert "# Its best accuracy = 0.9" in text and "stops at step 20" in text
