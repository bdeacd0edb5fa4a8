"""A space's `fixed:` values: part of every trial's config and of the base fingerprint, never a sampled param;
a study made with the old shipped space (a one-choice categorical) resumes with the new one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
import tiny
import yaml
from conftest import REPO

from search.cli import main
from search.config import load_study
from search.space import sample_params
from search.storage import close_study
from search.study import base_changes, open_study

# spaces/lora-classification.yaml before `fixed:` (its comments left out)
OLD_LORA_CLASSIFICATION = """\
train.learning_rate: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
train.batch_size:    {type: categorical, choices: [8, 16, 32]}
train.warmup_ratio:  {type: float, low: 0.0, high: 0.1}
peft.r:              {type: categorical, choices: [4, 8, 16, 32]}
peft.dropout:        {type: float, low: 0.0, high: 0.1}
peft.target_modules: {type: categorical, choices: [all-linear]}
"""
SEARCHED = {
    "train.learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
    "peft.r": {"type": "int", "low": 2, "high": 8},
}


def _space_file(tmp_path: Path, text: str, name: str = "space.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _run_one_trial(cfg: Any) -> optuna.trial.FrozenTrial:
    """Open (or create) the study, ask one trial as the driver does, store its config and tell it COMPLETE."""
    study = open_study(cfg)
    try:
        trial = study.ask()
        sampled = sample_params(trial, cfg.space)
        trial.set_user_attr("config", cfg.trial_config(sampled, trial.number))
        study.tell(trial, 0.5)
        return study.trials[-1]
    finally:
        close_study(study)


def test_fixed_values_are_in_the_config_not_in_the_params(tmp_path: Path, bert_dir: Path) -> None:
    path = tiny.study_file(
        tmp_path,
        bert_dir,
        space={**SEARCHED, "fixed": {"peft.target_modules": "all-linear", "train.weight_decay": 0.01}},
    )
    cfg = load_study(path)
    assert cfg.space.keys() == list(SEARCHED) and cfg.space.fixed == {
        "peft.target_modules": "all-linear",
        "train.weight_decay": 0.01,
    }
    assert cfg.base_config.peft.target_modules == "all-linear" and cfg.base_config.train.weight_decay == 0.01
    trial = _run_one_trial(cfg)
    assert set(trial.params) == set(SEARCHED)  # never a stored param
    config = trial.user_attrs["config"]
    assert config["peft"]["target_modules"] == "all-linear" and config["train"]["weight_decay"] == 0.01


def test_a_changed_fixed_value_is_a_base_change_on_resume(
    tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    path = tiny.study_file(tmp_path, bert_dir, space={**SEARCHED, "fixed": {"train.weight_decay": 0.01}})
    _run_one_trial(load_study(path))
    data = yaml.safe_load(path.read_text())
    data["space"]["fixed"]["train.weight_decay"] = 0.1
    path.write_text(yaml.safe_dump(data))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "created with another base config" in err and "train.weight_decay: 0.01 -> 0.1" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "fixed,expected",
    [
        (
            {"peft.target_module": "all-linear"},
            "space.fixed.peft.target_module: not a train-config field; did you mean 'peft.target_modules'?",
        ),
        ({"train.batch_size": "many"}, "space.fixed.train.batch_size: value 'many': "),
        ({"peft.r": 8}, "space.fixed.peft.r: peft.r is both fixed and searched"),
        ({"output_dir": "elsewhere"}, "space.fixed.output_dir: the study sets each trial's output_dir"),
        (["peft.r", 8], "space.fixed: expected a mapping of config keys to values"),
        ({"peft.target_modules": "everything"}, "space.fixed.peft.target_modules: value 'everything': expected 'auto'"),
    ],
)
def test_bad_fixed_values(
    tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture, fixed: Any, expected: str
) -> None:
    path = tiny.study_file(tmp_path, bert_dir, space={**SEARCHED, "fixed": fixed})
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert str(path) in err and "Traceback" not in err
    assert not (tmp_path / "s.db").exists()


def test_a_when_on_a_fixed_key_says_so(tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture) -> None:
    space = {
        "fixed": {"peft.method": "lora"},
        "peft.r": {"type": "int", "low": 2, "high": 8, "when": {"peft.method": "lora"}},
    }
    path = tiny.study_file(tmp_path, bert_dir, space=space)
    assert main(["run", str(path)]) == 2
    assert "space.peft.r.when: names 'peft.method', which is fixed (to 'lora'), not searched" in capsys.readouterr().err


def test_shipped_spaces_fix_instead_of_one_choice_params() -> None:
    for path in sorted((REPO / "spaces").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        one_choice = [k for k, v in data.items() if isinstance(v, dict) and len(v.get("choices", [0, 1])) == 1]
        assert one_choice == [], path
    assert "peft.target_modules" not in load_study(REPO / "studies" / "quickstart.yaml").space


def test_a_study_made_with_the_old_shipped_space_resumes_with_the_new(
    tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    # The shipped lora-classification space as it was: peft.target_modules a one-choice categorical param.
    old_space = OLD_LORA_CLASSIFICATION
    new_space = (REPO / "spaces" / "lora-classification.yaml").read_text()
    path = tiny.study_file(tmp_path, bert_dir, space=_space_file(tmp_path, old_space, "old.yaml"))
    old = load_study(path)
    assert old.base["peft"]["target_modules"] == "auto"
    first = _run_one_trial(old)
    assert first.params["peft.target_modules"] == "all-linear"

    data = yaml.safe_load(path.read_text())
    data["space"] = _space_file(tmp_path, new_space, "new.yaml")
    path.write_text(yaml.safe_dump(data))
    new = load_study(path)
    study = open_study(new)  # no "space changed", no base change
    try:
        assert base_changes(study, new) == []
    finally:
        close_study(study)
    second = _run_one_trial(new)
    assert "peft.target_modules" not in second.params
    assert second.user_attrs["config"]["peft"]["target_modules"] == "all-linear"
    third = _run_one_trial(load_study(path))  # and again, now that the study holds trials of both kinds
    assert third.user_attrs["config"]["peft"]["target_modules"] == "all-linear"
