"""Silent data and model mistakes made loud: exit 2 naming file, key and what was found; nothing trained."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import tiny

from search.cli import main


def _fails(argv: list[str], capsys: pytest.CaptureFixture, out_dir: Path | None = None) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if out_dir is not None:
        assert not (out_dir / "metrics.json").exists()
    return err


@pytest.fixture
def good(tmp_path: Path, bert_dir: Path) -> dict:
    return tiny.classification_config(tmp_path, bert_dir)


def _train(tmp: Path, data: dict, capsys: pytest.CaptureFixture) -> str:
    path = tiny.write_config(tmp / "train.yaml", data)
    return _fails(["train", str(path)], capsys, tmp / "out")


def test_duplicate_yaml_keys_name_the_key_and_both_lines(
    tmp_path: Path, good: dict, capsys: pytest.CaptureFixture
) -> None:
    path = tiny.write_config(tmp_path / "train.yaml", good)
    text = path.read_text()
    lines = text.splitlines()
    first_train = next(i for i, line in enumerate(lines) if line.startswith("train:")) + 1
    path.write_text(text + "train:\n  max_steps: 5\ndata:\n  train: x.jsonl\n  train: y.jsonl\n")
    n = len(lines)
    err = _fails(["train", str(path)], capsys, tmp_path / "out")
    assert f"{path}: train: given twice, on lines {first_train} and {n + 1}" in err
    assert f"data.train: given twice, on lines {n + 4} and {n + 5}" in err


@pytest.mark.parametrize("where", ["study", "space"])
def test_duplicate_keys_in_a_study_or_space_file(
    tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture, where: str
) -> None:
    if where == "space":
        space = tmp_path / "space.yaml"
        space.write_text(
            "peft.r: {type: int, low: 2, high: 8}\ntrain.learning_rate: {type: float, low: 0.001, "
            "high: 0.01}\npeft.r: {type: int, low: 4, high: 16}\n"
        )
        path = tiny.study_file(tmp_path, bert_dir, space=str(space))
        expected = f"{space}: peft.r: given twice, on lines 1 and 3"
    else:
        path = tiny.study_file(tmp_path, bert_dir)
        path.write_text(path.read_text() + "budget: {n_trials: 2}\n")
        expected = f"{path}: budget: given twice, on lines"
    err = _fails(["run", str(path)], capsys)
    assert expected in err


def test_non_utf8_config_file(tmp_path: Path, good: dict, capsys: pytest.CaptureFixture) -> None:
    path = tiny.write_config(tmp_path / "train.yaml", good)
    path.write_bytes(path.read_bytes() + "# caf\u00e9\n".encode("latin-1"))
    err = _fails(["train", str(path)], capsys, tmp_path / "out")
    assert f"{path}: config file is not UTF-8 text (byte 0xe9" in err


@pytest.mark.parametrize(
    "key,value,expected",
    [
        ("epochs", float("inf"), "train.epochs: expected a finite number, found inf (float)"),
        ("epochs", float("nan"), "train.epochs: expected a finite number, found nan (float)"),
        ("learning_rate", float("inf"), "train.learning_rate: expected a finite number, found inf (float)"),
        ("weight_decay", float("-inf"), "train.weight_decay: expected a finite number, found -inf (float)"),
    ],
)
def test_every_float_field_must_be_finite(
    tmp_path: Path, good: dict, capsys: pytest.CaptureFixture, key: str, value: float, expected: str
) -> None:
    good["train"][key] = value
    assert expected in _train(tmp_path, good, capsys)


def test_model_folder_without_tokenizer_files(
    tmp_path: Path, good: dict, bert_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    bare = tmp_path / "bare-model"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(bert_dir / name, bare / name)
    good["model"] = str(bare)
    err = _train(tmp_path, good, capsys)
    assert f"model: model folder '{bare}' has no tokenizer files" in err


def test_max_length_beyond_position_embeddings(tmp_path: Path, good: dict, capsys: pytest.CaptureFixture) -> None:
    good["train"]["max_length"] = 200  # the tiny BERT has 128 positions
    err = _train(tmp_path, good, capsys)
    assert "train.max_length: must be <= 128, the longest input" in err and "found 200" in err


def test_sft_with_an_encoder_is_rejected(tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture) -> None:
    data = tiny.sft_config(tmp_path, bert_dir)
    err = _train(tmp_path, data, capsys)
    assert "task: sft trains a causal LM, but" in err and "bidirectional encoder (bert)" in err


def test_tokenizer_that_does_not_fit_the_data(tmp_path: Path, good: dict, capsys: pytest.CaptureFixture) -> None:
    rows = [{"text": f"zebra quokka axolotl number{i}", "label": i % 2} for i in range(40)]
    tiny.write_jsonl(tmp_path / "alien.jsonl", rows)
    good["data"]["train"] = "alien.jsonl"
    err = _train(tmp_path, good, capsys)
    assert "model: the tokenizer maps 100% of the train tokens to its unknown token '[UNK]'" in err


@pytest.mark.parametrize(
    "change,expected",
    [
        (
            {"test": "data/val.jsonl", "test_fraction": 0.1},
            "data.test_fraction: give data.test (a file) or data.test_fraction, not both",
        ),
        ({"test_fraction": 1.5}, "data.test_fraction: must be in (0, 1), found 1.5"),
        ({"test": "nothere.jsonl"}, "data.test: data file"),
    ],
)
def test_bad_test_split(tmp_path: Path, good: dict, capsys: pytest.CaptureFixture, change: dict, expected: str) -> None:
    good["data"].update(change)
    assert expected in _train(tmp_path, good, capsys)


def test_class_weights_need_classification(tmp_path: Path, gpt2_dir: Path, capsys: pytest.CaptureFixture) -> None:
    data = tiny.sft_config(tmp_path, gpt2_dir)
    data["train"]["class_weights"] = "balanced"
    err = _train(tmp_path, data, capsys)
    assert "train.class_weights: applies to task classification, multilabel" in err and "task is sft" in err


@pytest.mark.parametrize(
    "space,expected",
    [
        (
            {
                "peft.method": {"type": "categorical", "choices": ["lora", "full"]},
                "peft.r": {"type": "int", "low": 2, "high": 8, "when": {"peft.method": "lroa"}},
            },
            "space.peft.r.when: peft.method can never be 'lroa' (its choices are ['lora', 'full']), so peft.r would "
            "never be sampled; did you mean 'lora'?",
        ),
        (
            {
                "peft.r": {"type": "int", "low": 2, "high": 8},
                "peft.alpha": {"type": "float", "low": 4.0, "high": 32.0, "when": {"peft.r": 16}},
            },
            "space.peft.alpha.when: peft.r can never be 16 (it takes an integer in [2, 8])",
        ),
        (
            {"peft.r": {"type": "int", "low": 2, "high": 8, "step": 1.5}},
            "space.peft.r.step: an int parameter needs a whole step, found 1.5",
        ),
        (
            {"peft.r": {"type": "float", "low": 2.0, "high": 8.0}},
            "space.peft.r.type: peft.r is an integer field, so a float parameter would give it values like 4.7",
        ),
        (
            {"peft.r": {"type": "int", "low": 2, "high": 64, "step": 4}},
            "space.peft.r.step: step 4 does not divide high - low = 62: the range would be narrowed to [2, 62]; "
            "set high to 62 or 66",
        ),
        (
            {"train.warmup_ratio": {"type": "float", "low": 0.0, "high": 0.1, "step": 0.03}},
            "space.train.warmup_ratio.step: step 0.03 does not divide high - low = 0.1: the range would be narrowed "
            "to [0, 0.09]",
        ),
        (
            {"train.learning_rate": {"type": "float", "low": 1e-4, "high": float("inf")}},
            "space.train.learning_rate: low and high must be finite numbers",
        ),
    ],
)
def test_bad_space(tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture, space: dict, expected: str) -> None:
    path = tiny.study_file(tmp_path, bert_dir, space=space)
    err = _fails(["run", str(path)], capsys)
    assert f"{path}: {expected}" in err
    assert not (tmp_path / "s.db").exists()


def test_a_step_that_divides_the_range_is_accepted(tmp_path: Path, bert_dir: Path) -> None:
    from search.config import load_study

    cfg = load_study(
        tiny.study_file(
            tmp_path,
            bert_dir,
            space={
                "peft.r": {"type": "int", "low": 2, "high": 62, "step": 4},
                "train.warmup_ratio": {"type": "float", "low": 0.0, "high": 0.1, "step": 0.02},
                "peft.method": {"choices": ["lora", "full"]},
                "peft.alpha": {"type": "float", "low": 4.0, "high": 32.0, "when": {"peft.method": "lora"}},
            },
        )
    )
    assert cfg.space.params[0].grid_values()[-1] == 62


def test_searched_seed_with_splits_drawn_from_train_needs_a_split_seed(
    tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    import yaml

    from search.config import load_study

    path = tiny.study_file(tmp_path, bert_dir, space={"train.seed": {"type": "int", "low": 0, "high": 3}})
    data = yaml.safe_load(path.read_text())
    data["base"]["data"] = {"train": data["base"]["data"]["train"], "test_fraction": 0.1}
    path.write_text(yaml.safe_dump(data))
    err = _fails(["run", str(path)], capsys)
    assert "space.train.seed: train.seed is searched, and the validation and test splits are held out of train" in err
    data["base"]["data"]["split_seed"] = 0
    path.write_text(yaml.safe_dump(data))
    assert load_study(path).base_config.data.split_seed == 0
