"""Trial files in the study's artifact store: stored, listed, kept for the best K, fetched by export; notes."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import tiny
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from search.artifacts import apply_retention, fetch_trial_files, store_trial, stored_files, write_note
from search.cli import main
from search.config import load_study
from trainer import config_from_dict, run_job

LR = FloatDistribution(1e-4, 1e-1, log=True)


def _study(path: Path) -> tuple[object, optuna.Study]:
    cfg = load_study(path)
    return cfg, optuna.create_study(study_name=cfg.name, storage=cfg.storage, direction="maximize")


def _fake_trial_folder(folder: Path, tag: str) -> Path:
    (folder / "adapter").mkdir(parents=True)
    (folder / "adapter" / "adapter_model.safetensors").write_bytes(tag.encode() * 100)
    (folder / "adapter" / "adapter_config.json").write_text(json.dumps({"tag": tag}))
    (folder / "metrics.json").write_text(json.dumps({"metrics": {"accuracy": 0.5}}))
    (folder / "config.yaml").write_text("save: adapter\n")
    return folder


def test_files_are_stored_listed_kept_for_the_best_and_fetched(tmp_path: Path, bert_dir: Path) -> None:
    path = tiny.study_file(tmp_path, bert_dir, name="art", keep_best=1)
    cfg, study = _study(path)
    for i, value in enumerate([0.6, 0.9, 0.7]):
        trial = study.ask({"train.learning_rate": LR})
        folder = _fake_trial_folder(tmp_path / "trials" / str(i), f"t{i}")
        store_trial(study, cfg, trial.number, folder)  # while RUNNING, as the driver does before tell
        study.tell(trial, value)
        assert not (folder / "adapter").exists()  # the store holds the weights now
        assert (folder / "metrics.json").exists()
    for t in study.trials:  # what optuna-dashboard lists for each trial
        names = sorted(m.filename for m in optuna.artifacts.get_all_artifact_meta(t, storage=study._storage))
        assert names == ["adapter.zip", "config.yaml", "metrics.json"]
    stored = list((tmp_path / "runs" / "artifacts").iterdir())
    assert len(stored) == 9

    assert apply_retention(study, cfg) == [2, 0]  # ranked 0.7 then 0.6: both outside the best 1
    assert len(list((tmp_path / "runs" / "artifacts").iterdir())) == 3
    trials = study.get_trials()
    assert not stored_files(trials[0]) and not stored_files(trials[2])
    assert sorted(stored_files(trials[1])) == ["adapter.zip", "config.yaml", "metrics.json"]
    fresh = optuna.load_study(study_name="art", storage=cfg.storage)  # what the dashboard reads
    listed = [
        sorted(m.filename for m in optuna.artifacts.get_all_artifact_meta(t, storage=fresh._storage))
        for t in fresh.trials
    ]
    assert listed == [[], ["adapter.zip", "config.yaml", "metrics.json"], []]
    assert apply_retention(study, cfg) == []  # nothing more to remove

    out = fetch_trial_files(study, cfg, 1, tmp_path / "export" / "best.yaml")
    assert out == tmp_path / "export" / "best-adapter"
    assert (out / "adapter_model.safetensors").read_bytes() == b"t1" * 100
    assert json.loads((out / "adapter_config.json").read_text()) == {"tag": "t1"}
    assert fetch_trial_files(study, cfg, 0, tmp_path / "export" / "x.yaml") is None  # removed by retention


def test_export_writes_the_adapter_and_train_reproduces_the_metric(
    tmp_path: Path, bert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = tiny.study_file(tmp_path, bert_dir, name="exp", max_steps=20)
    cfg, study = _study(path)
    trial_cfg = cfg.trial_config({"train.learning_rate": 3e-3}, 0)
    trial_cfg["save"] = "adapter"
    result = run_job(config_from_dict(trial_cfg))
    trial = study.ask({"train.learning_rate": LR})
    trial.set_user_attr("config", trial_cfg)
    store_trial(study, cfg, trial.number, Path(trial_cfg["output_dir"]))
    study.tell(trial, result.metrics["accuracy"])

    (tmp_path / "exported").mkdir()
    assert main(["export", str(path), "--out", "exported"]) == 0
    assert (tmp_path / "exported" / "best.yaml").exists()  # --out a folder: written into it
    adapter = tmp_path / "exported" / "best-adapter"
    assert (adapter / "adapter_model.safetensors").exists() and (adapter / "adapter_config.json").exists()

    assert main(["train", "exported/best.yaml"]) == 0
    exported = yaml.safe_load((tmp_path / "exported" / "best.yaml").read_text())
    metrics = json.loads((Path(exported["output_dir"]) / "metrics.json").read_text())["metrics"]
    assert metrics["accuracy"] == result.metrics["accuracy"]
    from safetensors.torch import load_file

    again = load_file(str(Path(exported["output_dir"]) / "adapter" / "adapter_model.safetensors"))
    kept = load_file(str(adapter / "adapter_model.safetensors"))
    assert kept.keys() == again.keys() and all(kept[k].equal(again[k]) for k in kept)


def test_notes_say_params_metrics_where_and_why(tmp_path: Path, bert_dir: Path) -> None:
    from optuna_dashboard import get_note

    path = tiny.study_file(tmp_path, bert_dir, name="notes", pruner={"name": "median"})
    cfg, study = _study(path)
    dist = {"train.learning_rate": LR}
    study.add_trial(
        optuna.trial.create_trial(
            params={"train.learning_rate": 0.002},
            distributions=dist,
            value=0.81,
            intermediate_values={10: 0.7, 20: 0.81},
            user_attrs={"host": "box-1", "node": "abcdef1234567890", "final_step": 20},
        )
    )
    study.add_trial(
        optuna.trial.create_trial(
            params={"train.learning_rate": 0.05},
            distributions=dist,
            state=TrialState.PRUNED,
            intermediate_values={10: 0.52},
        )
    )
    study.add_trial(
        optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"error": "RuntimeError: CUDA out of memory"})
    )
    for number in range(3):
        write_note(study, cfg, number)
    complete, pruned, failed = (get_note(optuna.trial.Trial(study, t._trial_id)) for t in study.get_trials())
    assert "complete" in complete and "**accuracy** 0.81" in complete and "step 20" in complete
    assert "`train.learning_rate` | 0.002" in complete and "box-1" in complete and "abcdef123456" in complete
    assert "| 10 | 0.7 |" in complete
    assert "Pruned by the median pruner at step 10" in pruned and "0.52" in pruned
    assert "CUDA out of memory" in failed
