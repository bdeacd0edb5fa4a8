"""A process that runs job after job (a reused Ray worker) keeps nothing of the jobs it ran."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest
import tiny

import trainer.job as job
from trainer import config_from_dict, run_job


def _alive(kind: type) -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, kind))


class _RaiseAtFirst:
    """Stops the run the way Ray stops a pruned trial: its report raises SystemExit(0)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def report(self, step: int, metrics: dict) -> bool:
        raise self.exc


def test_model_optimizer_and_trainer_are_released_after_each_job(
    tmp_path: Path, bert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from transformers import Trainer

    models: list[weakref.ref] = []
    build = job.build_model

    def tracked(*args, **kwargs):
        model = build(*args, **kwargs)
        models.append(weakref.ref(model))
        return model

    monkeypatch.setattr(job, "build_model", tracked)
    data = tiny.classification_config(tmp_path, bert_dir, max_steps=20, eval_every=10)
    data["peft"] = {"method": "lora", "r": 4}
    gc.collect()
    before = {k: _alive(k) for k in (Trainer, torch.optim.Optimizer)}

    runs = [None, _RaiseAtFirst(SystemExit(0)), _RaiseAtFirst(RuntimeError("reporter broke")), None]
    for i, reporter in enumerate(runs):
        data["output_dir"] = str(tmp_path / f"out{i}")
        cfg = config_from_dict(data, source="test", base_dir=tmp_path)
        memory: dict[str, float] = {}
        if reporter is None:
            result = run_job(cfg, memory=memory)
            assert result.step == 20 and result.memory is memory
        else:
            with pytest.raises(type(reporter.exc)):
                run_job(cfg, reporter, memory=memory)
        # No gc.collect() here: run_job itself must have let go of everything.
        assert len(models) == i + 1
        assert models[-1]() is None, f"run {i}: the model is still alive after run_job"
        assert {k: _alive(k) for k in before} == before, f"run {i}: a Trainer or an optimizer is still alive"
        assert memory == {}  # no CUDA here: no figures, and none made up
