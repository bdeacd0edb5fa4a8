"""Reading and checking the examples of a run: files to rows, rows to labelled or prompt/response pairs."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.schema import ConfigError, Problem, describe
from trainer.config import TrainConfig

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def read_rows(path: str, key: str, source: str) -> list[dict[str, Any]]:
    """Read a data file (or `datasets` save_to_disk folder) into a list of row mappings."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(Problem(source, key, f"data file '{path}' does not exist"))
    try:
        if p.is_dir():
            return _read_saved_dataset(p, key, source)
        suffix = p.suffix.lower()
        if suffix == ".jsonl":
            rows = []
            with p.open(encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except json.JSONDecodeError as exc:
                            raise ConfigError(Problem(source, key, f"'{path}' line {n} is not valid JSON: {exc.msg}"))
        elif suffix == ".json":
            with p.open(encoding="utf-8") as fh:
                try:
                    obj = json.load(fh)
                except json.JSONDecodeError:
                    fh.seek(0)  # JSON Lines saved as .json
                    obj = [json.loads(line) for line in fh if line.strip()]
            if isinstance(obj, dict) and len(obj) == 1 and isinstance(next(iter(obj.values())), list):
                obj = next(iter(obj.values()))  # {"data": [...]}
            elif isinstance(obj, dict) and obj and all(isinstance(v, list) for v in obj.values()):
                cols = list(obj)
                obj = [dict(zip(cols, vals)) for vals in zip(*obj.values())]  # column-oriented
            rows = obj
        elif suffix == ".csv":
            import pandas as pd

            rows = pd.read_csv(p).to_dict("records")
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(p).to_pylist()
        else:
            raise ConfigError(Problem(source, key, f"'{path}': expected a {', '.join(SUFFIXES)} file or a "
                                      f"`datasets` save_to_disk folder, found a '{suffix or 'no'}' suffix"))
    except ConfigError:
        raise
    except UnicodeDecodeError:
        raise ConfigError(Problem(source, key, f"'{path}' is not UTF-8 text")) from None
    except OSError as exc:
        raise ConfigError(Problem(source, key, f"cannot read '{path}': {exc.strerror or exc}")) from None
    except Exception as exc:  # noqa: BLE001 - any parser failure is a bad file
        raise ConfigError(Problem(source, key, f"cannot read '{path}': {type(exc).__name__}: {exc}")) from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ConfigError(Problem(source, key, f"'{path}': expected rows of objects, found {describe(rows)}"))
    if not rows:
        raise ConfigError(Problem(source, key, f"'{path}' has no rows"))
    return rows


def _read_saved_dataset(p: Path, key: str, source: str) -> list[dict[str, Any]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(Problem(source, key, f"'{p}' is a folder but not a `datasets` save_to_disk folder "
                                  f"({type(exc).__name__})")) from None
    if isinstance(ds, datasets.DatasetDict):
        raise ConfigError(Problem(source, key, f"'{p}' holds several splits ({', '.join(ds)}); point at one "
                                  f"split's folder, e.g. '{p / next(iter(ds))}'"))
    return ds.to_list()


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for r in rows[:100]:
        seen.update(dict.fromkeys(r))
    return list(seen)


def _is_label(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return v >= 0
    if isinstance(v, float):
        return v.is_integer() and v >= 0
    return isinstance(v, str) and v.strip() != ""


@dataclass
class Examples:
    """The checked examples of a run, before tokenization."""

    task: str
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    labels: list[str] = field(default_factory=list)
    """Classification: label names in id order."""
    sft_format: str = ""
    test: list[dict[str, Any]] = field(default_factory=list)
    """The held-out test split (empty when the config has none); no trial evaluates on it."""
    paths: dict[str, str] = field(default_factory=dict)
    """Where each split was read from: a file, or 'held out of <train file>'."""

    def splits(self) -> dict[str, list[dict[str, Any]]]:
        """train, validation and (when present) test, in that order."""
        out = {"train": self.train, "validation": self.validation}
        if self.test:
            out["test"] = self.test
        return out

    @property
    def num_labels(self) -> int:
        return len(self.labels)


def _cap(rows: list[dict[str, Any]], n: int | None, seed: int) -> list[dict[str, Any]]:
    if n is None or n >= len(rows):
        return rows
    idx = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in idx]


def _hold_out(rows: list[dict[str, Any]], fraction: float, seed: int, what: str, key: str, path: str,
              source: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split a seeded `fraction` of `rows` off: (kept, held out), both in file order."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_out = max(1, math.floor(len(rows) * fraction))
    if len(rows) - n_out < 1:
        raise ConfigError(Problem(source, key, f"'{path}' has {len(rows)} rows: too few to hold out a {what} "
                                  f"split; give data.{what}"))
    out_idx = set(order[:n_out])
    return ([r for i, r in enumerate(rows) if i not in out_idx], [r for i, r in enumerate(rows) if i in out_idx])


def load_examples(cfg: TrainConfig, source: str = "") -> Examples:
    """Read, split, cap and check the data of `cfg`; raise ConfigError listing every problem.

    A test split (`data.test`, or `data.test_fraction` of train) is taken first, then validation
    from what is left, so no row is in two splits because of the split itself.
    """
    d = cfg.data
    seed = d.split_seed if d.split_seed is not None else cfg.train.seed
    train = read_rows(d.train, "data.train", source)
    paths = {"train": d.train}
    test: list[dict[str, Any]] = []
    if d.test:
        test = read_rows(d.test, "data.test", source)
        paths["test"] = d.test
    elif d.test_fraction:
        train, test = _hold_out(train, d.test_fraction, seed + 1_000_003, "test", "data.test_fraction", d.train,
                                source)
        paths["test"] = f"held out of {d.train}"
    if d.validation:
        validation = read_rows(d.validation, "data.validation", source)
        paths["validation"] = d.validation
    else:
        train, validation = _hold_out(train, d.validation_fraction, seed, "validation", "data.train", d.train,
                                      source)
        paths["validation"] = f"held out of {d.train}"
    train = _cap(train, d.max_train_samples, cfg.train.seed)
    validation = _cap(validation, d.max_eval_samples, cfg.train.seed)
    splits = {"train": train, "validation": validation, **({"test": test} if test else {})}
    examples = (_classification(cfg, splits, paths, source) if cfg.task == "classification"
                else _sft(cfg, splits, paths, source))
    examples.paths = paths
    return examples


def _classification(cfg: TrainConfig, splits: dict[str, list], paths: dict[str, str], source: str) -> Examples:
    d = cfg.data
    problems: list[Problem] = []
    train = splits["train"]
    for split, rows in splits.items():
        path = paths[split]
        cols = _columns(rows)
        wanted = [("data.text_column", d.text_column), ("data.label_column", d.label_column)]
        if d.text_pair_column:
            wanted.append(("data.text_pair_column", d.text_pair_column))
        for key, col in wanted:
            missing = sum(1 for r in rows if col not in r)
            if missing == len(rows):
                problems.append(Problem(source, key, f"column '{col}' not found in {split} data '{path}' "
                                        f"(columns: {', '.join(cols)})"))
            elif missing:
                problems.append(Problem(source, key, f"column '{col}' is missing from {missing} of {len(rows)} "
                                        f"rows of {split} data '{path}'"))
        for i, r in enumerate(rows):
            for col in [d.text_column] + ([d.text_pair_column] if d.text_pair_column else []):
                if col in r and not isinstance(r[col], str):
                    problems.append(Problem(source, "data.text_column", f"{split} row {i + 1} of '{path}': column "
                                            f"'{col}' must be text, found {describe(r[col])}"))
                    break
            else:
                continue
            break
        bad = [r[d.label_column] for r in rows if d.label_column in r and not _is_label(r[d.label_column])]
        if bad:
            problems.append(Problem(source, "data.label_column", f"{split} labels in column '{d.label_column}' of "
                                    f"'{path}' must be integer ids >= 0 or names, found {describe(bad[0])}"
                                    f" ({len(bad)} such rows)"))
    if problems:
        raise ConfigError(problems)

    values = [r[d.label_column] for r in train]
    ints = all(not isinstance(v, str) for v in values)
    if ints:
        ids = {int(v) for v in values}
        n = max(ids) + 1
        if d.labels is not None:
            if len(d.labels) < n:
                raise ConfigError(Problem(source, "data.labels", f"{len(d.labels)} names given, but train has "
                                          f"label id {n - 1}"))
            names = list(d.labels)
        else:
            names = [str(i) for i in range(n)]
    else:
        if any(not isinstance(v, str) for v in values):
            raise ConfigError(Problem(source, "data.label_column", f"train labels in '{d.train}' mix integer ids "
                                      "and names; use one kind"))
        found = sorted(set(values))
        names = list(d.labels) if d.labels is not None else found
        unknown = [v for v in found if v not in names]
        if unknown:
            raise ConfigError(Problem(source, "data.labels", f"train label {unknown[0]!r} is not in data.labels "
                                      f"{names}"))
    if len(names) < 2:
        raise ConfigError(Problem(source, "data.label_column", f"train data '{d.train}' has a single label "
                                  f"({names[0]!r}); classification needs at least two"))
    index = {name: i for i, name in enumerate(names)}

    def to_id(v: Any, split: str, path: str) -> int:
        if isinstance(v, str):
            if v not in index:
                raise ConfigError(Problem(source, "data.label_column", f"{split} label {v!r} in '{path}' is not "
                                          f"among the train labels {names}"))
            return index[v]
        if int(v) >= len(names):
            raise ConfigError(Problem(source, "data.label_column", f"{split} label id {int(v)} in '{path}' is "
                                      f"outside the label set 0..{len(names) - 1}"))
        return int(v)

    def convert(rows: list, split: str, path: str) -> list[dict[str, Any]]:
        out = []
        for r in rows:
            ex = {"text": r[d.text_column], "label": to_id(r[d.label_column], split, path)}
            if d.text_pair_column:
                ex["text_pair"] = r[d.text_pair_column]
            out.append(ex)
        return out

    out = {split: convert(rows, split, paths[split]) for split, rows in splits.items()}
    return Examples(task="classification", train=out["train"], validation=out["validation"], labels=names,
                    test=out.get("test", []))


def _sft_format(cfg: TrainConfig, cols: list[str]) -> tuple[str, dict[str, str]]:
    d = cfg.data
    if d.prompt_column and d.response_column:
        return "prompt_response", {"prompt": d.prompt_column, "response": d.response_column}
    if d.messages_column:
        return "messages", {"messages": d.messages_column}
    if "prompt" in cols and ("response" in cols or "completion" in cols):
        return "prompt_response", {"prompt": "prompt", "response": "response" if "response" in cols else "completion"}
    if "instruction" in cols and "output" in cols:
        return "instruction", {"instruction": "instruction", "input": "input", "output": "output"}
    if "messages" in cols:
        return "messages", {"messages": "messages"}
    if "question" in cols and "answer" in cols:
        return "prompt_response", {"prompt": "question", "response": "answer"}
    return "", {}


def format_instruction(instruction: str, inp: str) -> str:
    if inp and inp.strip():
        return f"### Instruction:\n{instruction}\n\n### Input:\n{inp}\n\n### Response:\n"
    return f"### Instruction:\n{instruction}\n\n### Response:\n"


def _sft(cfg: TrainConfig, splits: dict[str, list], paths: dict[str, str], source: str) -> Examples:
    problems: list[Problem] = []
    out: dict[str, list] = {}
    fmt = ""
    for split, rows in splits.items():
        path = paths[split]
        cols = _columns(rows)
        fmt, names = _sft_format(cfg, cols)
        if not fmt:
            problems.append(Problem(source, "data", f"sft needs prompt and response columns in {split} data "
                                    f"'{path}': set data.prompt_column + data.response_column, or provide "
                                    f"instruction/input/output or messages columns; found columns: {', '.join(cols)}"))
            continue
        needed = [c for k, c in names.items() if k != "input"]
        missing = [c for c in needed if c not in cols]
        if missing:
            key = "data.messages_column" if fmt == "messages" else "data.prompt_column"
            problems.append(Problem(source, key, f"column '{missing[0]}' not found in {split} data '{path}' "
                                    f"(columns: {', '.join(cols)})"))
            continue
        pairs = []
        for i, r in enumerate(rows):
            try:
                pairs.append(_to_pair(fmt, names, r))
            except ValueError as exc:
                problems.append(Problem(source, "data", f"{split} row {i + 1} of '{path}': {exc}"))
                break
        out[split] = pairs
    if problems:
        raise ConfigError(problems)
    return Examples(task="sft", train=out["train"], validation=out["validation"], sft_format=fmt,
                    test=out.get("test", []))


def _to_pair(fmt: str, names: dict[str, str], r: dict[str, Any]) -> dict[str, Any]:
    if fmt == "prompt_response":
        p, q = r.get(names["prompt"]), r.get(names["response"])
        if not isinstance(p, str) or not isinstance(q, str):
            raise ValueError(f"prompt and response must be text, found {describe(p)} and {describe(q)}")
        return {"prompt": p, "response": q}
    if fmt == "instruction":
        ins, inp, o = r.get(names["instruction"]), r.get(names["input"]) or "", r.get(names["output"])
        if not isinstance(ins, str) or not isinstance(o, str) or not isinstance(inp, str):
            raise ValueError("instruction, input and output must be text")
        return {"prompt": format_instruction(ins, inp), "response": o}
    msgs = r.get(names["messages"])
    if (not isinstance(msgs, list) or not msgs
            or not all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs)):
        raise ValueError(f"messages must be a list of {{role, content}} objects, found {describe(msgs)}")
    if msgs[-1]["role"] != "assistant":
        raise ValueError("the last message must be the assistant's (it is the response trained on)")
    return {"messages": msgs}
