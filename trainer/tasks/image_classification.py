"""Image classification: an image folder (one sub-folder per class) or a table of image paths and labels."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.data import Examples, read_rows
from trainer.schema import ConfigError, Problem
from trainer.tasks._common import check_columns
from trainer.tasks.classification import Classification

if TYPE_CHECKING:
    from trainer.config import TrainConfig

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class ImageClassification(Classification):
    """`task: image-classification`: AutoModelForImageClassification (ResNet, ViT, ConvNeXt, ...) over the
    model's own image processor (AutoImageProcessor: resize, normalise); accuracy and macro F1."""

    name = "image-classification"
    reads_text = False
    peft_task_type = None  # peft has no image task type: LoRA adapts the listed layers, the head is saved
    model_mapping = "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING"

    def read_split(self, cfg: TrainConfig, path: str, key: str, source: str) -> list[dict[str, Any]]:
        p = Path(path)
        if not p.is_dir() or (p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists():
            rows = read_rows(path, key, source)
            col = cfg.task_options.image_column
            for r in rows:  # relative image paths are read from the table's folder
                if isinstance(r.get(col), str) and not Path(r[col]).is_absolute():
                    r[col] = str(p.parent / r[col])
            return rows
        classes = sorted(d for d in p.iterdir() if d.is_dir())
        if not classes:
            raise ConfigError(
                Problem(source, key, f"image folder '{path}': expected one sub-folder per class, found none")
            )
        rows = []
        for d in classes:
            images = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise ConfigError(
                    Problem(
                        source,
                        key,
                        f"image folder '{path}': class folder '{d.name}' has no images ({', '.join(IMAGE_SUFFIXES)})",
                    )
                )
            rows += [{cfg.task_options.image_column: str(f), cfg.data.label_column: d.name} for f in images]
        return rows

    def load_examples(
        self, cfg: TrainConfig, splits: dict[str, list[dict[str, Any]]], paths: dict[str, str], source: str
    ) -> Examples:
        from PIL import Image

        col = cfg.task_options.image_column
        problems: list[Problem] = []
        for split, rows in splits.items():
            check_columns(rows, [("task_options.image_column", col)], split, paths[split], source, problems)
            for i, r in enumerate(rows):
                f = r.get(col)
                where = f"{split} row {i + 1} of '{paths[split]}'"
                if not isinstance(f, str) or not Path(f).is_file():
                    problems.append(
                        Problem(
                            source,
                            "task_options.image_column",
                            f"{where}: expected an image file, found {f!r}, which does not exist",
                        )
                    )
                    break
                try:
                    with Image.open(f) as im:
                        im.verify()
                except Exception as exc:  # noqa: BLE001 - any failure to read is a bad image
                    problems.append(
                        Problem(
                            source,
                            "task_options.image_column",
                            f"{where}: expected an image, found '{f}', which is not one ({type(exc).__name__})",
                        )
                    )
                    break
        if problems:
            raise ConfigError(problems)
        texts = {split: [{**r, cfg.data.text_column: r[col]} for r in rows] for split, rows in splits.items()}
        examples = super().load_examples(cfg, texts, paths, source)  # labels checked and mapped as classification's
        for split_examples in examples.splits().values():
            for ex in split_examples:
                ex["image"] = ex.pop("text")
        return examples

    def load_processor(self, location: str, source: str = "") -> Any:
        from transformers import AutoImageProcessor

        try:
            return AutoImageProcessor.from_pretrained(location)
        except Exception as exc:  # noqa: BLE001 - any failure to load is said as a config problem
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise ConfigError(
                Problem(
                    source, "model", f"cannot load an image processor from '{location}': {type(exc).__name__}: {first}"
                )
            ) from None

    def tokenize(
        self, rows: list[dict[str, Any]], tokenizer: Any, max_length: int
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        from PIL import Image

        out = []
        for start in range(0, len(rows), 64):
            chunk = rows[start : start + 64]
            images = []
            for r in chunk:
                with Image.open(r["image"]) as im:
                    images.append(im.convert("RGB"))
            pixels = tokenizer(images=images, return_tensors="np")["pixel_values"]
            out += [{"pixel_values": pixels[j], "labels": r["label"]} for j, r in enumerate(chunk)]
        return out, {"rows": len(rows)}

    def collator(self, tokenizer: Any) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
            import numpy as np
            import torch

            return {
                "pixel_values": torch.from_numpy(np.stack([f["pixel_values"] for f in features])).float(),
                "labels": torch.tensor([f["labels"] for f in features], dtype=torch.long),
            }

        return collate

    def train_rows(self, cfg: TrainConfig, rows: list[dict[str, Any]]) -> Any:
        augment = cfg.task_options.augment
        return rows if augment == "none" else AugmentedRows(rows, augment.split("+"), cfg.train.seed)

    def load_model(self, location: str, labels: list[str], **options: Any) -> Any:
        from transformers import AutoModelForImageClassification

        return AutoModelForImageClassification.from_pretrained(
            location,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={n: i for i, n in enumerate(labels)},
            ignore_mismatched_sizes=True,
            **options,
        )

    def show_row(self, row: dict[str, Any], labels: list[str]) -> str | None:
        return f"{Path(row['image']).name} ({labels[row['label']]})"


CROP_SCALE = (0.8, 1.0)
"""`augment: crop`: the share of the image's area a crop keeps."""
CROP_RATIO = (3 / 4, 4 / 3)
"""`augment: crop`: the crop's aspect ratio (width over height), drawn log-uniformly."""


class AugmentedRows:
    """Training rows whose `pixel_values` (channels, height, width) are augmented each time one is read: a random
    resized crop (`crop`), then a left-right flip with p=0.5 (`flip`). One generator seeded by `seed` draws them
    all, so a run that reads its rows in the same (seeded) order repeats exactly."""

    def __init__(self, rows: list[dict[str, Any]], kinds: list[str], seed: int) -> None:
        import numpy as np

        self.rows, self.kinds = rows, kinds
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import numpy as np

        row = self.rows[i]
        x = np.asarray(row["pixel_values"])
        if "crop" in self.kinds:
            x = random_resized_crop(x, self.rng)
        if "flip" in self.kinds and self.rng.random() < 0.5:
            x = x[..., ::-1]
        return {**row, "pixel_values": np.ascontiguousarray(x)}


def random_resized_crop(x: Any, rng: Any) -> Any:
    """A crop of `x` (channels, height, width) covering CROP_SCALE of its area at an aspect in CROP_RATIO, at a
    random place, resized back to the full size (bilinear)."""
    import math

    import numpy as np
    import torch

    _, height, width = x.shape
    area = height * width * rng.uniform(*CROP_SCALE)
    ratio = math.exp(rng.uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
    w = min(width, max(1, round(math.sqrt(area * ratio))))
    h = min(height, max(1, round(math.sqrt(area / ratio))))
    top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    crop = torch.from_numpy(np.ascontiguousarray(x[:, top : top + h, left : left + w], dtype=np.float32))
    resized = torch.nn.functional.interpolate(crop[None], size=(height, width), mode="bilinear", align_corners=False)
    return resized[0].numpy().astype(x.dtype, copy=False)
