"""Regression: text (or text pairs) with one or several float targets; rmse, mae, r2, pearson, spearman."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from trainer.data import Examples
from trainer.schema import ConfigError, Problem, describe
from trainer.tasks._base import Task
from trainer.tasks._common import FloatLabelCollator, check_columns, check_texts, is_number, logits_of
from trainer.tasks.classification import classification_with_stats, head_modules

if TYPE_CHECKING:
    from trainer.config import TrainConfig


class Regression(Task):
    """`task: regression`: a sequence-regression head (one output per target column) over an encoder."""

    name = "regression"
    metrics = ("rmse", "mae", "r2", "pearson", "spearman", "eval_loss")
    directions: ClassVar[Mapping[str, str]] = {
        "rmse": "minimize",
        "mae": "minimize",
        "r2": "maximize",
        "pearson": "maximize",
        "spearman": "maximize",
        "eval_loss": "minimize",
    }
    default_objective = "rmse"
    peft_task_type = "SEQ_CLS"
    model_mapping = "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING"

    def check_config(self, cfg: TrainConfig, source: str, problems: list[Problem]) -> None:
        o = cfg.task_options
        if o.target_columns is not None and not o.target_columns:
            problems.append(
                Problem(
                    source,
                    "task_options.target_columns",
                    "expected a non-empty list of column names (or null for data.label_column), found []",
                )
            )
        if not o.huber_delta > 0:
            problems.append(Problem(source, "task_options.huber_delta", f"must be > 0, found {o.huber_delta}"))

    def load_examples(
        self, cfg: TrainConfig, splits: dict[str, list[dict[str, Any]]], paths: dict[str, str], source: str
    ) -> Examples:
        d = cfg.data
        targets = list(cfg.task_options.target_columns or [d.label_column])
        key = "task_options.target_columns" if cfg.task_options.target_columns else "data.label_column"
        problems: list[Problem] = []
        for split, rows in splits.items():
            path = paths[split]
            text_cols = [d.text_column] + ([d.text_pair_column] if d.text_pair_column else [])
            check_columns(
                rows,
                [("data.text_column", d.text_column)]
                + ([("data.text_pair_column", d.text_pair_column)] if d.text_pair_column else [])
                + [(key, t) for t in targets],
                split,
                path,
                source,
                problems,
            )
            check_texts(rows, text_cols, split, path, source, problems)
            for col in targets:
                bad = [(i, r[col]) for i, r in enumerate(rows) if col in r and not is_number(r[col])]
                if bad:
                    i, v = bad[0]
                    problems.append(
                        Problem(
                            source,
                            key,
                            f"{split} row {i + 1} of '{path}': target column '{col}' "
                            f"expected a finite number, found {describe(v)} ({len(bad)} such rows)",
                        )
                    )
        if problems:
            raise ConfigError(problems)
        import numpy as np

        train = np.asarray([[float(r[c]) for c in targets] for r in splits["train"]])
        mean, std = train.mean(0), train.std(0)
        if cfg.task_options.standardize:
            flat = [t for t, s in zip(targets, std, strict=True) if s == 0]
            if flat:
                raise ConfigError(
                    Problem(
                        source,
                        "task_options.standardize",
                        f"train target '{flat[0]}' of "
                        f"'{paths['train']}' is constant ({mean[targets.index(flat[0])]:g}): it "
                        "has no spread to standardise by",
                    )
                )
        else:
            mean, std = np.zeros(len(targets)), np.ones(len(targets))

        def convert(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            out = []
            for r in rows:
                y = [float(r[c]) for c in targets]
                ex = {
                    "text": r[d.text_column],
                    "target": y,
                    "scaled": [(v - m) / s for v, m, s in zip(y, mean.tolist(), std.tolist(), strict=True)],
                }
                if d.text_pair_column:
                    ex["text_pair"] = r[d.text_pair_column]
                out.append(ex)
            return out

        out = {split: convert(rows) for split, rows in splits.items()}
        meta = {
            "targets": targets,
            "standardize": cfg.task_options.standardize,
            "mean": mean.tolist(),
            "std": std.tolist(),
        }
        return Examples(
            task=cfg.task,
            train=out["train"],
            validation=out["validation"],
            labels=targets,
            test=out.get("test", []),
            meta=meta,
        )

    def tokenize(
        self, rows: list[dict[str, Any]], tokenizer: Any, max_length: int
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        return classification_with_stats([{**r, "label": r["scaled"]} for r in rows], tokenizer, max_length)

    def collator(self, tokenizer: Any) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        return FloatLabelCollator(tokenizer.pad_token_id or 0)

    def load_model(self, location: str, labels: list[str], **options: Any) -> Any:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(
            location,
            num_labels=len(labels),
            problem_type="regression",
            id2label=dict(enumerate(labels)),
            label2id={n: i for i, n in enumerate(labels)},
            ignore_mismatched_sizes=True,
            **options,
        )

    def modules_to_save(self, model: Any) -> list[str] | None:
        return head_modules(model)

    def loss(self, cfg: TrainConfig, train_rows: list[dict[str, Any]], examples: Examples) -> Callable[..., Any] | None:
        return regression_loss(cfg.task_options.loss, cfg.task_options.huber_delta)

    def metric_function(self, cfg: TrainConfig, examples: Examples) -> Callable[[Any], dict[str, float]]:
        mean, std = examples.meta["mean"], examples.meta["std"]

        def compute(pred: Any) -> dict[str, float]:
            import numpy as np

            y_hat = logits_of(pred).reshape(-1, len(mean)) * np.asarray(std) + np.asarray(mean)
            y = np.asarray(pred.label_ids, dtype=float).reshape(-1, len(mean)) * np.asarray(std) + np.asarray(mean)
            return regression_metrics(y_hat, y)

        return compute

    def finish_model(self, model: Any, cfg: TrainConfig, examples: Examples) -> None:
        fold_scaling(model, examples.meta)

    def describe_split(self, rows: list[dict[str, Any]], examples: Examples) -> dict[str, Any]:
        import numpy as np

        if not rows:
            return {}
        y = np.asarray([r["target"] for r in rows], dtype=float)
        return {
            "targets": {
                c: {
                    "mean": round(float(y[:, j].mean()), 6),
                    "std": round(float(y[:, j].std()), 6),
                    "min": float(y[:, j].min()),
                    "max": float(y[:, j].max()),
                }
                for j, c in enumerate(examples.meta["targets"])
            },
            **(
                {"standardized_by": {"mean": examples.meta["mean"], "std": examples.meta["std"]}}
                if examples.meta.get("standardize")
                else {}
            ),
        }

    def describe_lines(self, info: dict[str, Any]) -> list[str]:
        lines = [
            f"target {c}: mean {t['mean']:.4g} · std {t['std']:.4g} · min {t['min']:.4g} · max {t['max']:.4g}"
            for c, t in info.get("targets", {}).items()
        ]
        if "standardized_by" in info:
            lines.append("trained on standardised targets (train mean and std above); metrics in the data's units")
        return lines

    def show_row(self, row: dict[str, Any], labels: list[str]) -> str | None:
        text = row["text"] if "text_pair" not in row else f"{row['text']} || {row['text_pair']}"
        text = text if len(text) <= 80 else text[:77] + "..."
        return f"{text!r} ({', '.join(f'{v:g}' for v in row['target'])})"


def regression_loss(kind: str, delta: float) -> Callable[..., Any]:
    """A Trainer `compute_loss_func`: MSE or Huber while training, MSE in evaluation (so `eval_loss` compares
    across trials whatever loss each trained with). Mean over every target value of the batch."""
    import torch

    def loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        logits = logits.float().reshape(labels.shape)
        labels = labels.float()
        if not torch.is_grad_enabled() or kind == "mse":
            total = torch.nn.functional.mse_loss(logits, labels, reduction="sum")
        else:
            total = torch.nn.functional.huber_loss(logits, labels, reduction="sum", delta=delta)
        if not torch.is_grad_enabled():
            return total / labels.numel()
        count = num_items_in_batch if num_items_in_batch is not None else labels.numel()
        return total / count

    return loss


def _ranks(x: Any) -> Any:
    """Ranks from 1, ties given their average rank (as scipy.stats.rankdata)."""
    import numpy as np

    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts = np.r_[True, sorted_x[1:] != sorted_x[:-1]]
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    ends = np.r_[first[1:], len(x)]
    avg = (first + ends - 1) / 2 + 1
    out = np.empty(len(x))
    out[order] = avg[group]
    return out


def _pearson(a: Any, b: Any) -> float:
    import numpy as np

    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def regression_metrics(y_hat: Any, y: Any) -> dict[str, float]:
    """rmse, mae, r2, pearson and spearman of predictions against targets (rows x targets), each the mean over
    the target columns. A constant prediction or target has pearson and spearman 0 (undefined), r2 as defined."""
    import numpy as np

    err = y_hat - y
    out = {"rmse": 0.0, "mae": 0.0, "r2": 0.0, "pearson": 0.0, "spearman": 0.0}
    k = y.shape[1]
    for j in range(k):
        e, t, p = err[:, j], y[:, j], y_hat[:, j]
        out["rmse"] += float(np.sqrt(np.mean(e * e))) / k
        out["mae"] += float(np.mean(np.abs(e))) / k
        ss_tot = float(((t - t.mean()) ** 2).sum())
        out["r2"] += (1.0 - float((e * e).sum()) / ss_tot if ss_tot > 0 else 0.0) / k
        out["pearson"] += _pearson(p, t) / k
        out["spearman"] += _pearson(_ranks(p), _ranks(t)) / k
    return out


def fold_scaling(model: Any, meta: dict[str, Any]) -> None:
    """Fold standardisation into the head: W' = std W, b' = std b + mean, so the model outputs data units.
    Every linear head layer with one output per target is folded (LoRA keeps the frozen original beside the
    trained copy; both are folded), and the scale is recorded in the model config (`sftune_target_scaling`)."""
    import torch

    if not meta.get("standardize"):
        return
    std = torch.tensor(meta["std"], dtype=torch.float32)
    mean = torch.tensor(meta["mean"], dtype=torch.float32)
    with torch.no_grad():
        for name, module in model.named_modules():
            last = name.rsplit(".", 1)[-1]
            if not isinstance(module, torch.nn.Linear) or module.out_features != len(meta["std"]):
                continue
            if not any(part in name for part in ("classifier", "score", "out_proj")) or "lora_" in last:
                continue
            module.weight.mul_(std.to(module.weight.device)[:, None])
            if module.bias is not None:
                module.bias.mul_(std.to(module.bias.device)).add_(mean.to(module.bias.device))
    model.config.sftune_target_scaling = {"mean": meta["mean"], "std": meta["std"], "folded_into_head": True}
