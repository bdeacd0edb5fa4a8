"""Study files and spaces: sampling semantics and every bad-input case, without Ray."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import tiny
from optuna.trial import TrialState

from search._driver.outcome import outcome_state
from search._trial_result import DONE_KEY, ERROR_KEY
from search.cli import main
from search.config import load_study
from search.space import sample_params


def test_conditional_params_follow_when(tmp_path: Path, bert_dir: Path) -> None:
    path = tiny.study_file(
        tmp_path,
        bert_dir,
        space={
            "peft.method": {"type": "categorical", "choices": ["lora", "full"]},
            "peft.r": {"type": "int", "low": 2, "high": 8, "log": True, "when": {"peft.method": "lora"}},
            "train.batch_size": {"choices": [8, 16]},
        },
    )
    cfg = load_study(path)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        sampled = sample_params(trial, cfg.space)
        assert ("peft.r" in sampled) == (sampled["peft.method"] == "lora")
        seen.add(sampled["peft.method"])
        data = cfg.trial_config(sampled, trial.number)
        assert data["peft"]["method"] == sampled["peft.method"]
        assert data["output_dir"].endswith(f"trials/{trial.number:04d}")
        study.tell(trial, 0.5)
    assert seen == {"lora", "full"}


def test_outcome_states() -> None:
    assert outcome_state(pruned=True, error=False, result={"step": 10}) == TrialState.PRUNED
    assert outcome_state(pruned=False, error=True, result=None) == TrialState.FAIL
    assert outcome_state(pruned=False, error=False, result={ERROR_KEY: "boom"}) == TrialState.FAIL
    assert outcome_state(pruned=False, error=False, result={"accuracy": 0.9, "step": 20}) == TrialState.FAIL
    assert outcome_state(pruned=False, error=False, result={"accuracy": 0.9, DONE_KEY: True}) == TrialState.COMPLETE


def test_shipped_spaces_and_studies_load() -> None:
    from conftest import REPO

    for path in sorted((REPO / "studies").glob("*.yaml")):
        if path.name.endswith("-train.yaml"):
            continue
        cfg = load_study(path)
        assert cfg.space.params
    from search.space import parse_space
    from trainer import read_yaml

    for path in sorted((REPO / "spaces").glob("*.yaml")):
        problems: list = []
        parse_space(read_yaml(path), source=str(path), base_dir=path.parent, problems=problems)
        assert problems == [], path


def _bad(path: Path, capsys: pytest.CaptureFixture, *extra: str) -> str:
    assert main(["run", str(path), *extra]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    "change,expected",
    [
        ({"sampler": {"name": "tpee"}}, "sampler.name: unknown sampler 'tpee'; did you mean 'tpe'?"),
        (
            {"sampler": {"name": "tpe", "running_trials": "best"}},
            "sampler.running_trials: expected one of reported, worst, found 'best'",
        ),
        (
            {"sampler": {"name": "tpe", "constant_lier": False}},
            "sampler.constant_lier: unknown option for sampler 'tpe'; did you mean 'constant_liar'?",
        ),
        (
            {"sampler": {"name": "gp", "running_trials": "worst"}},
            "sampler.running_trials: unknown option for sampler 'gp'",
        ),
        (
            {"pruner": {"name": "median", "n_startup": 2}},
            "pruner.n_startup: unknown option for pruner 'median'; did you mean 'n_startup_trials'?",
        ),
        ({"pruner": {"name": "hyperbando"}}, "pruner.name: unknown pruner 'hyperbando'; did you mean 'hyperband'?"),
        (
            {"space": {"train.learnig_rate": {"type": "float", "low": 1e-4, "high": 1e-3}}},
            "space.train.learnig_rate: not a train-config field; did you mean 'train.learning_rate'?",
        ),
        (
            {"space": {"train.learning_rate": {"type": "float", "low": 1e-2, "high": 1e-4}}},
            "`low <= high` must hold, but got (low=0.01, high=0.0001)",
        ),
        (
            {"space": {"train.weight_decay": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}},
            "space.train.weight_decay: log scale needs low > 0, but got low=0.0",
        ),
        (
            {"space": {"train.batch_size": {"type": "categorical", "choices": []}}},
            "space.train.batch_size.choices: expected a non-empty list, found []",
        ),
        (
            {"space": {"peft.r": {"type": "int", "low": 2, "high": 8, "when": {"peft.methd": "lora"}}}},
            "space.peft.r.when: names unknown parameter 'peft.methd'",
        ),
        (
            {"space": {"peft.method": {"type": "categorical", "choices": ["lora", "dora"]}}},
            "space.peft.method: value 'dora': expected one of lora, qlora, full",
        ),
        (
            {"objective": {"metric": "perplexity"}},
            "objective.metric: task classification reports accuracy, f1_macro, eval_loss; found 'perplexity'",
        ),
        ({"storage": "postgresql://nobody@127.0.0.1:1/none"}, "storage: cannot open study storage"),
        ({"storage": "notadb://x"}, "storage: cannot open study storage 'notadb://x'"),
        ({"budget": {"n_trial": 3}}, "budget.n_trial: unknown key; did you mean 'n_trials'?"),
        ({"base": {}}, "(base): data: required key is missing"),
    ],
)
def test_bad_study(tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture, change: dict, expected: str) -> None:
    path = tiny.study_file(tmp_path, bert_dir, **{k: v for k, v in change.items() if k in ("pruner", "space")})
    if set(change) - {"pruner", "space"}:
        import yaml

        data = yaml.safe_load(path.read_text())
        data.update({k: v for k, v in change.items() if k not in ("pruner", "space")})
        path.write_text(yaml.safe_dump(data))
    err = _bad(path, capsys)
    assert expected in err
    assert str(path) in err or "space" in err


def test_many_problems_in_one_message(tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture) -> None:
    path = tiny.study_file(
        tmp_path,
        bert_dir,
        pruner={"name": "nope"},
        space={"train.learning_rate": {"type": "float", "low": 0.0, "high": 1.0, "log": True}},
    )
    err = _bad(path, capsys, "--set", "sampler.name=qmcc")
    assert "3 problems" in err and "nope" in err and "qmcc" in err and "log scale" in err


def test_existing_study_with_other_direction_is_left_alone(
    tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    path = tiny.study_file(tmp_path, bert_dir, name="keep")
    storage = f"sqlite:///{tmp_path / 'keep.db'}"
    study = optuna.create_study(study_name="keep", storage=storage, direction="minimize")
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.25))
    err = _bad(path, capsys)
    assert "created with direction(s) ['minimize'], but this file asks for ['maximize']" in err
    again = optuna.load_study(study_name="keep", storage=storage)
    assert [t.value for t in again.trials] == [0.25]


def test_set_unknown_study_key(tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture) -> None:
    path = tiny.study_file(tmp_path, bert_dir)
    err = _bad(path, capsys, "--set", "budget.trials=3")
    assert "--set: budget.trials: unknown key; did you mean 'budget.n_trials'?" in err


def test_status_of_a_study_not_run_yet(tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture) -> None:
    path = tiny.study_file(tmp_path, bert_dir)
    assert main(["status", str(path)]) == 2
    assert "no study named 's'" in capsys.readouterr().err


def test_only_a_sqlite_file_not_yet_created_counts_as_a_new_study(tmp_path: Path) -> None:
    from search.run import _is_new_sqlite

    existing = tmp_path / "old.db"
    existing.write_bytes(b"")
    assert _is_new_sqlite(f"sqlite:///{tmp_path / 'new.db'}")
    assert not _is_new_sqlite(f"sqlite:///{existing}")
    assert not _is_new_sqlite("sqlite:///:memory:")
    assert not _is_new_sqlite("postgresql://user@localhost/studies")
