"""Validation metrics: accuracy and macro F1 for classification, perplexity for SFT."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

METRICS = {"classification": ("accuracy", "f1_macro", "eval_loss"), "sft": ("eval_loss", "perplexity")}
"""The metrics each task reports; a study objective must name one of these."""

DIRECTIONS = {"accuracy": "maximize", "f1_macro": "maximize", "eval_loss": "minimize", "perplexity": "minimize"}


def classification_metrics(pred: Any) -> dict[str, float]:
    logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
    y_pred = np.asarray(logits).argmax(-1)
    y_true = np.asarray(pred.label_ids)
    f1s = []
    for label in np.union1d(y_true, y_pred):
        tp = float(np.sum((y_pred == label) & (y_true == label)))
        fp = float(np.sum((y_pred == label) & (y_true != label)))
        fn = float(np.sum((y_pred != label) & (y_true == label)))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return {"accuracy": float(np.mean(y_pred == y_true)), "f1_macro": float(np.mean(f1s))}


def clean(raw: dict[str, Any], task: str) -> dict[str, float]:
    """Trainer's `eval_*` names to ours; adds perplexity for SFT."""
    out: dict[str, float] = {}
    for key, value in raw.items():
        if not isinstance(value, (int, float)):
            continue
        name = key if key == "eval_loss" else key.removeprefix("eval_")
        if name in METRICS[task]:
            out[name] = float(value)
    if task == "sft" and "eval_loss" in out:
        out["perplexity"] = math.exp(min(out["eval_loss"], 700.0))
    return out


def evaluate_on_test(trainer: Any, rows: list[dict[str, Any]], task: str) -> dict[str, float]:
    """Evaluate `trainer`'s model once on the held-out test rows: our metric names with a `test_` prefix.

    The caller makes sure no reporter sees this evaluation (it must never steer a search).
    """
    raw = trainer.evaluate(eval_dataset=rows)
    return {f"test_{k}": v for k, v in clean(raw, task).items()}
