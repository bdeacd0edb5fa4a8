"""The learning-curve pruner (search/curve_pruner.py) on synthetic curves: a slow starter that ends best is kept
where the median rule stops it, a flat loser is stopped at its second evaluation, loss curves are judged in
their direction; the driver prunes with it by name; bad options exit 2 before anything is written."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
import pytest
import tiny
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from test_driver_contract import Events

from search._driver import Driver
from search._trial_result import DONE_KEY
from search.cli import main
from search.config import load_study
from search.curve_pruner import LearningCurvePruner, extrapolate
from search.study import build_pruner, open_study, training_steps

STEPS = (25, 50, 100, 150, 200)
DIST = {"x": FloatDistribution(0.0, 1.0)}


def saturating(top: float, depth: float) -> dict[int, float]:
    """A curve that climbs toward `top` as 1/sqrt(step): most of its gain comes early."""
    return {s: top - depth * s**-0.5 for s in STEPS}


def study_of(finals: list[dict[int, float]], direction: str = "maximize") -> optuna.Study:
    study = optuna.create_study(direction=direction)
    for curve in finals:
        study.add_trial(
            create_trial(params={"x": 0.5}, distributions=DIST, value=curve[max(curve)], intermediate_values=curve)
        )
    return study


def running(study: optuna.Study, curve: dict[int, float], up_to: int) -> optuna.trial.FrozenTrial:
    """A RUNNING trial in `study` with the values of `curve` up to step `up_to`."""
    study.add_trial(
        create_trial(
            state=TrialState.RUNNING,
            params={"x": 0.5},
            distributions=DIST,
            intermediate_values={s: v for s, v in curve.items() if s <= up_to},
        )
    )
    return study.get_trials(deepcopy=False)[-1]


FINISHED = [saturating(top, 0.5) for top in (0.78, 0.80, 0.82, 0.84, 0.85)]  # best ends at 0.85 - 0.5/sqrt(200)
SLOW = {s: 0.45 + 0.07 * math.log(s) for s in STEPS}  # 0.68 at step 25, 0.72 at 50, ends 0.82: the best of all
FLAT = dict.fromkeys(STEPS, 0.6)


def test_extrapolation_follows_the_curve_it_is_given() -> None:
    assert extrapolate([10, 20], [0.5, 0.5], 100) == (0.5, 0.0)  # flat: every member says so
    climbing, spread = extrapolate([25, 50, 100], [0.6, 0.7, 0.8], 200)
    assert 0.8 < climbing < 0.9 and spread > 0  # log-linear reaches 0.9, the power law levels off, flat says 0.8
    assert extrapolate([25], [0.7], 200) == (0.7, 0.0)  # one point: its value


def test_a_slow_starter_that_ends_best_is_kept_where_the_median_rule_stops_it() -> None:
    pruner = LearningCurvePruner(max_resource=200)
    median = optuna.pruners.MedianPruner(n_startup_trials=1)
    best = max(c[200] for c in FINISHED)
    assert SLOW[200] > best and SLOW[50] < sorted(c[50] for c in FINISHED)[2]  # below the median at step 50
    for step in STEPS[1:-1]:
        study = study_of(FINISHED)
        trial = running(study, SLOW, step)
        assert not pruner.prune(study, trial), step
        if step == 50:
            assert median.prune(study, trial)  # what the median rule does to it
    study = study_of(FINISHED)
    chance = pruner.chance(study, running(study, SLOW, 50))
    assert chance is not None and chance > 0.2


def test_a_flat_loser_is_pruned_at_its_second_evaluation() -> None:
    pruner = LearningCurvePruner(max_resource=200)
    study = study_of(FINISHED)
    assert not pruner.prune(study, running(study, FLAT, 25))  # one evaluation: min_points is 2
    study = study_of(FINISHED)
    chance = pruner.chance(study, running(study, FLAT, 50))
    assert chance is not None and chance < 1e-6 and pruner.prune(study, running(study, FLAT, 50))


def test_a_close_follower_is_kept_and_a_loss_curve_is_judged_downward() -> None:
    pruner = LearningCurvePruner(max_resource=200)
    study = study_of(FINISHED)
    close = saturating(0.849, 0.5)  # ends 0.001 below the best: its chance is near a half
    assert not pruner.prune(study, running(study, close, 100))
    losses = [{s: -v for s, v in c.items()} for c in FINISHED]
    study = study_of(losses, direction="minimize")
    assert pruner.prune(study, running(study, {s: -v for s, v in FLAT.items()}, 50))
    study = study_of(losses, direction="minimize")
    assert not pruner.prune(study, running(study, {s: -v for s, v in SLOW.items()}, 100))


def test_it_waits_for_a_finished_trial_warm_up_and_the_end() -> None:
    study = study_of([])
    assert LearningCurvePruner().chance(study, running(study, FLAT, 100)) is None  # nothing finished
    study = study_of(FINISHED)
    assert LearningCurvePruner(n_warmup_steps=100).chance(study, running(study, FLAT, 50)) is None
    study = study_of(FINISHED)
    assert LearningCurvePruner(max_resource=100).chance(study, running(study, FLAT, 100)) is None  # at the end
    study = study_of(FINISHED[:1])
    assert LearningCurvePruner(min_completed=2).chance(study, running(study, FLAT, 100)) is None
    study = study_of(FINISHED)  # max_resource unset: the finished trials' last step (200)
    assert LearningCurvePruner().prune(study, running(study, FLAT, 50))
    study = study_of(FINISHED)
    assert LearningCurvePruner().chance(study, running(study, {s: 0.9 for s in STEPS}, 50)) == 1.0  # leads


def test_it_learns_from_the_study_how_much_curves_still_climb() -> None:
    """Finished trials that all climbed late teach it to expect a late climb of the same size."""
    late = [{**dict.fromkeys(STEPS, top - 0.2), 200: top} for top in (0.8, 0.82, 0.84)]  # +0.2 at the last step
    pruner = LearningCurvePruner(max_resource=200)
    study = study_of(late)
    follower = {**dict.fromkeys(STEPS, 0.63), 200: 0.83}  # flat at 0.63 so far; the study says +0.2 comes
    chance = pruner.chance(study, running(study, follower, 150))
    assert chance is not None and chance > pruner.threshold
    study = study_of(FINISHED)  # the same values in a study whose curves level off: stopped
    assert pruner.prune(study, running(study, follower, 150))


def _eval(d: Driver, tid: str, step: int, acc: float) -> bool:
    return d.result(tid, {"accuracy": acc, "f1_macro": acc, "eval_loss": 1 - acc, "step": step, "max_steps": 40})


def test_the_driver_prunes_by_name_with_the_base_configs_steps(tmp_path: Path, bert_dir: Path) -> None:
    path = tiny.study_file(tmp_path, bert_dir, name="lc", n_trials=4, max_steps=40, pruner={"name": "learning-curve"})
    cfg = load_study(path)
    assert training_steps(cfg) == 40
    built = build_pruner(cfg)
    assert isinstance(built, LearningCurvePruner) and built.max_resource == 40
    d = Driver(cfg=cfg, study=open_study(cfg), progress=Events())
    for tid in ("a", "b"):
        d.suggest(tid)
    for step, acc in ((10, 0.6), (20, 0.7), (30, 0.75), (40, 0.8)):
        assert _eval(d, "a", step, acc) is False
    d.complete("a", {"accuracy": 0.8, "f1_macro": 0.8, "eval_loss": 0.2, "step": 40, DONE_KEY: True}, False)
    assert _eval(d, "b", 10, 0.5) is False  # one evaluation
    assert _eval(d, "b", 20, 0.5) is True  # flat at 0.5 against a finished 0.8
    d.complete("b", None, False)
    states = {t.number: t.state for t in d.study.trials}
    assert states == {0: TrialState.COMPLETE, 1: TrialState.PRUNED}
    assert d.study.trials[1].intermediate_values == {10: 0.5, 20: 0.5}
    why = d.study.trials[1].user_attrs["pruned_because"]  # the rule's numbers, on the trial and in the view
    assert why.startswith("0.0% chance to end at or above the best finished trial's 0.8: its curve extrapolates to 0.5")
    finished = [v for k, v in d.progress.lines if k == "finished"]
    assert finished[-1][:2] == (1, "PRUNED") and finished[-1][2].startswith("at step 20 (0.0% chance")


def test_training_steps_is_unknown_when_searched_or_by_epochs(tmp_path: Path, bert_dir: Path) -> None:
    space = {"train.max_steps": {"type": "int", "low": 20, "high": 40}}
    cfg = load_study(tiny.study_file(tmp_path, bert_dir, name="m", space=space, pruner={"name": "learning-curve"}))
    assert training_steps(cfg) is None and build_pruner(cfg).max_resource is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("pruner", "expected"),
    [
        (
            {"name": "learning-curve", "threshold": 1.5},
            "pruner: learning-curve: threshold must be a probability between 0 and 1 (exclusive), but got 1.5",
        ),
        (
            {"name": "learning-curve", "min_points": 0},
            "pruner: learning-curve: min_points must be an integer >= 1, but got 0",
        ),
        ({"name": "learning-curve", "alpha": 1}, "pruner.alpha: unknown option for pruner 'learning-curve'"),
        ({"name": "learning-curves"}, "did you mean 'learning-curve'"),
        ({"name": "median", "n_startup_trials": -1}, "pruner: median: Number of startup trials cannot be negative"),
        ({"name": "threshold"}, "pruner: threshold: Either lower or upper must be specified"),
    ],
)
def test_bad_options_exit_2_before_anything_is_written(
    tmp_path: Path, bert_dir: Path, pruner: dict[str, Any], expected: str, capsys: pytest.CaptureFixture
) -> None:
    path = tiny.study_file(tmp_path, bert_dir, name="bad", pruner=pruner)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "bad.db").exists()
