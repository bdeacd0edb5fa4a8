"""Sequence classification: text (or text pairs) with one class label each, accuracy and macro F1."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from trainer._loss import balanced_weights, class_weighted_loss
from trainer._tokenize import length_stats, quiet, unknown_tokens
from trainer.data import Examples
from trainer.schema import ConfigError, Problem, describe
from trainer.tasks._base import Task
from trainer.tasks._common import check_columns, check_texts

if TYPE_CHECKING:
    from trainer.config import TrainConfig


class Classification(Task):
    """`task: classification`: a sequence-classification head over an encoder (or decoder)."""

    name = "classification"
    metrics = ("accuracy", "f1_macro", "eval_loss")
    directions: ClassVar[Mapping[str, str]] = {"accuracy": "maximize", "f1_macro": "maximize", "eval_loss": "minimize"}
    default_objective = "accuracy"
    class_weights = True
    peft_task_type: ClassVar[str | None] = "SEQ_CLS"
    model_mapping = "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING"

    def load_examples(
        self, cfg: TrainConfig, splits: dict[str, list[dict[str, Any]]], paths: dict[str, str], source: str
    ) -> Examples:
        names, out = read_labelled(cfg, splits, paths, source)
        return Examples(
            task=cfg.task, train=out["train"], validation=out["validation"], labels=names, test=out.get("test", [])
        )

    def label_counts(self, rows: list[dict[str, Any]], examples: Examples) -> list[int] | None:
        counts = [0] * len(examples.labels)
        for r in rows:
            counts[r["label"]] += 1
        return counts

    def tokenize(
        self, rows: list[dict[str, Any]], tokenizer: Any, max_length: int
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        return classification_with_stats(rows, tokenizer, max_length)

    def load_model(self, location: str, labels: list[str], **options: Any) -> Any:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(
            location,
            num_labels=len(labels),
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
        return class_weighted_loss(balanced_weights([int(r["labels"]) for r in train_rows], examples.num_labels))

    def compute_metrics(self, pred: Any) -> dict[str, float]:
        return classification_metrics(pred)


def classification_with_stats(
    rows: list[dict[str, Any]], tokenizer: Any, max_length: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Token ids (truncated to max_length) and what truncation cost: full lengths, rows truncated, unknown tokens."""
    texts = [r["text"] for r in rows]
    pairs = [r["text_pair"] for r in rows] if rows and "text_pair" in rows[0] else None
    if not rows:
        return [], {"rows": 0}
    enc = quiet(lambda: tokenizer(texts, pairs, truncation=False))
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    full = [len(ids) for ids in enc["input_ids"]]
    long = [i for i, n in enumerate(full) if n > max_length]
    if long:  # re-encode only the rows that need it, with the tokenizer's own truncation rules
        cut = tokenizer(
            [texts[i] for i in long],
            [pairs[i] for i in long] if pairs else None,
            truncation=True,
            max_length=max_length,
        )
        for j, i in enumerate(long):
            for k in keys:
                enc[k][i] = cut[k][j]
    out = [{**{k: enc[k][i] for k in keys}, "labels": r["label"]} for i, r in enumerate(rows)]
    stats = length_stats(full, max_length)
    stats["truncated"] = len(long)
    stats["unknown_tokens"], stats["tokens"] = unknown_tokens(enc["input_ids"], tokenizer)
    stats["empty_texts"] = sum(
        1 for r in rows if not r["text"].strip() or ("text_pair" in r and not r["text_pair"].strip())
    )
    return out, stats


def tokenize_classification(rows: list[dict[str, Any]], tokenizer: Any, max_length: int) -> list[dict[str, Any]]:
    return classification_with_stats(rows, tokenizer, max_length)[0]


def read_labelled(
    cfg: TrainConfig, splits: dict[str, list], paths: dict[str, str], source: str
) -> tuple[list[str], dict[str, list[dict[str, Any]]]]:
    """Check every split's text and label columns: (label names in id order, {split: [{text, label}]})."""
    d = cfg.data
    problems: list[Problem] = []
    train = splits["train"]
    for split, rows in splits.items():
        path = paths[split]
        wanted = [("data.text_column", d.text_column), ("data.label_column", d.label_column)]
        if d.text_pair_column:
            wanted.append(("data.text_pair_column", d.text_pair_column))
        check_columns(rows, wanted, split, path, source, problems)
        check_texts(
            rows, [d.text_column] + ([d.text_pair_column] if d.text_pair_column else []), split, path, source, problems
        )
        bad = [r[d.label_column] for r in rows if d.label_column in r and not is_label(r[d.label_column])]
        if bad:
            problems.append(
                Problem(
                    source,
                    "data.label_column",
                    f"{split} labels in column '{d.label_column}' of "
                    f"'{path}' must be integer ids >= 0 or names, found {describe(bad[0])}"
                    f" ({len(bad)} such rows)" + _float_hint(bad),
                )
            )
    if problems:
        raise ConfigError(problems)

    values = [r[d.label_column] for r in train]
    ints = all(not isinstance(v, str) for v in values)
    if ints:
        ids = {int(v) for v in values}
        n = max(ids) + 1
        if d.labels is not None:
            if len(d.labels) < n:
                raise ConfigError(
                    Problem(source, "data.labels", f"{len(d.labels)} names given, but train has label id {n - 1}")
                )
            names = list(d.labels)
        else:
            names = [str(i) for i in range(n)]
    else:
        if any(not isinstance(v, str) for v in values):
            raise ConfigError(
                Problem(
                    source, "data.label_column", f"train labels in '{d.train}' mix integer ids and names; use one kind"
                )
            )
        found = sorted(set(values))
        names = list(d.labels) if d.labels is not None else found
        unknown = [v for v in found if v not in names]
        if unknown:
            raise ConfigError(
                Problem(source, "data.labels", f"train label {unknown[0]!r} is not in data.labels {names}")
            )
    if len(names) < 2:
        raise ConfigError(
            Problem(
                source,
                "data.label_column",
                f"train data '{d.train}' has a single label ({names[0]!r}); classification needs at least two",
            )
        )
    index = {name: i for i, name in enumerate(names)}

    def to_id(v: Any, split: str, path: str) -> int:
        if isinstance(v, str):
            if v not in index:
                raise ConfigError(
                    Problem(
                        source,
                        "data.label_column",
                        f"{split} label {v!r} in '{path}' is not among the train labels {names}",
                    )
                )
            return index[v]
        if int(v) >= len(names):
            raise ConfigError(
                Problem(
                    source,
                    "data.label_column",
                    f"{split} label id {int(v)} in '{path}' is outside the label set 0..{len(names) - 1}",
                )
            )
        return int(v)

    def convert(rows: list, split: str, path: str) -> list[dict[str, Any]]:
        out = []
        for r in rows:
            ex = {"text": r[d.text_column], "label": to_id(r[d.label_column], split, path)}
            if d.text_pair_column:
                ex["text_pair"] = r[d.text_pair_column]
            out.append(ex)
        return out

    return names, {split: convert(rows, split, paths[split]) for split, rows in splits.items()}


def _float_hint(bad: list[Any]) -> str:
    """Point float labels to the task that takes them."""
    if any(isinstance(v, float) for v in bad):
        return "; float targets are scores: use task: regression"
    if any(isinstance(v, list) for v in bad):
        return "; a list of labels per row is task: multilabel"
    return ""


def is_label(v: Any) -> bool:
    """A class label as data gives it: an integer id >= 0 (an integral float too) or a non-empty name."""
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return v >= 0
    if isinstance(v, float):
        return v.is_integer() and v >= 0
    return isinstance(v, str) and v.strip() != ""


def classification_metrics(pred: Any) -> dict[str, float]:
    """Accuracy and macro F1 (over the classes present in labels or predictions) of one evaluation."""
    import numpy as np

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


def head_modules(model: Any) -> list[str]:
    """The new classification head, plus the pooler that feeds it where the architecture has one.

    A sentence-embedding checkpoint (such as all-MiniLM) never trained its pooler for a task; frozen,
    it hides the signal from the head, so LoRA trains it in full (one small dense layer).
    """
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    return [n for n in ("classifier", "score", "pooler") if n in names]
