"""What a run's data looks like before any training: sizes, labels, empty and duplicate rows, leakage, lengths."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Any

from trainer import Prepared, TrainConfig, describe_warnings, prepare
from trainer.tasks import get_task

RARE_SHARE = 0.05
"""A class under this share of a split is called rare."""
IMBALANCE_RATIO = 3.0
"""Largest over smallest train class at or above this: recommend balanced class weights and f1_macro."""
EXAMPLES = 3


def _key(row: dict[str, Any]) -> str:
    """What makes two examples the same: the input text(s) (classification), or the whole pair (sft)."""
    if "text" in row:
        return row["text"] if "text_pair" not in row else json.dumps([row["text"], row["text_pair"]])
    return json.dumps(row, sort_keys=True, ensure_ascii=False)


def _show(row: dict[str, Any], labels: list[str], task: Any = None) -> str:
    own = task.show_row(row, labels) if task is not None else None
    if own is not None:
        return own
    if "text" in row:
        text = row["text"] if "text_pair" not in row else f"{row['text']} || {row['text_pair']}"
        out = text if len(text) <= 80 else text[:77] + "..."
        return f"{out!r} ({labels[row['label']]})" if labels and "label" in row else repr(out)
    if "messages" in row:
        text = row["messages"][-1]["content"]
    elif "prompt" in row:
        text = f"{row['prompt']} -> {row['response']}"
    else:
        text = json.dumps(row, ensure_ascii=False)
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _duplicates(rows: list[dict[str, Any]], labels: list[str], task: Any = None) -> dict[str, Any]:
    """Rows that repeat an earlier row of the same split, and texts given with more than one label."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        groups[_key(r)].append(i)
    repeated = [idx for idx in groups.values() if len(idx) > 1]
    out: dict[str, Any] = {
        "rows": sum(len(idx) - 1 for idx in repeated),
        "texts": len(repeated),
        "examples": [_show(rows[idx[0]], labels, task) + f" x{len(idx)}" for idx in repeated[:EXAMPLES]],
    }
    if rows and "label" in rows[0]:
        conflicting = [idx for idx in repeated if len({rows[i]["label"] for i in idx}) > 1]
        out["conflicting_labels"] = len(conflicting)
        out["conflicting_examples"] = [
            repr(rows[idx[0]]["text"][:80])
            + " labelled "
            + " and ".join(sorted({labels[rows[i]["label"]] for i in idx}))
            for idx in conflicting[:EXAMPLES]
        ]
    return out


def _leak(rows: list[dict[str, Any]], seen: set[str], labels: list[str], task: Any = None) -> dict[str, Any]:
    hits = [r for r in rows if _key(r) in seen]
    return {"rows": len(hits), "examples": [_show(r, labels, task) for r in hits[:EXAMPLES]]}


def data_report(cfg: TrainConfig, source: str = "", prepared: Prepared | None = None) -> dict[str, Any]:
    """The report of `cfg`'s data as it will be trained on (after splits and caps); JSON-serialisable.

    `prepared`, when given (a study has it already), is used as is, so nothing is tokenized twice.
    Raises ConfigError for data or a model that a run would reject.
    """
    prep = prepared if prepared is not None else prepare(cfg, source)
    ex = prep.examples
    task = get_task(ex.task)
    labels = ex.labels
    splits = ex.splits()
    report: dict[str, Any] = {
        "task": ex.task,
        "model": cfg.model,
        "max_length": cfg.train.max_length,
        "class_weights": cfg.train.class_weights,
        "splits": {},
        "leakage": {},
        "has_test": bool(ex.test),
        "warnings": [],
        "recommendations": [],
    }
    warnings: list[str] = report["warnings"]
    for split, rows in splits.items():
        stats = prep.stats.get(split, {})
        info: dict[str, Any] = {"rows": len(rows), "from": ex.paths.get(split, "")}
        per_class = task.label_counts(rows, ex) if labels else None
        if per_class is not None:
            counts = Counter(dict(enumerate(per_class)))
            info["labels"] = {name: counts.get(i, 0) for i, name in enumerate(labels)}
            for i, name in enumerate(labels):
                share = counts.get(i, 0) / len(rows) if rows else 0.0
                if counts.get(i, 0) == 0:
                    warnings.append(f"{split}: class {name!r} is absent")
                elif share < RARE_SHARE:
                    warnings.append(f"{split}: class {name!r} is {share:.1%} of the rows ({counts[i]} of {len(rows)})")
        info["empty"] = int(stats.get("empty_texts", 0))
        info["duplicates"] = _duplicates(rows, labels, task)
        info["tokens"] = {
            k.removeprefix("length_"): v for k, v in stats.items() if k.startswith("length_") or k == "over_max_length"
        }
        info["truncated"] = int(stats.get("truncated", 0))
        for count in task.report_counts:
            info[count] = int(stats.get(count, 0))
        if stats.get("tokens"):
            info["unknown_token_share"] = round(stats.get("unknown_tokens", 0) / stats["tokens"], 4)
        own = task.describe_split(rows, ex)
        if own:
            info["task"] = own
        report["splits"][split] = info
        dup = info["duplicates"]
        if dup["rows"]:
            warnings.append(
                f"{split}: {dup['rows']} rows repeat an earlier row of {split} "
                f"({dup['texts']} distinct texts), e.g. {dup['examples'][0]}"
            )
        if dup.get("conflicting_labels"):
            warnings.append(
                f"{split}: {dup['conflicting_labels']} texts appear with different labels, "
                f"e.g. {dup['conflicting_examples'][0]}"
            )
    keys = {split: {_key(r) for r in rows} for split, rows in splits.items()}
    pairs = [("validation", "train")] + ([("test", "train"), ("test", "validation")] if "test" in splits else [])
    for split, other in pairs:
        leak = _leak(splits[split], keys[other], labels, task)
        report["leakage"][f"{split}_in_{other}"] = leak
        if leak["rows"]:
            warnings.append(
                f"leakage: {leak['rows']} of {len(splits[split])} {split} rows also appear in {other}, "
                f"e.g. {leak['examples'][0]}"
            )
    counted = prep.warnings
    report["warning_counts"] = counted
    said_per_class = (".absent_classes", ".rare_classes")  # said above, class by class
    warnings.extend(
        describe_warnings(
            {k: v for k, v in counted.items() if not k.endswith(said_per_class)},
            prep.stats,
            cfg.train.max_length,
            ex.task,
        )
    )
    if "labels" in report["splits"]["train"] and task.class_weights:
        train_counts = [c for c in report["splits"]["train"]["labels"].values() if c]
        ratio = max(train_counts) / min(train_counts) if train_counts else 1.0
        report["imbalance_ratio"] = round(ratio, 2)
        smallest = min(train_counts) / len(ex.train) if train_counts and ex.train else 1.0
        if ratio >= IMBALANCE_RATIO or smallest < RARE_SHARE:
            rec = (
                f"train classes are imbalanced (largest / smallest = {ratio:.1f}): "
                + (
                    "train.class_weights: balanced is set"
                    if cfg.train.class_weights == "balanced"
                    else "set train.class_weights: balanced (or search it)"
                )
                + " and use objective f1_macro, which accuracy hides a minority class from"
            )
            report["recommendations"].append(rec)
    if not ex.test:
        report["recommendations"].append(
            "no test split: the best trial's validation score is optimistic (it was "
            "chosen on that set); set data.test or data.test_fraction to measure it"
        )
    return report


def short_form(report: dict[str, Any]) -> str:
    """Two to four lines for a study's header: sizes and labels, lengths, then what needs attention."""
    splits = report["splits"]
    sizes = " · ".join(f"{name} {info['rows']:,}" for name, info in splits.items())
    line1 = f"  data: {sizes} rows"
    train = splits["train"]
    if "labels" in train and train["rows"]:
        shares = " / ".join(f"{name} {n / train['rows']:.1%}" for name, n in train["labels"].items())
        line1 += f" · train labels {shares}"
    tok = train.get("tokens") or {}
    line2 = (
        f"  tokens (train): p50 {tok.get('p50', '-')} · p90 {tok.get('p90', '-')} · max {tok.get('max', '-')} "
        f"of max_length {report['max_length']} · truncated "
        + ", ".join(f"{name} {info['truncated']}" for name, info in splits.items())
    )
    for count in get_task(report["task"]).report_counts:
        line2 += f" · {count} " + ", ".join(f"{name} {info.get(count, 0)}" for name, info in splits.items())
    lines = [line1, line2]
    if report["warnings"]:
        more = f" (+{len(report['warnings']) - 2} more: sftune data)" if len(report["warnings"]) > 2 else ""
        lines.append("  warnings: " + "; ".join(w.split(", e.g. ")[0] for w in report["warnings"][:2]) + more)
    if not report["has_test"]:
        lines.append("  no test split: the best validation score is optimistic (set data.test or data.test_fraction)")
    return "\n".join(lines)


def render(report: dict[str, Any]) -> str:
    """The full report for people (`sftune data`)."""
    task = get_task(report["task"])
    lines = [f"data of a {report['task']} run · model {report['model']} · max_length {report['max_length']}"]
    for name, info in report["splits"].items():
        lines.append(f"{name}: {info['rows']:,} rows ({info['from']})")
        if "labels" in info:
            total = info["rows"] or 1
            lines.append("  labels: " + ", ".join(f"{k} {v} ({v / total:.1%})" for k, v in info["labels"].items()))
        tok = info["tokens"]
        if tok:
            over = tok["over_max_length"]
            lines.append(
                f"  tokens: p50 {tok['p50']} · p90 {tok['p90']} · p99 {tok['p99']} · max {tok['max']}; "
                f"{over} rows over max_length {report['max_length']}" + (task.over_length_words(info) if over else "")
            )
        lines += [f"  {line}" for line in task.describe_lines(info.get("task") or {})]
        dup = info["duplicates"]
        lines.append(
            f"  empty: {info['empty']} · duplicate rows: {dup['rows']}"
            + (f" · texts with conflicting labels: {dup['conflicting_labels']}" if "conflicting_labels" in dup else "")
        )
    for name, leak in report["leakage"].items():
        split, other = name.split("_in_")
        lines.append(
            f"leakage {split} -> {other}: {leak['rows']} rows"
            + (f", e.g. {'; '.join(leak['examples'])}" if leak["examples"] else "")
        )
    if report["warnings"]:
        lines.append("warnings:")
        lines += [f"  - {w}" for w in report["warnings"]]
    if report["recommendations"]:
        lines.append("recommendations:")
        lines += [f"  - {r}" for r in report["recommendations"]]
    return "\n".join(lines)
