"""The multi-objective pruner (search/pruners.py) without Ray: its rule at one rung, its rungs, and the driver
pruning a two-objective trial that others dominate (PRUNED, its rung values stored); bad input exits 2."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import tiny
from optuna.trial import TrialState
from test_driver_contract import Events

from search._driver import Driver
from search._trial_result import DONE_KEY
from search.cli import main
from search.config import load_study
from search.pruners import RUNGS_ATTR, MOPruner, front_ranks, keeps
from search.study import open_study

TWO = [{"metric": "accuracy", "direction": "maximize"}, {"metric": "eval_loss", "direction": "minimize"}]


def test_fronts_and_the_rule_at_one_rung() -> None:
    # minimize both: (1, 1) dominates (2, 2); (0, 3) and (3, 0) are on the first front with (1, 1)
    assert front_ranks([[1, 1], [2, 2], [0, 3], [3, 0], [3, 3]]) == [0, 1, 0, 0, 2]
    assert keeps([1, 1], [], 3)  # alone at its rung
    assert not keeps([2, 2], [[1, 1]], 3)  # n=2: the quota is 1, and one trial is ahead
    assert keeps([0, 3], [[1, 1], [3, 0]], 3)  # on the first front: never pruned
    others = [[1, 1], [0, 3], [3, 0], [4, 4], [5, 5]]
    assert keeps([2, 2], [*others[:1], *others[3:]], 2)  # n=4, quota 2: one trial ahead
    assert not keeps([2, 2], others, 3)  # n=6, quota 2: (1, 1) ahead, and the rest of the first front too
    assert not keeps([2, 2], others, 2)  # n=6, quota 3: three ahead
    assert keeps([2, 2], [*others[:1], *others[3:], [6, 6]], 2)  # n=5, quota 2: one ahead


def test_rungs() -> None:
    pruner = MOPruner(["maximize", "minimize"], min_resource=10, reduction_factor=3)
    assert [pruner.rung_of(s) for s in (5, 10, 20, 29, 30, 89, 90)] == [None, 10, 10, 10, 30, 30, 90]
    later = MOPruner(["maximize"], min_resource=10, reduction_factor=2, min_early_stopping_rate=1)
    assert [later.rung_of(s) for s in (10, 20, 39, 40)] == [None, 20, 20, 40]


def _eval(d: Driver, tid: str, step: int, acc: float, loss: float) -> bool:
    return d.result(tid, {"accuracy": acc, "f1_macro": acc, "eval_loss": loss, "step": step, "max_steps": 30})


def test_the_driver_prunes_a_dominated_two_objective_trial(tmp_path: Path, bert_dir: Path) -> None:
    path = tiny.study_file(
        tmp_path,
        bert_dir,
        name="mo",
        n_trials=4,
        objective=TWO,
        pruner={"name": "mo-successive-halving", "reduction_factor": 2},
    )
    cfg = load_study(path)
    d = Driver(cfg=cfg, study=open_study(cfg), progress=Events())
    for tid in ("a", "b", "c"):
        d.suggest(tid)
    assert _eval(d, "a", 10, 0.9, 0.2) is False  # rung 10: alone
    assert _eval(d, "b", 10, 0.5, 0.6) is True  # dominated by a: n=2, quota 1
    assert _eval(d, "c", 10, 0.95, 0.5) is False  # on a's front
    assert _eval(d, "a", 15, 0.1, 9.0) is False  # between rungs: never judged
    assert _eval(d, "b", 20, 0.99, 0.01) is True  # a pruned trial's later evaluation: still stopped, not judged
    d.complete("b", None, False)
    d.complete("a", {"accuracy": 0.9, "f1_macro": 0.9, "eval_loss": 0.2, "step": 30, DONE_KEY: True}, False)
    states = {t.number: t.state for t in d.study.trials}
    assert states[1] == TrialState.PRUNED and states[0] == TrialState.COMPLETE
    assert d.study.trials[1].user_attrs[RUNGS_ATTR] == {"10": [0.5, 0.6]}
    assert d.study.trials[0].user_attrs[RUNGS_ATTR] == {"10": [0.9, 0.2]}


@pytest.mark.parametrize(
    ("study", "expected"),
    [
        (
            {"pruner": {"name": "mo-successive-halving"}},
            "pruner.name: mo-successive-halving prunes multi-objective studies, but this study has one objective",
        ),
        (
            {"pruner": {"name": "mo-successive-halving", "reduction_factor": 1}, "objective": TWO},
            "pruner: mo-successive-halving: reduction_factor must be an integer >= 2, but got 1",
        ),
        (
            {"pruner": {"name": "mo-successive-halving", "eta": 3}, "objective": TWO},
            "pruner.eta: unknown option for pruner 'mo-successive-halving'",
        ),
    ],
)
def test_bad_mo_pruner_exits_2(
    tmp_path: Path, bert_dir: Path, study: dict[str, Any], expected: str, capsys: pytest.CaptureFixture
) -> None:
    path = tiny.study_file(tmp_path, bert_dir, name="bad", **study)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "bad.db").exists()
