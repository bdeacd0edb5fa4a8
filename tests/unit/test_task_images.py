"""task: image-classification on real images (scikit-learn's bundled 8x8 digits) with tiny random ResNet and ViT
models: an image folder or a table of paths, the model's image processor, bad images named before training."""

from __future__ import annotations

from pathlib import Path

import pytest
import tiny

from search.cli import main
from trainer import config_from_dict, prepare, run_job


@pytest.fixture(scope="module")
def resnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.make_image_model(tmp_path_factory.mktemp("resnet"), "resnet")


def test_a_resnet_learns_digits_from_a_class_folder(tmp_path: Path, resnet: Path) -> None:
    cfg = config_from_dict(tiny.image_config(tmp_path, resnet), base_dir=tmp_path)
    prep = prepare(cfg)
    assert prep.examples.labels == [str(i) for i in range(10)] and len(prep.examples.train) == 400
    assert prep.train[0]["pixel_values"].shape == (3, 32, 32)  # the processor's resize, 8x8 grey to RGB 32x32
    assert prep.train[0]["pixel_values"].min() >= -1.01 and prep.train[0]["pixel_values"].max() <= 1.01  # normalised
    result = run_job(cfg, prepared=prep)
    first, last = result.history[0], result.history[-1]
    assert set(result.metrics) == {"accuracy", "f1_macro", "eval_loss"}
    assert last["accuracy"] > first["accuracy"] and last["accuracy"] > 0.6, result.history  # chance is 0.1


def test_a_vit_with_lora_from_a_table_of_paths(tmp_path: Path) -> None:
    vit = tiny.make_image_model(tmp_path / "vit", "vit")
    data = tiny.image_config(tmp_path, vit, learning_rate=3e-3, max_steps=120, eval_every=40)
    rows = [
        {"path": str(p.relative_to(tmp_path / "data")), "digit": int(p.parent.name)}
        for p in sorted((tmp_path / "data" / "digits_train").glob("*/*.png"))
    ]
    tiny.write_jsonl(tmp_path / "data" / "train.jsonl", rows)
    data["data"].update({"train": "data/train.jsonl", "label_column": "digit"})
    data["data"]["validation"] = "data/digits_val"
    data["task_options"] = {"image_column": "path"}
    data["data"]["labels"] = [str(i) for i in range(10)]
    data["peft"] = {"method": "lora", "r": 4}
    result = run_job(config_from_dict(data, base_dir=tmp_path))
    assert result.history[-1]["accuracy"] > max(0.15, result.history[0]["accuracy"]), result.history


def test_bad_images_exit_2(tmp_path: Path, resnet: Path, capsys: pytest.CaptureFixture) -> None:
    data = tiny.image_config(tmp_path, resnet)
    (tmp_path / "data" / "digits_train" / "3" / "notes.png").write_text("not an image")
    err = tiny.refused_train(tmp_path, data, capsys)
    assert "train.yaml: task_options.image_column: train row" in err and "notes.png', which is not one" in err
    (tmp_path / "data" / "digits_train" / "3" / "notes.png").unlink()
    (tmp_path / "data" / "digits_train" / "empty").mkdir()
    err = tiny.refused_train(tmp_path, data, capsys)
    assert "data.train: image folder '" in err and "class folder 'empty' has no images" in err
    (tmp_path / "data" / "digits_train" / "empty").rmdir()
    tiny.write_jsonl(tmp_path / "data" / "train.jsonl", [{"image": "digits_train/0/nope.png", "label": "0"}] * 3)
    data["data"]["train"] = "data/train.jsonl"
    err = tiny.refused_train(tmp_path, data, capsys)
    assert "train row 1 of '" in err and "nope.png', which does not exist" in err


def test_data_report_of_images(tmp_path: Path, resnet: Path, capsys: pytest.CaptureFixture) -> None:
    path = tiny.write_config(tmp_path / "train.yaml", tiny.image_config(tmp_path, resnet))
    assert main(["data", str(path)]) == 0
    out = capsys.readouterr().out
    assert "train: 400 rows" in out and "labels: 0 40 (10.0%)" in out


def test_lora_on_a_resnet_adapts_its_convolutions_and_reruns(
    tmp_path: Path, resnet: Path, capsys: pytest.CaptureFixture
) -> None:
    import json

    from trainer._model import build_model

    data = tiny.image_config(tmp_path, resnet, learning_rate=1e-2, max_steps=20, eval_every=10)
    data["peft"] = {"method": "lora", "r": 4}
    data["save"] = "adapter"
    cfg = config_from_dict(data, base_dir=tmp_path)
    model = build_model(cfg, str(resnet), None, 10, [str(i) for i in range(10)])
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(".convolution.lora_A." in n for n in trainable)  # `auto`: the ResNet's Conv2d layers
    assert all("lora_" in n or "classifier.modules_to_save" in n for n in trainable), trainable
    assert any("classifier.modules_to_save" in n for n in trainable)  # the new head, trained in full
    result = run_job(cfg)
    assert len(result.history) == 2 and result.parameters["trainable_bytes"] < result.parameters["bytes"] / 2
    adapter = tmp_path / "out" / "adapter"
    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert set(saved["target_modules"]) == {"convolution"}
    assert "classifier" in saved["modules_to_save"] and (adapter / "adapter_model.safetensors").exists()
    again = tmp_path / "again.yaml"
    again.write_text((tmp_path / "out" / "config.yaml").read_text())
    assert main(["train", str(again)]) == 0
    rerun = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert rerun["history"] == result.history  # the saved config repeats the run exactly


def test_augment_changes_training_only_and_repeats_exactly(
    tmp_path: Path, resnet: Path, capsys: pytest.CaptureFixture
) -> None:
    import numpy as np

    from trainer.tasks import get_task

    data = tiny.image_config(tmp_path, resnet, max_steps=10, eval_every=5)
    plain = config_from_dict(data, base_dir=tmp_path)
    prep = prepare(plain)
    data["task_options"] = {"augment": "flip+crop"}
    cfg = config_from_dict(data, base_dir=tmp_path)
    task = get_task("image-classification")
    assert task.train_rows(plain, prep.train) is prep.train  # none: the rows as processed
    first = prep.train[0]["pixel_values"].copy()
    rows = task.train_rows(cfg, prep.train)
    drawn = [rows[i]["pixel_values"] for i in range(8)]
    assert all(d.shape == prep.train[i]["pixel_values"].shape for i, d in enumerate(drawn))
    assert not all(np.array_equal(d, prep.train[i]["pixel_values"]) for i, d in enumerate(drawn))
    again = task.train_rows(cfg, prep.train)  # seeded by train.seed: the same draws
    assert all(np.array_equal(again[i]["pixel_values"], d) for i, d in enumerate(drawn))
    flipped = task.train_rows(
        config_from_dict({**data, "task_options": {"augment": "flip"}}, base_dir=tmp_path), prep.train
    )
    for i in range(8):  # a flip is the mirror image or the image itself
        x, y = flipped[i]["pixel_values"], prep.train[i]["pixel_values"]
        assert np.array_equal(x, y) or np.array_equal(x, y[..., ::-1])
    off = run_job(plain, prepared=prep)
    on = run_job(cfg, prepared=prep)
    assert run_job(cfg, prepared=prep).history == on.history  # repeats exactly
    assert on.history != off.history  # trained on other pixels
    batch = task.collator(None)(prep.validation[:4])  # evaluation batches the rows as processed
    assert np.array_equal(batch["pixel_values"].numpy(), np.stack([r["pixel_values"] for r in prep.validation[:4]]))
    assert np.array_equal(prep.train[0]["pixel_values"], first)  # drawing never changes the processed rows
    recorded = tiny.json.loads((tmp_path / "out" / "metrics.json").read_text())["config"]["task_options"]
    assert recorded["augment"] == "flip+crop"
    (tmp_path / "out" / "metrics.json").unlink()
    data["task_options"] = {"augment": "mirror"}
    err = tiny.refused_train(tmp_path, data, capsys)
    assert "train.yaml: task_options.augment: expected one of none, flip, crop, flip+crop, found 'mirror'" in err
