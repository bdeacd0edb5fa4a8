"""What a real run keeps: `objective.use: best` values, each complete trial's files in the artifact store (the
best K kept), a dashboard note per trial, and an export that brings the adapter and reproduces the value."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import tiny
import yaml
from optuna.trial import TrialState

from search.cli import main

pytestmark = pytest.mark.integration


def test_best_values_artifacts_notes_and_export(
    tmp_path: Path, bert_dir: Path, ray_cluster: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from optuna_dashboard import get_note

    monkeypatch.chdir(tmp_path)
    path = tiny.study_file(
        tmp_path,
        bert_dir,
        name="kept",
        n_trials=3,
        max_steps=30,
        keep_best=2,
        objective={"metric": "accuracy", "direction": "maximize", "use": "best"},
        space={"train.learning_rate": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True}},
    )
    data = yaml.safe_load(path.read_text())
    data["base"]["save"] = "adapter"
    path.write_text(yaml.safe_dump(data))
    assert main(["run", str(path)]) == 0

    study = optuna.load_study(study_name="kept", storage=f"sqlite:///{tmp_path / 'kept.db'}")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 3
    for t in complete:  # the value is the best evaluation, and its step is kept
        best_step = max(t.intermediate_values, key=lambda s: (t.intermediate_values[s], -s))
        assert t.value == t.intermediate_values[best_step]
        assert t.user_attrs["best_step"] == best_step
    ranked = sorted(complete, key=lambda t: (-t.value, t.number))
    listed = {
        t.number: sorted(m.filename for m in optuna.artifacts.get_all_artifact_meta(t, storage=study._storage))
        for t in complete
    }
    assert [listed[t.number] for t in ranked] == [["adapter.zip", "config.yaml", "metrics.json"]] * 2 + [[]]
    for t in study.trials:
        assert f"Trial {t.number}" in get_note(optuna.trial.Trial(study, t._trial_id))

    (tmp_path / "export").mkdir()
    assert main(["export", str(path), "--out", "export"]) == 0
    best = ranked[0]
    exported = yaml.safe_load((tmp_path / "export" / "best.yaml").read_text())
    assert exported["train"]["stop_at_step"] == best.user_attrs["best_step"]
    assert (tmp_path / "export" / "best-adapter" / "adapter_model.safetensors").exists()
    assert main(["train", "export/best.yaml"]) == 0
    import json

    metrics = json.loads((Path(exported["output_dir"]) / "metrics.json").read_text())["metrics"]
    assert metrics["accuracy"] == best.value
