"""Multi-label classification: text (or text pairs) with a list of labels each; f1_micro, f1_macro, exact_match."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from trainer.data import Examples
from trainer.schema import ConfigError, Problem, describe
from trainer.tasks._base import Task
from trainer.tasks._common import FloatLabelCollator, check_columns, check_texts, logits_of
from trainer.tasks.classification import classification_with_stats, head_modules, is_label

if TYPE_CHECKING:
    from trainer.config import TrainConfig

THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))
"""The thresholds `threshold: tune` tries (0.05 .. 0.95); a tie goes to the one nearest 0.5."""


class Multilabel(Task):
    """`task: multilabel`: one sigmoid output per label over an encoder, binary cross-entropy."""

    name = "multilabel"
    metrics = ("f1_micro", "f1_macro", "exact_match", "eval_loss")
    directions: ClassVar[Mapping[str, str]] = {
        "f1_micro": "maximize",
        "f1_macro": "maximize",
        "exact_match": "maximize",
        "eval_loss": "minimize",
    }
    default_objective = "f1_micro"
    recorded = ("threshold",)  # with `threshold: tune`: the one each evaluation chose
    class_weights = True
    peft_task_type = "SEQ_CLS"
    model_mapping = "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING"

    def check_config(self, cfg: TrainConfig, source: str, problems: list[Problem]) -> None:
        t = cfg.task_options.threshold
        if t != "tune" and not 0 < t < 1:
            problems.append(
                Problem(source, "task_options.threshold", f"expected a number in (0, 1) or tune, found {t}")
            )

    def load_examples(
        self, cfg: TrainConfig, splits: dict[str, list[dict[str, Any]]], paths: dict[str, str], source: str
    ) -> Examples:
        d = cfg.data
        problems: list[Problem] = []
        for split, rows in splits.items():
            path = paths[split]
            wanted = [("data.text_column", d.text_column), ("data.label_column", d.label_column)]
            if d.text_pair_column:
                wanted.append(("data.text_pair_column", d.text_pair_column))
            check_columns(rows, wanted, split, path, source, problems)
            check_texts(rows, [c for _, c in wanted if c != d.label_column], split, path, source, problems)
            for i, r in enumerate(rows):
                v = r.get(d.label_column, [])
                if not isinstance(v, list):
                    problems.append(
                        Problem(
                            source,
                            "data.label_column",
                            f"{split} row {i + 1} of '{path}': "
                            f"column '{d.label_column}' expected a list of label names or ids, "
                            f"found {describe(v)}",
                        )
                    )
                    break
                if not all(is_label(x) for x in v):
                    bad = next(x for x in v if not is_label(x))
                    problems.append(
                        Problem(
                            source,
                            "data.label_column",
                            f"{split} row {i + 1} of '{path}': "
                            f"expected label names or integer ids >= 0 in the list, found "
                            f"{describe(bad)}",
                        )
                    )
                    break
        if problems:
            raise ConfigError(problems)
        values = [x for r in splits["train"] for x in r[d.label_column]]
        if any(isinstance(x, str) for x in values) and not all(isinstance(x, str) for x in values):
            raise ConfigError(
                Problem(
                    source,
                    "data.label_column",
                    f"train labels in '{paths['train']}' mix integer ids and names; use one kind",
                )
            )
        if d.labels is not None:
            names = list(d.labels)
        elif values and isinstance(values[0], str):
            names = sorted(set(values))
        else:
            names = [str(i) for i in range(int(max(values, default=-1)) + 1)]
        if len(names) < 2:
            raise ConfigError(
                Problem(
                    source,
                    "data.label_column",
                    f"train data '{paths['train']}' has {len(names)} label(s) {names}; multilabel needs at least two",
                )
            )
        index = {n: i for i, n in enumerate(names)}

        def ids(v: list[Any], split: str, i: int) -> list[int]:
            out = []
            for x in v:
                j = index.get(x) if isinstance(x, str) else int(x)
                if j is None or j >= len(names):
                    raise ConfigError(
                        Problem(
                            source,
                            "data.label_column",
                            f"{split} row {i + 1} of '{paths[split]}': label {x!r} is not among the labels {names}",
                        )
                    )
                out.append(j)
            return sorted(set(out))

        def convert(rows: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
            out = []
            for i, r in enumerate(rows):
                label_ids = ids(r[d.label_column], split, i)
                ex: dict[str, Any] = {
                    "text": r[d.text_column],
                    "label_ids": label_ids,
                    "hot": _hot(label_ids, len(names)),
                }
                if d.text_pair_column:
                    ex["text_pair"] = r[d.text_pair_column]
                out.append(ex)
            return out

        out = {split: convert(rows, split) for split, rows in splits.items()}
        return Examples(
            task=cfg.task, train=out["train"], validation=out["validation"], labels=names, test=out.get("test", [])
        )

    def label_counts(self, rows: list[dict[str, Any]], examples: Examples) -> list[int] | None:
        counts = [0] * len(examples.labels)
        for r in rows:
            for j in r["label_ids"]:
                counts[j] += 1
        return counts

    def tokenize(
        self, rows: list[dict[str, Any]], tokenizer: Any, max_length: int
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        return classification_with_stats([{**r, "label": r["hot"]} for r in rows], tokenizer, max_length)

    def collator(self, tokenizer: Any) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        return FloatLabelCollator(tokenizer.pad_token_id or 0)

    def load_model(self, location: str, labels: list[str], **options: Any) -> Any:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(
            location,
            num_labels=len(labels),
            problem_type="multi_label_classification",
            id2label=dict(enumerate(labels)),
            label2id={n: i for i, n in enumerate(labels)},
            ignore_mismatched_sizes=True,
            **options,
        )

    def modules_to_save(self, model: Any) -> list[str] | None:
        return head_modules(model)

    def loss(self, cfg: TrainConfig, train_rows: list[dict[str, Any]], examples: Examples) -> Callable[..., Any] | None:
        if cfg.train.class_weights == "none":
            return None
        return bce_loss(pos_weights([r["labels"] for r in train_rows]))

    def metric_function(self, cfg: TrainConfig, examples: Examples) -> Callable[[Any], dict[str, float]]:
        return ThresholdMetrics(cfg.task_options.threshold)

    def clean_metrics(self, raw: dict[str, Any], keep: Any = None) -> dict[str, float]:
        out = super().clean_metrics(raw, keep)
        if "eval_threshold" in raw:  # recorded beside the metrics (not an objective)
            out["threshold"] = float(raw["eval_threshold"])
        return out

    def describe_split(self, rows: list[dict[str, Any]], examples: Examples) -> dict[str, Any]:
        sizes = [len(r["label_ids"]) for r in rows]
        return {
            "labels_per_row": {
                "mean": round(sum(sizes) / len(sizes), 3) if sizes else 0.0,
                "none": sizes.count(0),
                "max": max(sizes, default=0),
            }
        }

    def describe_lines(self, info: dict[str, Any]) -> list[str]:
        per = info.get("labels_per_row")
        return [f"labels per row: mean {per['mean']} · max {per['max']} · rows with none {per['none']}"] if per else []

    def show_row(self, row: dict[str, Any], labels: list[str]) -> str | None:
        text = row["text"] if "text_pair" not in row else f"{row['text']} || {row['text_pair']}"
        text = text if len(text) <= 80 else text[:77] + "..."
        return f"{text!r} ({', '.join(labels[j] for j in row['label_ids']) or 'no label'})"


def _hot(ids: list[int], n: int) -> list[float]:
    out = [0.0] * n
    for j in ids:
        out[j] = 1.0
    return out


def pos_weights(hot: list[list[float]]) -> list[float]:
    """BCE `pos_weight` per label: rows without it over rows with it (1 where a label is absent from train)."""
    n = len(hot)
    width = max(len(h) for h in hot)
    pos = [sum(h[j] for h in hot if j < len(h)) for j in range(width)]
    return [(n - p) / p if p else 1.0 for p in pos]


def bce_loss(weights: list[float]) -> Callable[..., Any]:
    """A Trainer `compute_loss_func`: BCE weighted by `pos_weight` while training, unweighted in evaluation
    (so `eval_loss` compares across trials). Mean over every (row, label)."""
    import torch

    def loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        logits, labels = logits.float(), labels.float()
        if not torch.is_grad_enabled():
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        w = torch.tensor(weights[: labels.shape[-1]], dtype=logits.dtype, device=logits.device)
        total = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, pos_weight=w, reduction="sum")
        return total / (num_items_in_batch if num_items_in_batch is not None else labels.numel())

    return loss


def multilabel_metrics(probs: Any, truth: Any, threshold: float) -> dict[str, float]:
    """f1_micro (over every row and label), f1_macro (mean over the labels present in truth or predictions; a
    label neither true nor predicted anywhere is left out), exact_match (rows whose whole label set is right)."""
    import numpy as np

    pred = probs >= threshold
    truth = truth >= 0.5
    tp = (pred & truth).sum(0).astype(float)
    fp = (pred & ~truth).sum(0).astype(float)
    fn = (~pred & truth).sum(0).astype(float)
    den = 2 * tp.sum() + fp.sum() + fn.sum()
    present = (tp + fp + fn) > 0
    per_label = np.where(present, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
    return {
        "f1_micro": float(2 * tp.sum() / den) if den else 1.0,
        "f1_macro": float(per_label[present].mean()) if present.any() else 1.0,
        "exact_match": float((pred == truth).all(1).mean()),
    }


class ThresholdMetrics:
    """`compute_metrics` of one multilabel run. With a fixed threshold, the metrics at it. With `tune`, each
    validation evaluation picks the threshold of best f1_micro (reported as `threshold`); any other split (the
    held-out test) is scored at the threshold last tuned on validation, never tuned on itself. The validation
    split is the one scored first (training evaluates it before any test evaluation)."""

    def __init__(self, threshold: float | str) -> None:
        self.threshold = threshold
        self.tuned = 0.5
        self.validation: Any = None

    def __call__(self, pred: Any) -> dict[str, float]:
        import numpy as np

        probs = 1 / (1 + np.exp(-logits_of(pred).astype(float)))
        truth = np.asarray(pred.label_ids, dtype=float)
        if self.threshold != "tune":
            return multilabel_metrics(probs, truth, float(self.threshold))
        if self.validation is None:
            self.validation = truth.copy()
        if truth.shape == self.validation.shape and np.array_equal(truth, self.validation):
            scores = [(multilabel_metrics(probs, truth, t)["f1_micro"], -abs(t - 0.5), t) for t in THRESHOLDS]
            self.tuned = max(scores)[2]
        return {**multilabel_metrics(probs, truth, self.tuned), "threshold": self.tuned}
