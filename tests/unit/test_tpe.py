"""sftune's TPE ranks a running trial by what it has reported (search/tpe.py), Optuna's counts it as bad."""

from __future__ import annotations

import statistics

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from search.config import load_study
from search.study import build_sampler
from search.tpe import TPESampler, as_reported

SPACE = {"x": FloatDistribution(0.0, 1.0)}


def _proposals(running_trials: str, lead_reports: dict[int, float]) -> tuple[float, list[float]]:
    """Two complete trials (0.6, 0.62) and three pruned at step 50 around x = 0.05-0.25; one trial still
    running at x = 0.9 with `lead_reports`; the x of the next 20 proposals (each failed at once, so they
    do not count)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = TPESampler(seed=0, n_startup_trials=3, running_trials=running_trials)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for i, x in enumerate([0.05, 0.1, 0.15]):
        study.add_trial(
            create_trial(
                state=TrialState.PRUNED, params={"x": x}, distributions=SPACE, intermediate_values={50: 0.5 + 0.02 * i}
            )
        )
    for value, x in ((0.6, 0.2), (0.62, 0.25)):
        study.add_trial(
            create_trial(
                state=TrialState.COMPLETE,
                value=value,
                params={"x": x},
                distributions=SPACE,
                intermediate_values={50: 0.55, 100: value},
            )
        )
    study.enqueue_trial({"x": 0.9})
    lead = study.ask(SPACE)
    for step, value in lead_reports.items():
        lead.report(value, step)
    xs = []
    for _ in range(20):
        trial = study.ask(SPACE)
        xs.append(trial.params["x"])
        study.tell(trial, state=TrialState.FAIL)
    assert study.trials[lead.number].state == TrialState.RUNNING  # the view never changed the stored trial
    return statistics.mean(xs), xs


def test_a_running_trial_that_leads_draws_the_next_proposals_to_it() -> None:
    """The running trial at x = 0.9 has reported 0.85, more than any finished trial: sftune's TPE proposes
    near it; Optuna's constant liar (`running_trials: worst`) proposes away from it."""
    reported, xs = _proposals("reported", {50: 0.8, 100: 0.85})
    worst, _ = _proposals("worst", {50: 0.8, 100: 0.85})
    assert reported > 0.75 and min(xs) > 0.6, xs
    assert worst < 0.7, worst


def test_a_running_trial_that_reported_badly_or_not_at_all_does_not_draw_proposals() -> None:
    """Ranked by its latest report: a poor one (0.1 at step 100, after 0.9 at step 50), a NaN one, or none
    yet (the constant liar) leaves the proposals where Optuna's would be."""
    poor, _ = _proposals("reported", {50: 0.9, 100: 0.1})
    nan, _ = _proposals("reported", {50: float("nan")})
    silent, _ = _proposals("reported", {})
    worst, _ = _proposals("worst", {})
    assert poor < 0.7 and silent < 0.7
    assert silent == pytest.approx(worst) and nan == pytest.approx(worst)


def test_as_reported_shows_a_reporting_running_trial_as_finished_at_its_latest_evaluation() -> None:
    running = create_trial(state=TrialState.RUNNING, params={"x": 0.5}, distributions=SPACE)
    assert as_reported(running) is running  # no evaluation yet: still running (the constant liar)
    running.intermediate_values = {100: 0.6, 50: 0.7}
    shown = as_reported(running)
    assert shown.state == TrialState.COMPLETE and shown.value == 0.6 and shown.params == {"x": 0.5}
    assert running.state == TrialState.RUNNING and running.value is None
    done = create_trial(state=TrialState.COMPLETE, value=1.0, params={"x": 0.5}, distributions=SPACE)
    assert as_reported(done) is done


def test_multi_objective_studies_sample_with_running_trials() -> None:
    """Multi-objective trials report no evaluations; the sampler works as Optuna's there."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=TPESampler(seed=0, n_startup_trials=2))
    for x in (0.1, 0.5, 0.9):
        study.add_trial(
            create_trial(state=TrialState.COMPLETE, values=[x, 1 - x], params={"x": x}, distributions=SPACE)
        )
    study.ask(SPACE)
    trial = study.ask(SPACE)
    assert 0.0 <= trial.params["x"] <= 1.0


def test_a_study_files_tpe_is_sftunes_with_its_options(tmp_path, bert_dir) -> None:
    import tiny
    import yaml

    path = tiny.study_file(tmp_path, bert_dir)
    data = yaml.safe_load(path.read_text())
    data["sampler"] = {"name": "tpe", "seed": 3, "n_startup_trials": 5}
    path.write_text(yaml.safe_dump(data))
    sampler = build_sampler(load_study(path))
    assert isinstance(sampler, TPESampler) and sampler.running_trials == "reported"
    assert sampler._n_startup_trials == 5
    data["sampler"]["running_trials"] = "worst"
    path.write_text(yaml.safe_dump(data))
    assert build_sampler(load_study(path)).running_trials == "worst"
