"""Token classification: a list of words with one tag each (BIO or plain); entity P/R/F1 and token accuracy."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from trainer.data import Examples
from trainer.schema import ConfigError, Problem, describe
from trainer.tasks._base import Task
from trainer.tasks._common import check_columns, logits_of

if TYPE_CHECKING:
    from trainer.config import TrainConfig


class TokenClassification(Task):
    """`task: token-classification`: a tag per word; the first sub-word of a word carries its tag, the rest and
    the special tokens are masked (-100) from the loss and the metrics."""

    name = "token-classification"
    metrics = ("entity_f1", "entity_precision", "entity_recall", "accuracy", "eval_loss")
    directions: ClassVar[Mapping[str, str]] = {
        "entity_f1": "maximize",
        "entity_precision": "maximize",
        "entity_recall": "maximize",
        "accuracy": "maximize",
        "eval_loss": "minimize",
    }
    default_objective = "entity_f1"
    peft_task_type = "TOKEN_CLS"
    model_mapping = "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING"

    def load_examples(
        self, cfg: TrainConfig, splits: dict[str, list[dict[str, Any]]], paths: dict[str, str], source: str
    ) -> Examples:
        o, d = cfg.task_options, cfg.data
        problems: list[Problem] = []
        for split, rows in splits.items():
            path = paths[split]
            check_columns(
                rows,
                [("task_options.tokens_column", o.tokens_column), ("task_options.tags_column", o.tags_column)],
                split,
                path,
                source,
                problems,
            )
            for i, r in enumerate(rows):
                words, tags = r.get(o.tokens_column, []), r.get(o.tags_column, [])
                where = f"{split} row {i + 1} of '{path}'"
                if not isinstance(words, list) or not all(isinstance(w, str) and w for w in words):
                    problems.append(
                        Problem(
                            source,
                            "task_options.tokens_column",
                            f"{where}: column "
                            f"'{o.tokens_column}' expected a list of non-empty words, found "
                            f"{describe(words)}",
                        )
                    )
                elif not isinstance(tags, list) or not all(
                    isinstance(t, (str, int)) and not isinstance(t, bool) for t in tags
                ):
                    problems.append(
                        Problem(
                            source,
                            "task_options.tags_column",
                            f"{where}: column "
                            f"'{o.tags_column}' expected a list of tag names or ids, found "
                            f"{describe(tags)}",
                        )
                    )
                elif len(words) != len(tags):
                    problems.append(
                        Problem(
                            source,
                            "task_options.tags_column",
                            f"{where}: expected one tag per "
                            f"word, found {len(words)} words in '{o.tokens_column}' and {len(tags)} "
                            f"tags in '{o.tags_column}'",
                        )
                    )
                else:
                    continue
                break
        if problems:
            raise ConfigError(problems)
        values = {t for r in splits["train"] for t in r[o.tags_column]}
        if d.labels is not None:
            names = list(d.labels)
        elif all(isinstance(t, str) for t in values):
            names = sorted(values, key=lambda t: (t != "O", t[2:] if o.tag_scheme == "bio" else t, t))
        elif all(isinstance(t, int) for t in values):
            names = [str(i) for i in range(max(values) + 1)]
        else:
            raise ConfigError(
                Problem(
                    source,
                    "task_options.tags_column",
                    f"train tags in '{paths['train']}' mix integer ids and names; use one kind",
                )
            )
        if o.tag_scheme == "bio":
            bad = [n for n in names if n != "O" and not n.startswith(("B-", "I-"))]
            if bad:
                raise ConfigError(
                    Problem(
                        source,
                        "task_options.tag_scheme",
                        f"expected BIO tags (O, B-X, I-X) in "
                        f"'{paths['train']}', found {bad[0]!r}; set task_options.tag_scheme: "
                        "plain for tags without B-/I-",
                    )
                )
        index = {n: i for i, n in enumerate(names)}

        def convert(rows: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
            out = []
            for i, r in enumerate(rows):
                ids = []
                for t in r[o.tags_column]:
                    j = index.get(t) if isinstance(t, str) else t
                    if j is None or not 0 <= j < len(names):
                        raise ConfigError(
                            Problem(
                                source,
                                "task_options.tags_column",
                                f"{split} row {i + 1} of "
                                f"'{paths[split]}': tag {t!r} is not among the train tags {names}",
                            )
                        )
                    ids.append(j)
                out.append({"tokens": list(r[o.tokens_column]), "tag_ids": ids})
            return out

        out = {split: convert(rows, split) for split, rows in splits.items()}
        return Examples(
            task=cfg.task,
            train=out["train"],
            validation=out["validation"],
            labels=names,
            test=out.get("test", []),
            meta={"tag_scheme": o.tag_scheme},
        )

    def label_counts(self, rows: list[dict[str, Any]], examples: Examples) -> list[int] | None:
        """Rows in which each tag occurs."""
        counts = [0] * len(examples.labels)
        for r in rows:
            for j in set(r["tag_ids"]):
                counts[j] += 1
        return counts

    def tokenize(
        self, rows: list[dict[str, Any]], tokenizer: Any, max_length: int
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        from trainer._tokenize import length_stats, quiet, unknown_tokens

        if not rows:
            return [], {"rows": 0}
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(
                Problem(
                    "",
                    "model",
                    "token-classification needs a fast tokenizer (tokenizer.json) "
                    "to map sub-words to words; this model's tokenizer is a slow one",
                )
            )
        words = [r["tokens"] for r in rows]
        full = quiet(lambda: tokenizer(words, is_split_into_words=True, truncation=False))
        enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        out, cut_words = [], 0
        for i, r in enumerate(rows):
            labels, seen = [], set()
            for w in enc.word_ids(i):
                if w is None or w in seen:
                    labels.append(-100)
                else:
                    seen.add(w)
                    labels.append(r["tag_ids"][w])
            cut_words += len(r["tokens"]) - len(seen)
            out.append({**{k: enc[k][i] for k in keys}, "labels": labels})
        stats = length_stats([len(ids) for ids in full["input_ids"]], max_length)
        stats["truncated"] = sum(1 for ids in full["input_ids"] if len(ids) > max_length)
        stats["words_cut"] = cut_words
        stats["unknown_tokens"], stats["tokens"] = unknown_tokens(enc["input_ids"], tokenizer)
        stats["empty_texts"] = sum(1 for r in rows if not r["tokens"])
        return out, stats

    def load_model(self, location: str, labels: list[str], **options: Any) -> Any:
        from transformers import AutoModelForTokenClassification

        return AutoModelForTokenClassification.from_pretrained(
            location,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={n: i for i, n in enumerate(labels)},
            ignore_mismatched_sizes=True,
            **options,
        )

    def modules_to_save(self, model: Any) -> list[str] | None:
        names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        return [n for n in ("classifier", "score") if n in names]

    def metric_function(self, cfg: TrainConfig, examples: Examples) -> Callable[[Any], dict[str, float]]:
        names, scheme = list(examples.labels), examples.meta.get("tag_scheme", "bio")

        def compute(pred: Any) -> dict[str, float]:
            import numpy as np

            guess = logits_of(pred).argmax(-1)
            gold = np.asarray(pred.label_ids)
            true_rows, pred_rows = [], []
            for g, p in zip(gold, guess, strict=True):
                mask = g != -100
                true_rows.append([names[t] for t in g[mask]])
                pred_rows.append([names[t] for t in p[mask]])
            return tagging_metrics(true_rows, pred_rows, scheme)

        return compute

    def warning_line(self, split: str, what: str, n: int, of: str, limit: str) -> str | None:
        if what == "truncated":
            return f"{split}: {n}{of} rows are longer than{limit} tokens: their last words are cut (and not scored)"
        return None

    def describe_split(self, rows: list[dict[str, Any]], examples: Examples) -> dict[str, Any]:
        names, scheme = examples.labels, examples.meta.get("tag_scheme", "bio")
        per_type: dict[str, int] = {}
        for r in rows:
            for kind, _, _ in entities([names[t] for t in r["tag_ids"]], scheme):
                per_type[kind] = per_type.get(kind, 0) + 1
        return {"words": sum(len(r["tokens"]) for r in rows), "entities": dict(sorted(per_type.items()))}

    def describe_lines(self, info: dict[str, Any]) -> list[str]:
        if not info:
            return []
        ents = ", ".join(f"{k} {v}" for k, v in info["entities"].items()) or "none"
        return [f"words: {info['words']:,} · entities: {ents}"]

    def show_row(self, row: dict[str, Any], labels: list[str]) -> str | None:
        text = " ".join(row["tokens"])
        return repr(text if len(text) <= 80 else text[:77] + "...")


def entities(tags: list[str], scheme: str = "bio") -> list[tuple[str, int, int]]:
    """(type, start, end) of each entity in one row's tags, by seqeval's default (conlleval) rules: B-X starts an
    entity; I-X continues one of type X, or starts one after O or another type; O ends it. `plain`: a run of the
    same tag other than O is one entity."""
    out: list[tuple[str, int, int]] = []
    kind: str | None = None
    start = 0
    for i, tag in enumerate([*tags, "O"]):
        if tag == "O":
            prefix, t = "O", None
        elif scheme == "plain":
            prefix, t = "I", tag
        else:
            prefix, t = tag[:1], tag[2:]
        if kind is not None and (prefix in ("O", "B") or t != kind):
            out.append((kind, start, i))
            kind = None
        if prefix == "B" or (prefix == "I" and kind is None):
            kind, start = t, i
    return out


def tagging_metrics(true_rows: list[list[str]], pred_rows: list[list[str]], scheme: str = "bio") -> dict[str, float]:
    """Entity precision, recall and F1 (micro over all rows, an entity right when its type and span are) and
    token accuracy over the tagged words. No predicted (or true) entity: that score is 0."""
    correct = n_pred = n_true = right = total = 0
    for gold, guess in zip(true_rows, pred_rows, strict=True):
        g, p = set(entities(gold, scheme)), set(entities(guess, scheme))
        correct += len(g & p)
        n_pred += len(p)
        n_true += len(g)
        right += sum(a == b for a, b in zip(gold, guess, strict=True))
        total += len(gold)
    precision = correct / n_pred if n_pred else 0.0
    recall = correct / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "entity_f1": f1,
        "entity_precision": precision,
        "entity_recall": recall,
        "accuracy": right / total if total else 0.0,
    }
