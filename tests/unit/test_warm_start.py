"""Warm start without Ray: which earlier trials fit the current space (out of range: skipped, never clipped; a
dropped param: left to the base), the queue they make (best first, recorded as `warm_start_of`, once per study),
and bad input that exits 2 before any trial."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import tiny
from optuna.distributions import FloatDistribution, IntDistribution

from search.cli import main
from search.config import load_study
from search.run import _open
from search.warm_start import ATTR, WarmStart, enqueue_warm_start, misfit, parse_entry, plan_warm_start

DISTS = {
    "train.learning_rate": FloatDistribution(1e-4, 1.0, log=True),
    "peft.r": IntDistribution(1, 64),
    "train.weight_decay": FloatDistribution(0.0, 0.1),
}


def _earlier(tmp: Path, name: str = "old", direction: str = "maximize") -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{tmp / 'old.db'}", direction=direction)
    study.set_user_attr("objective_metrics", ["accuracy"])
    rows = [
        (0.9, {"train.learning_rate": 0.5, "peft.r": 4}),  # best, but lr outside the current [1e-3, 1e-2]
        (0.8, {"train.learning_rate": 0.005, "peft.r": 4, "train.weight_decay": 0.01}),  # dropped param
        (0.7, {"train.learning_rate": 0.002, "peft.r": 8}),
        (0.6, {"train.learning_rate": 0.003, "peft.r": 32}),  # r outside [2, 8]
        (0.5, {"train.learning_rate": 0.004, "peft.r": 2}),
    ]
    for value, params in rows:
        study.add_trial(
            optuna.trial.create_trial(params=params, distributions={k: DISTS[k] for k in params}, value=value)
        )
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    return study


def test_misfit_says_why() -> None:
    from search.space import Param

    lr = Param("train.learning_rate", "float", 1e-3, 1e-2, log=True)
    assert misfit(lr, 5e-3) is None and "outside [0.001, 0.01]" in misfit(lr, 0.5)
    r = Param("peft.r", "int", 2, 8, step=2)
    assert misfit(r, 4) is None and "off the step 2" in misfit(r, 3) and "not an integer" in misfit(r, 4.5)
    cat = Param("peft.method", "categorical", choices=["lora", "full"])
    assert misfit(cat, "lora") is None and "not among the choices" in misfit(cat, "dora")
    assert parse_entry("old@postgresql://u:p@h/db") == {"study": "old", "storage": "postgresql://u:p@h/db"}


def test_the_best_that_fit_are_queued_first_once(tmp_path: Path, bert_dir: Path) -> None:
    _earlier(tmp_path)
    path = tiny.study_file(
        tmp_path,
        bert_dir,
        name="new",
        warm_start=[{"study": "old", "storage": f"sqlite:///{tmp_path / 'old.db'}", "top": 2}],
    )
    cfg = load_study(path)
    assert cfg.warm_start == [WarmStart("old", f"sqlite:///{tmp_path / 'old.db'}", 2)]
    carried = plan_warm_start(cfg)
    assert [c.origin["trial"] for c in carried] == [1, 2]  # trial 0 is out of range: skipped, not clipped
    assert carried[0].params == {"train.learning_rate": 0.005, "peft.r": 4}
    assert carried[0].dropped == ("train.weight_decay",)
    assert carried[0].origin["values"] == {"accuracy": 0.8}

    said: list[str] = []
    study, _ = _open(cfg, said.append, False, [], carried)
    assert "warm start: 2 trial(s) of old" in said[0] and "train.weight_decay" in said[0]
    first, second = study.ask(), study.ask()
    assert first.params == {} and first.user_attrs[ATTR]["trial"] == 1  # params come when the space samples them
    from search.space import sample_params

    assert sample_params(first, cfg.space) == {"train.learning_rate": 0.005, "peft.r": 4}
    assert sample_params(second, cfg.space) == {"train.learning_rate": 0.002, "peft.r": 8}
    study, _ = _open(cfg, said.append, False, [], carried)  # a resumed run does not queue them again
    assert enqueue_warm_start(study, carried, said.append) == [] and len(said) == 1


@pytest.mark.parametrize(
    ("warm", "expected"),
    [
        ({"study": "gone"}, "warm_start[0].study: no study named 'gone' in sqlite:///"),
        ({"study": "old", "storage": "sqlite:////nowhere/x.db"}, "its database /nowhere/x.db does not exist"),
        ({"study": "old", "top": 0}, "warm_start[0].top: expected an integer >= 1, found 0 (int)"),
        ({"study": "old", "tops": 2}, "warm_start[0].tops: unknown key; did you mean 'top'?"),
        ({"study": "new"}, "'new' is this study; name an earlier one"),
    ],
)
def test_bad_warm_start_exits_2_before_any_trial(
    tmp_path: Path, bert_dir: Path, warm: dict, expected: str, capsys: pytest.CaptureFixture
) -> None:
    path = tiny.study_file(
        tmp_path, bert_dir, name="new", storage=f"sqlite:///{tmp_path / 'old.db'}", warm_start=[warm]
    )
    _earlier(tmp_path)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert "new" not in [s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 'old.db'}")]


def test_no_compatible_trial_says_what_did_not_fit(
    tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    _earlier(tmp_path)
    space = {"train.learning_rate": {"type": "float", "low": 1e-5, "high": 1e-4, "log": True}}
    path = tiny.study_file(tmp_path, bert_dir, name="new", space=space)
    assert main(["run", str(path), "--warm-start", f"old@sqlite:///{tmp_path / 'old.db'}"]) == 2
    err = capsys.readouterr().err
    assert "none of the 5 complete trials of study 'old' fits the current space" in err
    assert "trial 0: train.learning_rate=0.5 is outside [1e-05, 0.0001]" in err and "and 2 more" in err
    assert not (tmp_path / "new.db").exists()
