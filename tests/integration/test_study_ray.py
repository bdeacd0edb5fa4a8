"""Studies on a real local Ray cluster and a real SQLite database, with tiny random models."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import tiny
import yaml
from optuna.trial import TrialState

from search.cli import main
from trainer import resolve_precision

pytestmark = pytest.mark.integration


def _study(tmp: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp / (name + '.db')}")


def test_states_values_and_configs_in_the_database(tmp_path: Path, bert_dir: Path, ray_cluster: None) -> None:
    path = tiny.study_file(tmp_path, bert_dir, name="plain", n_trials=4, pruner={"name": "none"})
    assert main(["run", str(path)]) == 0
    trials = _study(tmp_path, "plain").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    for t in trials:
        assert sorted(t.intermediate_values) == [10, 20, 30]  # one per evaluation, the last included
        assert t.value == t.intermediate_values[30]  # the final evaluation's metric
        assert t.user_attrs["config"]["train"]["learning_rate"] == t.params["train.learning_rate"]
        assert t.user_attrs["config"]["peft"]["r"] == t.params["peft.r"]
        assert [h["step"] for h in t.user_attrs["history"]] == [10, 20, 30]
        assert t.user_attrs["precision"] == resolve_precision("auto")[1]  # what the worker trained in
    assert (
        json.loads((tmp_path / "runs" / "trials" / "0000" / "metrics.json").read_text())["precision"]
        == resolve_precision("auto")[1]
    )
    assert not (Path.home() / "ray_results" / "plain").exists()


def test_a_chat_trial_records_its_template(tmp_path: Path, gpt2_dir: Path, ray_cluster: None) -> None:
    path = tiny.study_file(tmp_path, gpt2_dir, name="chat", n_trials=1, concurrency=1)
    data = yaml.safe_load(path.read_text())
    data["base"] = tiny.chat_config(tmp_path, gpt2_dir, chat_template="alpaca")
    data["objective"] = {"metric": "eval_loss", "direction": "minimize"}
    tiny.write_config(path, data)
    assert main(["run", str(path)]) == 0
    (trial,) = _study(tmp_path, "chat").trials
    assert trial.state == TrialState.COMPLETE and trial.user_attrs["template"] == "alpaca"


def test_a_pruner_that_must_prune_prunes_promptly(tmp_path: Path, bert_dir: Path, ray_cluster: None) -> None:
    path = tiny.study_file(
        tmp_path, bert_dir, name="pruned", n_trials=3, max_steps=200, pruner={"name": "threshold", "lower": 0.999}
    )
    started = time.time()
    assert main(["run", str(path)]) == 0
    trials = _study(tmp_path, "pruned").trials
    assert [t.state for t in trials] == [TrialState.PRUNED] * 3
    assert all(sorted(t.intermediate_values) == [10] for t in trials)  # stopped at the first evaluation
    metrics = [tmp_path / "runs" / "trials" / f"{t.number:04d}" / "metrics.json" for t in trials]
    assert not any(m.exists() for m in metrics)  # none ran on to its end
    assert time.time() - started < 120


def test_median_pruner_prunes_a_bad_trial(tmp_path: Path, bert_dir: Path, ray_cluster: None) -> None:
    space = {"train.learning_rate": {"type": "categorical", "choices": [3e-3, 1e-7]}}
    path = tiny.study_file(
        tmp_path,
        bert_dir,
        name="median",
        n_trials=4,
        concurrency=1,
        space=space,
        pruner={"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
        sampler={"name": "grid"},
    )
    assert main(["run", str(path)]) == 0
    trials = _study(tmp_path, "median").trials
    by_lr = {t.params["train.learning_rate"]: t.state for t in trials}
    assert by_lr[1e-7] == TrialState.PRUNED or trials[0].params["train.learning_rate"] == 1e-7


def test_one_failing_trial_fails_alone(tmp_path: Path, bert_dir: Path, ray_cluster: None) -> None:
    (tmp_path / "breaker.py").write_text(
        "def space(trial):\n"
        "    if trial.number == 1:\n"
        "        return {'peft.target_modules': ['no_such_layer']}\n"
        "    return {}\n"
    )
    space = {
        "train.learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
        "python": "breaker:space",
    }
    path = tiny.study_file(tmp_path, bert_dir, name="fails", n_trials=3, space=space)
    assert main(["run", str(path)]) == 0
    trials = _study(tmp_path, "fails").trials
    states = {t.number: t.state for t in trials}
    assert states[1] == TrialState.FAIL
    assert "no_such_layer" in trials[1].user_attrs["error"]
    assert sum(s == TrialState.COMPLETE for s in states.values()) == 3
    assert len(trials) == 4


def test_always_failing_space_stops_with_a_message(
    tmp_path: Path, bert_dir: Path, ray_cluster: None, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "always.py").write_text("def space(trial):\n    return {'peft.target_modules': ['nope']}\n")
    space = {"train.learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2}, "python": "always:space"}
    path = tiny.study_file(
        tmp_path,
        bert_dir,
        name="always",
        n_trials=5,
        space=space,
        budget={"n_trials": 5, "concurrency": 1, "max_failures": 2},
    )
    assert main(["run", str(path)]) == 1
    out = capsys.readouterr().out
    assert "3 trials failed in this run (budget.max_failures=2)" in out  # two tolerated, the third stops it
    assert [t.state for t in _study(tmp_path, "always").trials] == [TrialState.FAIL] * 3


def test_export_then_train_reproduces_the_trial(tmp_path: Path, bert_dir: Path, ray_cluster: None) -> None:
    path = tiny.study_file(tmp_path, bert_dir, name="export", n_trials=2)
    assert main(["run", str(path)]) == 0
    best = _study(tmp_path, "export").best_trial
    out = tmp_path / "best.yaml"
    assert main(["export", str(path), "--out", str(out)]) == 0
    os.chdir(tmp_path)
    assert main(["train", str(out)]) == 0
    metrics = json.loads((tmp_path / "runs" / f"export-trial-{best.number}" / "metrics.json").read_text())
    assert metrics["metrics"]["accuracy"] == best.value
    assert metrics["history"][-1]["accuracy"] == best.intermediate_values[30]
    assert main(["status", str(path), "--json"]) == 0
    assert main(["plot", str(path), "--out", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "history.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "learning_curves.png").exists()


def test_sigkilled_driver_resumes_to_n_trials(tmp_path: Path, bert_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Heartbeats every second, stale after 3 s (not 5 s and 20 s): the rerun takes the dead driver's trials sooner.
    monkeypatch.setenv("SFTUNE_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("SFTUNE_HEARTBEAT_GRACE", "3")
    path = tiny.study_file(tmp_path, bert_dir, name="killed", n_trials=4, max_steps=120, concurrency=2)
    cmd = [sys.executable, "-m", "search", "run", str(path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    storage = f"sqlite:///{tmp_path / 'killed.db'}"
    deadline = time.time() + 180
    running = 0
    while time.time() < deadline:
        time.sleep(1)
        try:
            study = optuna.load_study(study_name="killed", storage=storage)
            trials = study.get_trials(deepcopy=False)
            running = sum(t.state == TrialState.RUNNING and bool(t.intermediate_values) for t in trials)
        except Exception:  # noqa: BLE001 - not created yet
            continue
        if running:
            break
    assert running, "no trial reached its first evaluation"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    os.killpg(proc.pid, signal.SIGKILL) if _group_alive(proc.pid) else None
    killed_running = [
        t.params
        for t in optuna.load_study(study_name="killed", storage=storage).trials
        if t.state == TrialState.RUNNING
    ]
    assert killed_running

    try:
        again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        pytest.fail(f"the resumed driver did not finish in 600 s; it printed:\n{out}")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "left RUNNING by a driver that died" in again.stdout
    trials = optuna.load_study(study_name="killed", storage=storage).trials
    states = [t.state for t in trials]
    assert TrialState.RUNNING not in states
    assert sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states) == 4
    finished_params = [t.params for t in trials if t.state == TrialState.COMPLETE]
    for params in killed_running:
        assert params in finished_params  # tried again


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except OSError:
        return False


def test_multi_objective_study(
    tmp_path: Path, bert_dir: Path, ray_cluster: None, capsys: pytest.CaptureFixture
) -> None:
    space = {
        "train.learning_rate": {"type": "categorical", "choices": [1e-3, 3e-3, 1e-2]},
        "train.batch_size": {"type": "categorical", "choices": [8, 16]},
    }
    path = tiny.study_file(
        tmp_path,
        bert_dir,
        name="multi",
        n_trials=3,
        space=space,
        pruner={"name": "median"},
        sampler={"name": "nsga2", "seed": 0},
        objective=[{"metric": "accuracy"}, {"metric": "eval_loss"}],
    )
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Optuna prunes single-objective studies only" in out
    study = _study(tmp_path, "multi")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    for t in trials:
        last = t.user_attrs["history"][-1]
        assert t.values == [last["accuracy"], last["eval_loss"]]
    assert main(["export", str(path), "--out", str(tmp_path / "front.yaml")]) == 0
    assert (tmp_path / "front.yaml").exists()


def test_timeout_leaves_nothing_running_and_queues_the_unfinished(
    tmp_path: Path, bert_dir: Path, ray_cluster: None
) -> None:
    path = tiny.study_file(
        tmp_path, bert_dir, name="timeout", max_steps=5000, budget={"n_trials": 4, "concurrency": 2, "timeout": 6}
    )
    assert main(["run", str(path)]) == 0
    trials = _study(tmp_path, "timeout").trials
    states = [t.state for t in trials]
    assert TrialState.RUNNING not in states
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed and all("budget.timeout" in t.user_attrs["error"] for t in failed)
    waiting = [t.system_attrs["fixed_params"] for t in trials if t.state == TrialState.WAITING]
    assert sorted(map(str, waiting)) == sorted(str(t.params) for t in failed)
