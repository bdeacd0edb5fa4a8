"""Bad input: exit 2, one message naming file, key, expected and found; no traceback; nothing trained."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tiny

from search.cli import main


def _run(tmp: Path, data: dict, capsys: pytest.CaptureFixture, *extra: str) -> str:
    path = tiny.write_config(tmp / "train.yaml", data)
    assert main(["train", str(path), *extra]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert not (tmp / "out" / "metrics.json").exists()
    return err


@pytest.fixture
def good(tmp_path: Path, bert_dir: Path) -> dict:
    return tiny.classification_config(tmp_path, bert_dir)


def test_unknown_key_suggests(tmp_path: Path, good: dict, capsys: pytest.CaptureFixture) -> None:
    good["train"]["learnign_rate"] = 0.1
    err = _run(tmp_path, good, capsys)
    assert "train.yaml: train.learnign_rate: unknown key; did you mean 'learning_rate'?" in err


def test_wrong_type(tmp_path: Path, good: dict, capsys: pytest.CaptureFixture) -> None:
    good["train"]["batch_size"] = "sixteen"
    err = _run(tmp_path, good, capsys)
    assert "train.batch_size: expected an integer, found 'sixteen' (str)" in err


def test_all_problems_listed_at_once(tmp_path: Path, good: dict, capsys: pytest.CaptureFixture) -> None:
    good["train"]["batch_size"] = "x"
    good["task"] = "ranking"
    good["peft"]["method"] = "lorra"
    good["train"]["warmup_ratio"] = 2.0
    err = _run(tmp_path, good, capsys)
    assert "4 problems" in err
    assert "task: expected one of classification, sft, regression" in err and "found 'ranking'" in err
    assert "peft.method: expected one of lora, qlora, full, found 'lorra' (str); did you mean 'lora'?" in err
    assert "train.warmup_ratio: must be in [0, 1), found 2.0" in err


def test_missing_data_file(tmp_path: Path, good: dict, capsys: pytest.CaptureFixture) -> None:
    good["data"]["train"] = "nope.jsonl"
    err = _run(tmp_path, good, capsys)
    assert "data.train: data file" in err and "nope.jsonl' does not exist" in err


def test_unreadable_data_file(tmp_path: Path, good: dict, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "broken.jsonl").write_text('{"text": "a", "label": 0}\n{not json\n')
    good["data"]["train"] = "broken.jsonl"
    err = _run(tmp_path, good, capsys)
    assert "data.train:" in err and "line 2 is not valid JSON" in err


def test_missing_column(tmp_path: Path, good: dict, capsys: pytest.CaptureFixture) -> None:
    good["data"]["text_column"] = "sentence"
    err = _run(tmp_path, good, capsys)
    assert "data.text_column: column 'sentence' not found in train data" in err
    assert "(columns: text, label)" in err


@pytest.mark.parametrize("label", [0.5, [1], None, True, -1])
def test_labels_not_ids_or_names(tmp_path: Path, good: dict, capsys: pytest.CaptureFixture, label: object) -> None:
    rows = tiny.sentiment_rows(20, seed=0)
    rows[3]["label"] = label
    tiny.write_jsonl(tmp_path / "bad_labels.jsonl", rows)
    good["data"]["train"] = "bad_labels.jsonl"
    err = _run(tmp_path, good, capsys)
    assert "data.label_column: train labels in column 'label'" in err
    assert "must be integer ids >= 0 or names" in err


def test_validation_label_outside_label_set(tmp_path: Path, good: dict, capsys: pytest.CaptureFixture) -> None:
    rows = tiny.sentiment_rows(20, seed=0)
    rows[0]["label"] = 7
    tiny.write_jsonl(tmp_path / "val7.jsonl", rows)
    good["data"]["validation"] = "val7.jsonl"
    err = _run(tmp_path, good, capsys)
    assert "validation label id 7" in err and "outside the label set 0..1" in err


def test_sft_without_prompt_or_response(tmp_path: Path, gpt2_dir: Path, capsys: pytest.CaptureFixture) -> None:
    data = tiny.sft_config(tmp_path, gpt2_dir)
    tiny.write_jsonl(tmp_path / "plain.jsonl", tiny.sentiment_rows(20, seed=0))
    data["data"] = {"train": "plain.jsonl", "validation": "plain.jsonl"}
    err = _run(tmp_path, data, capsys)
    assert "sft needs prompt and response columns" in err and "found columns: text, label" in err


def test_model_path_does_not_exist(tmp_path: Path, good: dict, capsys: pytest.CaptureFixture) -> None:
    good["model"] = "./models/missing"
    err = _run(tmp_path, good, capsys)
    assert "model: model directory './models/missing' does not exist" in err


def test_unreachable_hub_id_says_so(
    tmp_path: Path, good: dict, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    good["model"] = "someone/no-such-model-here"
    err = _run(tmp_path, good, capsys)
    assert "someone/no-such-model-here" in err and "Hugging Face" in err


def test_set_unknown_key(tmp_path: Path, good: dict, capsys: pytest.CaptureFixture) -> None:
    err = _run(tmp_path, good, capsys, "--set", "train.lr=0.1")
    assert "--set: train.lr: unknown key" in err


def test_set_overrides_are_type_checked(tmp_path: Path, good: dict, capsys: pytest.CaptureFixture) -> None:
    err = _run(tmp_path, good, capsys, "--set", "train.max_steps=many")
    assert "train.max_steps: expected an integer, found 'many' (str)" in err


def test_exit_code_and_no_traceback_from_the_real_command(tmp_path: Path, good: dict) -> None:
    good["peft"]["method"] = "dora"
    path = tiny.write_config(tmp_path / "train.yaml", good)
    proc = subprocess.run([sys.executable, "-m", "search", "train", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "peft.method: expected one of lora, qlora, full, found 'dora'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml: config file does not exist" in capsys.readouterr().err
