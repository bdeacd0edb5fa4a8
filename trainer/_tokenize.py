"""Turning checked examples into token ids, and batches of them into padded tensors."""

from __future__ import annotations

from typing import Any

from trainer.data import Examples
from trainer.schema import ConfigError, Problem
from trainer.tasks import get_task

UNKNOWN_ERROR_SHARE = 0.5
"""A train split whose tokens are mostly the unknown token is an error: the tokenizer does not fit."""
UNKNOWN_WARN_SHARE = 0.05
RARE_CLASS_SHARE = 0.05
"""A class under this share of a split is counted as rare."""


def length_stats(lengths: list[int], max_length: int) -> dict[str, Any]:
    """Rows, token-length percentiles and the rows over max_length of one split (full, untruncated lengths)."""
    import numpy as np

    if not lengths:
        return {"rows": 0}
    arr = np.asarray(lengths)
    p50, p90, p99 = (int(v) for v in np.percentile(arr, [50, 90, 99], method="higher"))
    return {
        "rows": len(lengths),
        "length_p50": p50,
        "length_p90": p90,
        "length_p99": p99,
        "length_max": int(arr.max()),
        "over_max_length": int((arr > max_length).sum()),
    }


def unknown_tokens(ids: list[list[int]], tokenizer: Any) -> tuple[int, int]:
    """(unknown tokens, tokens that are not special) over token id lists; list.count keeps it C-fast."""
    unk = tokenizer.unk_token_id
    special = [t for t in set(tokenizer.all_special_ids) if t != unk]
    total = sum(map(len, ids))
    for t in special:
        total -= sum(seq.count(t) for seq in ids)
    unknown = sum(seq.count(unk) for seq in ids) if unk is not None else 0
    return unknown, total


def quiet(fn: Any) -> Any:
    """Run `fn` without transformers' 'sequence longer than the maximum' warning (we count those rows)."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        return fn()
    finally:
        logging.set_verbosity(level)


def tokenize(
    examples: Examples, tokenizer: Any, max_length: int, source: str = ""
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, Any]]]:
    """Every split of `examples` to token ids: ({split: rows}, {split: stats}).

    Raises ConfigError when a split is left empty or when the tokenizer maps most of train to its
    unknown token (a tokenizer that does not belong to this data or model).
    """
    task = get_task(examples.task, source)
    out: dict[str, list[dict[str, Any]]] = {}
    stats: dict[str, dict[str, Any]] = {}
    for split, rows in examples.splits().items():
        more = {"options": examples.options} if examples.options else {}
        try:
            out[split], stats[split] = task.tokenize(rows, tokenizer, max_length, **more)
        except ConfigError as exc:  # a row the task cannot tokenize: name the config and the split
            raise ConfigError(
                [
                    Problem(p.source or source, p.key, p.message if p.source else f"{split} data: {p.message}")
                    for p in exc.problems
                ]
            ) from None
        counts = task.label_counts(rows, examples)
        if counts is not None:
            stats[split]["label_counts"] = counts
        # Evaluation batches of similar lengths waste little on padding (about 1.7x faster on SST-2);
        # every metric is computed over the whole set, so the order does not change them.
        if split != "train":
            out[split].sort(key=lambda r: len(r.get("input_ids", ())))
    for split, rows in out.items():
        if not rows:
            raise ConfigError(
                Problem(
                    source,
                    "train.max_length",
                    f"every {split} response is longer than "
                    f"max_length={max_length} tokens, so every {split} row would be dropped",
                )
            )
    train = stats["train"]
    if train.get("tokens") and train["unknown_tokens"] / train["tokens"] > UNKNOWN_ERROR_SHARE:
        share = train["unknown_tokens"] / train["tokens"]
        raise ConfigError(
            Problem(
                source,
                "model",
                f"the tokenizer maps {share:.0%} of the train tokens to its "
                f"unknown token {tokenizer.unk_token!r} (vocabulary of {len(tokenizer)}): it does "
                "not fit this data; use the tokenizer files that belong to the model",
            )
        )
    return out, stats


def data_warnings(stats: dict[str, dict[str, Any]]) -> dict[str, int]:
    """The counted warnings of tokenized splits, as data: {'train.truncated': 12, ...} (non-zero only)."""
    out: dict[str, int] = {}
    for split, s in stats.items():
        for key in ("truncated", "dropped", "empty_texts"):
            if s.get(key):
                out[f"{split}.{key}"] = int(s[key])
        if s.get("tokens") and s.get("unknown_tokens", 0) / s["tokens"] > UNKNOWN_WARN_SHARE:
            out[f"{split}.unknown_tokens"] = int(s["unknown_tokens"])
        counts = s.get("label_counts") or []
        total = sum(counts)
        if counts and total:
            absent = sum(1 for c in counts if c == 0)
            rare = sum(1 for c in counts if 0 < c / total < RARE_CLASS_SHARE)
            if absent:
                out[f"{split}.absent_classes"] = absent
            if rare:
                out[f"{split}.rare_classes"] = rare
    return out


def describe_warnings(
    warnings: dict[str, int],
    stats: dict[str, dict[str, Any]] | None = None,
    max_length: int | None = None,
    task: str = "classification",
) -> list[str]:
    """One line per counted warning, in words (the task's own words where it has them)."""
    spec = get_task(task)
    lines = []
    for key, n in warnings.items():
        split, _, what = key.partition(".")
        rows = (stats or {}).get(split, {}).get("rows")
        of = f" of {rows}" if rows else ""
        limit = f" max_length={max_length}" if max_length else " max_length"
        own = spec.warning_line(split, what, n, of, limit)
        if own is not None:
            lines.append(own)
        elif what == "truncated":
            lines.append(f"{split}: {n}{of} texts are longer than{limit} tokens and are truncated")
        elif what == "dropped":
            lines.append(f"{split}: {n}{of} rows are dropped: their response alone is longer than{limit} tokens")
        elif what == "empty_texts":
            lines.append(f"{split}: {n}{of} rows have an empty text")
        elif what == "absent_classes":
            lines.append(f"{split}: {n} label classes have no rows")
        elif what == "rare_classes":
            lines.append(f"{split}: {n} label classes are under {RARE_CLASS_SHARE:.0%} of the rows")
        elif what == "unknown_tokens":
            tokens = (stats or {}).get(split, {}).get("tokens") or 0
            share = f" ({n / tokens:.0%} of its tokens)" if tokens else ""
            lines.append(f"{split}: {n} tokens are the tokenizer's unknown token{share}")
        else:
            lines.append(f"{split}: {what}: {n}")
    return lines


class PadCollator:
    """Pads input_ids, attention_mask, token_type_ids and labels (sequence labels with -100)."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        batch: dict[str, Any] = {}
        for key in features[0]:
            values = [f[key] for f in features]
            if isinstance(values[0], int):
                batch[key] = torch.tensor(values, dtype=torch.long)
                continue
            pad = {"input_ids": self.pad_token_id, "labels": -100}.get(key, 0)
            batch[key] = torch.tensor([list(v) + [pad] * (longest - len(v)) for v in values], dtype=torch.long)
        return batch
