"""Pieces the tasks beyond classification share: reading text columns, float-label batches, number checks."""

from __future__ import annotations

import math
from typing import Any

from trainer.data import columns
from trainer.schema import Problem, describe


def check_columns(
    rows: list[dict[str, Any]],
    wanted: list[tuple[str, str]],
    split: str,
    path: str,
    source: str,
    problems: list[Problem],
) -> None:
    """Each (key, column) must be in every row of the split; one problem per missing column."""
    for key, col in wanted:
        missing = sum(1 for r in rows if col not in r)
        if missing == len(rows):
            problems.append(
                Problem(
                    source,
                    key,
                    f"column '{col}' not found in {split} data '{path}' (columns: {', '.join(columns(rows))})",
                )
            )
        elif missing:
            problems.append(
                Problem(
                    source,
                    key,
                    f"column '{col}' is missing from {missing} of {len(rows)} rows of {split} data '{path}'",
                )
            )


def check_texts(
    rows: list[dict[str, Any]], cols: list[str], split: str, path: str, source: str, problems: list[Problem]
) -> None:
    """The first row whose text column is not a string, as one problem."""
    for i, r in enumerate(rows):
        for col in cols:
            if col in r and not isinstance(r[col], str):
                problems.append(
                    Problem(
                        source,
                        "data.text_column",
                        f"{split} row {i + 1} of '{path}': column '{col}' must be text, found {describe(r[col])}",
                    )
                )
                return


def is_number(v: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class FloatLabelCollator:
    """Pads token inputs as `PadCollator` does; `labels` (a list of floats per row) become one float tensor."""

    def __init__(self, pad_token_id: int) -> None:
        from trainer._tokenize import PadCollator

        self.pad = PadCollator(pad_token_id)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        batch = self.pad([{k: v for k, v in f.items() if k != "labels"} for f in features])
        batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.float32)
        return batch


def logits_of(pred: Any) -> Any:
    """The logits array of a Trainer EvalPrediction (the first item when the model returned several)."""
    import numpy as np

    return np.asarray(pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions)
