"""Studies that carry over, through a real local Ray cluster and tiny models: the Python API's notebook
(docs/python-api.md, its code cells run as they are), a warm-started study, a pruned two-objective study, and
trials tracked in a real MLflow server and W&B offline."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tiny
from conftest import REPO

pytestmark = pytest.mark.integration

CELL = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def test_the_python_api_notebook_runs(
    tmp_path: Path, bert_dir: Path, ray_cluster: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    tiny.study_file(tmp_path, bert_dir, name="my-study", n_trials=3, max_steps=20)
    cells = CELL.findall((REPO / "docs" / "python-api.md").read_text())
    assert len(cells) >= 5
    namespace: dict = {}
    for cell in cells:
        exec(compile(cell, "docs/python-api.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "budget.n_trials -> must be >= 1, found 0" in out
    assert (tmp_path / "best.yaml").exists() and (tmp_path / "runs" / "from-a-mapping" / "metrics.json").exists()


def test_a_warm_started_study_runs_the_earlier_best_first(
    tmp_path: Path, bert_dir: Path, ray_cluster: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optuna
    from optuna.trial import TrialState

    from search.cli import main

    monkeypatch.chdir(tmp_path)
    old = tiny.study_file(tmp_path / "old", bert_dir, name="old", n_trials=3, max_steps=20)
    assert main(["run", str(old)]) == 0
    earlier = optuna.load_study(study_name="old", storage=f"sqlite:///{tmp_path / 'old' / 'old.db'}")
    best = sorted(earlier.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: (-t.value, t.number))[:2]

    new = tiny.study_file(
        tmp_path / "new",
        bert_dir,
        name="new",
        n_trials=3,
        max_steps=20,
        warm_start=[{"study": "old", "storage": f"sqlite:///{tmp_path / 'old' / 'old.db'}", "top": 2}],
    )
    assert main(["run", str(new)]) == 0
    study = optuna.load_study(study_name="new", storage=f"sqlite:///{tmp_path / 'new' / 'new.db'}")
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.params for t in trials[:2]] == [t.params for t in best]
    assert [t.user_attrs["warm_start_of"]["trial"] for t in trials[:2]] == [t.number for t in best]
    assert trials[0].user_attrs["warm_start_of"]["values"] == {"accuracy": best[0].value}
    assert "warm_start_of" not in trials[2].user_attrs and len(trials) == 3
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert [s["number"] for s in study.user_attrs["warm_started"]] == [0, 1]

    # Running it again resumes: nothing is queued twice.
    assert main(["run", str(new), "--n-trials", "4"]) == 0
    study = optuna.load_study(study_name="new", storage=f"sqlite:///{tmp_path / 'new' / 'new.db'}")
    assert sum("warm_start_of" in t.user_attrs for t in study.trials) == 2 and len(study.trials) == 4


ORDER = """
def space(trial):
    return {"train.learning_rate": [1e-2, 1e-7, 1e-2, 1e-7][trial.number % 4]}
"""


def test_a_two_objective_study_is_pruned(
    tmp_path: Path, bert_dir: Path, ray_cluster: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Accuracy and eval_loss on the tiny classification data: a trial that barely learns (lr 1e-7) is dominated
    at a rung by one that learns (lr 1e-2) and pruned there (tiny trials report fast, so that may be a late
    rung); the ones that learn run to the end."""
    import optuna
    from optuna.trial import TrialState

    from search.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mo_order.py").write_text(ORDER)
    path = tiny.study_file(
        tmp_path,
        bert_dir,
        name="two",
        n_trials=4,
        concurrency=1,
        max_steps=40,
        objective=[{"metric": "accuracy"}, {"metric": "eval_loss"}],
        space={"python": "mo_order:space"},
        pruner={"name": "mo-successive-halving", "min_resource": 10, "reduction_factor": 2},
    )
    assert main(["run", str(path)]) == 0
    study = optuna.load_study(study_name="two", storage=f"sqlite:///{tmp_path / 'two.db'}")
    states = {t.number: t.state for t in study.trials}
    assert states[0] == states[2] == TrialState.COMPLETE
    assert states[1] == states[3] == TrialState.PRUNED
    best = study.trials[0].user_attrs["mo_rungs"]
    assert best.keys() == {"10", "20", "40"}
    for number in (1, 3):  # pruned at the last rung it recorded, where trial 0 dominates it
        rungs = study.trials[number].user_attrs["mo_rungs"]
        (acc, loss), (acc0, loss0) = rungs[max(rungs, key=int)], best[max(rungs, key=int)]
        assert acc0 >= acc and loss0 <= loss and (acc0, loss0) != (acc, loss)


def test_trials_in_a_real_mlflow_server_and_wandb_offline(
    tmp_path: Path, bert_dir: Path, ray_cluster: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A parent run per study, a nested run per trial with its params, its metrics by step, its state (PRUNED
    included) and its metrics.json; W&B's offline files, one run per trial and one for the study."""
    import _servers
    import optuna

    from search.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "mo_order.py").write_text(ORDER)
    with _servers.mlflow_server(tmp_path / "mlflow") as uri:
        path = tiny.study_file(
            tmp_path,
            bert_dir,
            name="tracked",
            n_trials=3,
            concurrency=1,
            max_steps=40,
            objective=[{"metric": "accuracy"}, {"metric": "eval_loss"}],
            space={"python": "mo_order:space"},
            pruner={"name": "mo-successive-halving", "min_resource": 10, "reduction_factor": 2},
            tracking={"mlflow": uri, "wandb": {"project": "sftune-test", "mode": "offline"}},
        )
        assert main(["run", str(path)]) == 0
        from mlflow import MlflowClient

        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("tracked")
        runs = client.search_runs([experiment.experiment_id])
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        trials = {int(r.data.tags["sftune.trial"]): r for r in runs if "mlflow.parentRunId" in r.data.tags}
        assert len(parents) == 1 and sorted(trials) == [0, 1, 2]
        assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in trials.values())
        study = optuna.load_study(study_name="tracked", storage=f"sqlite:///{tmp_path / 'tracked.db'}")
        assert study.user_attrs["tracking_runs"]["mlflow"]["run_id"] == parents[0].info.run_id
        for number, run in trials.items():
            trial = study.trials[number]
            assert run.data.tags["state"] == trial.state.name
            assert run.info.status == {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}[trial.state.name]
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "accuracy")]
            assert steps == [h["step"] for h in trial.user_attrs["history"]]
            assert run.data.tags["host"] == trial.user_attrs["host"]
        assert trials[1].data.tags["state"] == "PRUNED" and trials[0].data.tags["state"] == "COMPLETE"
        assert [m.step for m in client.get_metric_history(trials[0].info.run_id, "eval_loss")] == [10, 20, 30, 40]
        assert "metrics.json" in [a.path for a in client.list_artifacts(trials[0].info.run_id)]
        assert trials[0].data.metrics["final_accuracy"] == study.trials[0].values[0]
        assert trials[1].data.params == {"train.learning_rate": "1e-07"}

        # A second run of the same study continues the same parent.
        assert main(["run", str(path), "--n-trials", "4"]) == 0
        runs = client.search_runs([experiment.experiment_id])
        assert len([r for r in runs if "mlflow.parentRunId" not in r.data.tags]) == 1 and len(runs) == 5

    offline = sorted((tmp_path / "runs" / "wandb").glob("offline-run-*"))
    assert len(offline) == 6  # the study's run and one per trial, then the study's again on resume and trial 3
    records = [next(folder.glob("*.wandb")).read_bytes() for folder in offline]
    assert sum(b"train.learning_rate" in r and b"eval_loss" in r for r in records) == 4  # params, metrics
    assert sum(b"PRUNED" in r for r in records) == 2 and sum(b"COMPLETE" in r for r in records) == 2
    assert sum((folder / "files" / "metrics.json").exists() for folder in offline) == 2


def test_an_unreachable_tracking_server_exits_2_and_no_tracking_runs_without(
    tmp_path: Path, bert_dir: Path, ray_cluster: None, capsys: pytest.CaptureFixture
) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once closed
    path = tiny.study_file(
        tmp_path, bert_dir, name="untracked", n_trials=1, max_steps=10, tracking={"mlflow": f"http://127.0.0.1:{port}"}
    )
    from search.cli import main

    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"tracking.mlflow: the MLflow tracking server http://127.0.0.1:{port} cannot be reached" in err
    assert "--no-tracking" in err and not (tmp_path / "untracked.db").exists()
    assert main(["run", str(path), "--no-tracking"]) == 0
