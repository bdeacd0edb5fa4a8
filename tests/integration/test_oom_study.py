"""A trial that runs out of memory is FAIL with "out of memory at step N (peak X MiB)", is not run again, and
the study goes on: a real study on a real local Ray cluster, with a user's task whose model runs out of memory
at step 3 of a 16-row batch (tests/unit/_oom_task.py; nothing of transformers mocked)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import optuna
import pytest
import tiny
from optuna.trial import TrialState

from search.cli import main

pytestmark = pytest.mark.integration
UNIT = str(Path(__file__).resolve().parents[1] / "unit")


@pytest.fixture(scope="module", autouse=True)
def user_task_importable():
    """The Ray workers this module's cluster starts import `_oom_task` as a user's module (PYTHONPATH)."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([UNIT, old] if old else [UNIT])
    sys.path.insert(0, UNIT)
    yield
    sys.path.remove(UNIT)
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


def _oom_study(tmp: Path, llama_dir: Path, name: str, batches: list[int], budget: dict) -> Path:
    """A grid study of the out-of-memory task over `train.batch_size` (16 rows and more run out at step 3)."""
    base = tiny.sft_config(tmp, llama_dir, max_steps=6, eval_every=3)
    base["task"] = "_oom_task:OomSFT"
    study = {
        "name": name,
        "objective": {"metric": "eval_loss", "direction": "minimize"},
        "sampler": {"name": "grid"},
        "pruner": {"name": "none"},
        "budget": budget,
        "resources": {"cpu": 1},
        "base": base,
        "space": {"train.batch_size": {"type": "categorical", "choices": batches}},
        "output_dir": str(tmp / "runs"),
    }
    return tiny.write_config(tmp / f"{name}.yaml", study)


def test_out_of_memory_trial_fails_alone_and_is_not_retried(tmp_path: Path, llama_dir: Path, ray_cluster: None) -> None:
    path = _oom_study(tmp_path, llama_dir, "oom", [4, 16, 8], {"n_trials": 3, "concurrency": 1})
    assert main(["run", str(path)]) == 0
    trials = optuna.load_study(study_name="oom", storage=f"sqlite:///{tmp_path / 'oom.db'}").trials
    by_batch = {t.params["train.batch_size"]: t for t in trials}
    assert len(trials) == 3 and set(by_batch) == {4, 8, 16}  # nothing queued again
    oom = by_batch[16]
    assert oom.state == TrialState.FAIL
    assert oom.user_attrs["error"].startswith("out of memory at step 3 (peak ")
    assert "MiB" in oom.user_attrs["error"]
    assert by_batch[4].state == by_batch[8].state == TrialState.COMPLETE


def test_a_study_searching_the_job_options_records_faithful_trials(
    tmp_path: Path, llama_dir: Path, ray_cluster: None
) -> None:
    base = tiny.sft_config(tmp_path, llama_dir, max_steps=4, eval_every=2, model_dtype="bf16")
    study = {
        "name": "options",
        "objective": {"metric": "eval_loss", "direction": "minimize"},
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "budget": {"n_trials": 3, "concurrency": 1},
        "resources": {"cpu": 1},
        "base": base,
        "space": {
            "train.optimizer": {"type": "categorical", "choices": ["adamw", "sgd", "adafactor"]},
            "peft.use_rslora": {"type": "categorical", "choices": [True, False]},
            "peft.use_dora": {"type": "categorical", "choices": [True, False]},
            "train.label_smoothing": {"type": "float", "low": 0.0, "high": 0.2},
        },
        "output_dir": str(tmp_path / "runs"),
    }
    path = tiny.write_config(tmp_path / "options.yaml", study)
    assert main(["run", str(path)]) == 0
    trials = optuna.load_study(study_name="options", storage=f"sqlite:///{tmp_path / 'options.db'}").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    for t in trials:
        config = t.user_attrs["config"]
        assert config["train"]["optimizer"] == t.params["train.optimizer"]
        assert config["peft"]["use_dora"] == t.params["peft.use_dora"]
        assert config["train"]["label_smoothing"] == t.params["train.label_smoothing"]
        assert t.user_attrs["model_dtype"] == "bf16"


def test_the_python_api_raises_run_failed_with_the_study_as_stored(
    tmp_path: Path, llama_dir: Path, ray_cluster: None
) -> None:
    """`sftune.run` of a study whose trials fail beyond `budget.max_failures`: RunFailed with exit code 1, the
    run's own reason, and the study's trials as stored (FAIL with their error)."""
    import sftune

    path = _oom_study(tmp_path, llama_dir, "fails", [16, 32], {"n_trials": 3, "concurrency": 1, "max_failures": 0})
    with pytest.raises(sftune.RunFailed) as raised:
        sftune.run(path, say=None)
    failed = raised.value
    assert failed.exit_code == 1 and "fail" in failed.reason.lower()
    assert failed.study is not None and failed.study.counts.get("FAIL", 0) >= 1
    assert failed.study.counts.get("COMPLETE", 0) == 0 and failed.study.best is None
    assert failed.study.failed[0].error.startswith("out of memory at step 3")
    stored = optuna.load_study(study_name="fails", storage=f"sqlite:///{tmp_path / 'fails.db'}").trials
    assert stored and all(t.state == TrialState.FAIL for t in stored)
    assert stored[0].user_attrs["error"].startswith("out of memory at step 3")
