"""The real bundled MiniLM on real data: above chance within a few dozen steps; the quickstart config valid."""

from __future__ import annotations

from pathlib import Path

import pytest
import tiny
from conftest import REPO, SHARED_DATA

from search.cli import main
from trainer import load_train_config, prepare

pytestmark = pytest.mark.integration


def test_minilm_lora_beats_majority_on_sst2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tiny.write_config(
        tmp_path / "sst2.yaml",
        {
            "model": "minilm-l6",
            "task": "classification",
            "data": {
                "train": str(SHARED_DATA / "sst2" / "train.jsonl"),
                "validation": str(SHARED_DATA / "sst2" / "validation.jsonl"),
                "max_train_samples": 800,
                "max_eval_samples": 200,
            },
            "peft": {"method": "lora", "r": 8},
            "train": {"learning_rate": 1e-3, "batch_size": 16, "max_steps": 40, "eval_every": 20, "max_length": 64},
            "output_dir": str(tmp_path / "out"),
        },
    )
    assert main(["train", str(config)]) == 0
    import json

    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())["metrics"]
    assert metrics["accuracy"] > 0.62  # majority class of the 872-row validation set is 0.51


def test_trec6_string_labels_full_finetune(tmp_path: Path) -> None:
    import json

    names = json.loads((SHARED_DATA / "trec6" / "labels.json").read_text())
    rows = [json.loads(line) for line in (SHARED_DATA / "trec6" / "train.jsonl").read_text().splitlines()[:1200]]
    tiny.write_jsonl(tmp_path / "trec.jsonl", [{"question": r["text"], "kind": names[str(r["label"])]} for r in rows])
    config = tiny.write_config(
        tmp_path / "trec.yaml",
        {
            "model": "minilm-l6",
            "data": {
                "train": "trec.jsonl",
                "text_column": "question",
                "label_column": "kind",
                "validation_fraction": 0.15,
            },
            "peft": {"method": "full"},
            "train": {"learning_rate": 2e-4, "batch_size": 16, "max_steps": 40, "eval_every": 40, "max_length": 32},
            "output_dir": str(tmp_path / "out"),
        },
    )
    assert main(["train", str(config)]) == 0
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert sorted(saved["labels"]) == sorted(names.values())
    assert saved["metrics"]["accuracy"] > 0.35  # six classes; the largest is about 0.23


SHIPPED_TRAIN_CONFIGS = sorted((REPO / "studies").glob("*-train.yaml"))


def test_shipped_train_configs_load_with_their_data() -> None:
    """Every shipped train config is valid and its data passes the task's checks (gsm8k: its answers extract)."""
    from trainer.data import load_examples

    assert len(SHIPPED_TRAIN_CONFIGS) >= 2
    for path in SHIPPED_TRAIN_CONFIGS:
        cfg = load_train_config(path)
        examples = load_examples(cfg, source=str(path))
        assert len(examples.train) > 0 and len(examples.validation) > 0


@pytest.mark.parametrize("path", SHIPPED_TRAIN_CONFIGS, ids=lambda p: p.stem)
def test_shipped_train_configs_tokenize_with_their_own_model(path: Path) -> None:
    from trainer import ConfigError
    from trainer._model import model_location

    cfg = load_train_config(path)
    try:
        model_location(cfg, str(path))
    except ConfigError as exc:  # a hub model, where the hub cannot be reached
        pytest.skip(f"{cfg.model} cannot be had on this machine: {exc.render()}")
    prep = prepare(cfg, source=str(path))
    assert len(prep.train) > 0 and len(prep.validation) > 0
