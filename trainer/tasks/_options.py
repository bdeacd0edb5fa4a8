"""`task_options:` of a train config: the settings that belong to one task (regression, multilabel, token labels)."""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass
class TaskOptions:
    """Settings read only by the task they name; the other tasks ignore them (they keep their defaults)."""

    target_columns: list[str] | None = None
    """regression: the float target column(s); default the one column `data.label_column`."""
    standardize: bool = False
    """regression: train on (target - mean) / std of train; metrics and a saved model stay in the data's units."""
    loss: Literal["mse", "huber"] = "mse"
    """regression: the training loss; `eval_loss` is the mean squared error either way, so trials compare."""
    huber_delta: float = 1.0
    """regression with `loss: huber`: where the loss turns from squared to linear (in standardised units if set)."""
    threshold: float | Literal["tune"] = 0.5
    """multilabel: a label is predicted when its probability is >= this; `tune` picks, at each evaluation, the
    threshold of best f1_micro on validation (reported as `threshold`; a test split uses the last one tuned)."""
    tokens_column: str = "tokens"
    """token-classification: a list of words per row."""
    tags_column: str = "tags"
    """token-classification: a list of tags per row (names or ids), one per word."""
    tag_scheme: Literal["bio", "plain"] = "bio"
    """token-classification: `bio` (B-X starts an entity, I-X continues it, O is outside) or `plain` (a run of the
    same tag is one entity; O is outside)."""
    image_column: str = "image"
    """image-classification: the image path column of a table (relative paths from the table's folder)."""
    augment: Literal["none", "flip", "crop", "flip+crop"] = "none"
    """image-classification: light augmentation of training images only, drawn anew each time a row is batched and
    seeded by `train.seed`: `flip` mirrors left-right with p=0.5, `crop` takes a random crop (0.8-1.0 of the area,
    aspect 3/4-4/3) resized back; validation and test images are never augmented."""


DATA_FIELDS = ("target_columns", "standardize", "tokens_column", "tags_column", "tag_scheme", "image_column")
"""The options that change the prepared (checked, tokenized) data, so they are part of its cache key."""


def data_options(options: TaskOptions) -> dict[str, object]:
    """The options of `DATA_FIELDS` as a mapping (for the prepared data's fingerprint)."""
    return {name: getattr(options, name) for name in DATA_FIELDS}
