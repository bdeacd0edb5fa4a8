"""Studies that carry over, through a real local Ray cluster and tiny models: the Python API's notebook
(docs/python-api.md, its code cells run as they are), a warm-started study and a pruned two-objective study."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tiny
from conftest import REPO

pytestmark = pytest.mark.integration

CELL = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def test_the_python_api_notebook_runs(tmp_path: Path, bert_dir: Path, ray_cluster: None,
                                      monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
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


def test_a_warm_started_study_runs_the_earlier_best_first(tmp_path: Path, bert_dir: Path, ray_cluster: None,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import optuna
    from optuna.trial import TrialState

    from search.cli import main

    monkeypatch.chdir(tmp_path)
    old = tiny.study_file(tmp_path / "old", bert_dir, name="old", n_trials=3, max_steps=20)
    assert main(["run", str(old)]) == 0
    earlier = optuna.load_study(study_name="old", storage=f"sqlite:///{tmp_path / 'old' / 'old.db'}")
    best = sorted(earlier.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: (-t.value, t.number))[:2]

    new = tiny.study_file(tmp_path / "new", bert_dir, name="new", n_trials=3, max_steps=20,
                          warm_start=[{"study": "old", "storage": f"sqlite:///{tmp_path / 'old' / 'old.db'}",
                                       "top": 2}])
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


def test_a_two_objective_study_is_pruned(tmp_path: Path, bert_dir: Path, ray_cluster: None,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Accuracy and eval_loss on the tiny classification data: a trial that barely learns (lr 1e-7) is dominated
    at a rung by one that learns (lr 1e-2) and pruned there (tiny trials report fast, so that may be a late
    rung); the ones that learn run to the end."""
    import optuna
    from optuna.trial import TrialState

    from search.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mo_order.py").write_text(ORDER)
    path = tiny.study_file(tmp_path, bert_dir, name="two", n_trials=4, concurrency=1, max_steps=40,
                           objective=[{"metric": "accuracy"}, {"metric": "eval_loss"}],
                           space={"python": "mo_order:space"},
                           pruner={"name": "mo-successive-halving", "min_resource": 10, "reduction_factor": 2})
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

