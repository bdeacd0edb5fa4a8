"""Tracking without a server: the `tracking:` key checked on entry, and a tracker that fails never fails the
run: the first failure is a warning, the rest are counted, and every event still reaches the run's progress."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
import tiny
from test_driver_contract import Events

import search.tracking as tracking
from search.cli import main
from search.config import load_study
from search.study import open_study


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"mlfow": "http://h:5000"}, "tracking.mlfow: unknown tracker; did you mean 'mlflow'?"),
        (
            {"mlflow": 5000},
            "tracking.mlflow: expected a tracking URI (http://host:5000) or {uri, experiment}, found 5000",
        ),
        ({"wandb": {"project": "p", "mode": "of"}}, "tracking.wandb.mode: expected online or offline, found 'of'"),
        ({"wandb": {"project": "p", "team": "x"}}, "tracking.wandb.team: unknown key"),
        ("mlflow", "tracking: expected {mlflow: URI} or {wandb: {project, mode}}, found 'mlflow'"),
    ],
)
def test_bad_tracking_exits_2(
    tmp_path: Path, bert_dir: Path, value: Any, expected: str, capsys: pytest.CaptureFixture
) -> None:
    path = tiny.study_file(tmp_path, bert_dir, name="t", tracking=value)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_no_tracking_drops_the_study_files_tracking(tmp_path: Path, bert_dir: Path) -> None:
    path = tiny.study_file(tmp_path, bert_dir, name="t", tracking={"mlflow": {"uri": "http://h:1", "experiment": "e"}})
    assert load_study(path).tracking == tracking.TrackingConfig(mlflow="http://h:1", experiment="e")
    assert not load_study(path, ["tracking=null"]).tracking.any


class Flaky:
    name = "mlflow"
    calls: ClassVar[list[tuple[str, Any]]] = []

    def __init__(self, cfg: Any, study: Any) -> None:
        self.record = {"uri": "fake", "run_id": "r1"}
        self.client = type("C", (), {"tracking_uri": "fake"})()
        self.experiment = self.parent = "x"

    def started(self, number: int, params: dict) -> None:
        self.calls.append(("started", number))

    def evaluated(self, number: int, step: int, metrics: dict) -> None:
        raise ConnectionError("tracking server went away")

    def finished(self, number: int, state: str, values: dict, tags: dict, files: list) -> None:
        self.calls.append(("finished", (number, state, values)))

    def close(self) -> None:
        self.calls.append(("close", None))


def test_a_failing_tracker_warns_once_and_counts(
    tmp_path: Path, bert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tracking, "_MLflow", Flaky)
    path = tiny.study_file(tmp_path, bert_dir, name="t", tracking={"mlflow": "http://h:1"})
    cfg = load_study(path)
    study = open_study(cfg)
    events = Events()
    progress = tracking.track(events, cfg, study)
    import pickle

    copy = pickle.loads(pickle.dumps(progress))  # Tune pickles its searcher and scheduler, which hold it
    assert copy.sinks == [] and isinstance(copy.inner, Events)
    progress.trial_started(0, {"train.learning_rate": 0.01})
    for step in (10, 20, 30):
        progress.trial_reported(0, step, 30, {"accuracy": 0.5})
    progress.trial_finished(0, "COMPLETE", [0.7], "")
    progress.close()
    assert Flaky.calls == [("started", 0), ("finished", (0, "COMPLETE", {"accuracy": 0.7})), ("close", None)]
    said = [text for kind, text in events.lines if kind == "message"]
    assert said[0].startswith("tracking: MLflow fake")
    assert [s for s in said if s.startswith("warning")] == [
        "warning: tracking failed (mlflow: ConnectionError: tracking server went away); trials go on, and "
        "further tracking failures are counted",
        "warning: 3 tracking call(s) failed (first: mlflow: ConnectionError: tracking server went away); the "
        "study's database holds every trial",
    ]
    assert [kind for kind, _ in events.lines].count("reported") == 3
    assert study.user_attrs["tracking_runs"] == {"mlflow": {"uri": "fake", "run_id": "r1"}}
