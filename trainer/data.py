"""Reading the examples of a run: files to rows, held-out splits and caps; the task checks and converts the rows."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.config import TrainConfig
from trainer.schema import ConfigError, Problem, describe
from trainer.tasks import get_task

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
                            raise ConfigError(
                                Problem(source, key, f"'{path}' line {n} is not valid JSON: {exc.msg}")
                            ) from None
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
                # column-oriented
                obj = [dict(zip(cols, vals, strict=True)) for vals in zip(*obj.values(), strict=False)]
            rows = obj
        elif suffix == ".csv":
            import pandas as pd

            rows = pd.read_csv(p).to_dict("records")
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(p).to_pylist()
        else:
            raise ConfigError(
                Problem(
                    source,
                    key,
                    f"'{path}': expected a {', '.join(SUFFIXES)} file or a "
                    f"`datasets` save_to_disk folder, found a '{suffix or 'no'}' suffix",
                )
            )
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
        raise ConfigError(
            Problem(source, key, f"'{p}' is a folder but not a `datasets` save_to_disk folder ({type(exc).__name__})")
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        raise ConfigError(
            Problem(
                source,
                key,
                f"'{p}' holds several splits ({', '.join(ds)}); point at one "
                f"split's folder, e.g. '{p / next(iter(ds))}'",
            )
        )
    return ds.to_list()


def columns(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for r in rows[:100]:
        seen.update(dict.fromkeys(r))
    return list(seen)


@dataclass
class Examples:
    """The checked examples of a run, before tokenization."""

    task: str
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    labels: list[str] = field(default_factory=list)
    """Class names in id order (a task with classes; else empty)."""
    sft_format: str = ""
    """SFT: which columns the pairs came from (prompt_response, instruction or messages)."""
    test: list[dict[str, Any]] = field(default_factory=list)
    """The held-out test split (empty when the config has none); no trial evaluates on it."""
    paths: dict[str, str] = field(default_factory=dict)
    """Where each split was read from: a file, or 'held out of <train file>'."""
    options: dict[str, Any] = field(default_factory=dict)
    """Settings of the config that the task's `tokenize` needs (sft: the chat template, train_on_prompt);
    a task whose `load_examples` sets them receives them as `tokenize(..., options=)`."""
    meta: dict[str, Any] = field(default_factory=dict)
    """What a task learned from the data and its run needs (regression: target columns, mean and std)."""

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


def _hold_out(
    rows: list[dict[str, Any]], fraction: float, seed: int, what: str, key: str, path: str, source: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split a seeded `fraction` of `rows` off: (kept, held out), both in file order."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_out = max(1, math.floor(len(rows) * fraction))
    if len(rows) - n_out < 1:
        raise ConfigError(
            Problem(source, key, f"'{path}' has {len(rows)} rows: too few to hold out a {what} split; give data.{what}")
        )
    out_idx = set(order[:n_out])
    return ([r for i, r in enumerate(rows) if i not in out_idx], [r for i, r in enumerate(rows) if i in out_idx])


def load_examples(cfg: TrainConfig, source: str = "") -> Examples:
    """Read, split, cap and check the data of `cfg`; raise ConfigError listing every problem.

    A test split (`data.test`, or `data.test_fraction` of train) is taken first, then validation
    from what is left, so no row is in two splits because of the split itself.
    """
    d = cfg.data
    seed = d.split_seed if d.split_seed is not None else cfg.train.seed
    task = get_task(cfg.task, source)
    train = task.read_split(cfg, d.train, "data.train", source)
    paths = {"train": d.train}
    test: list[dict[str, Any]] = []
    if d.test:
        test = task.read_split(cfg, d.test, "data.test", source)
        paths["test"] = d.test
    elif d.test_fraction:
        train, test = _hold_out(train, d.test_fraction, seed + 1_000_003, "test", "data.test_fraction", d.train, source)
        paths["test"] = f"held out of {d.train}"
    if d.validation:
        validation = task.read_split(cfg, d.validation, "data.validation", source)
        paths["validation"] = d.validation
    else:
        train, validation = _hold_out(train, d.validation_fraction, seed, "validation", "data.train", d.train, source)
        paths["validation"] = f"held out of {d.train}"
    train = _cap(train, d.max_train_samples, cfg.train.seed)
    validation = _cap(validation, d.max_eval_samples, cfg.train.seed)
    splits = {"train": train, "validation": validation, **({"test": test} if test else {})}
    examples = task.load_examples(cfg, splits, paths, source)
    examples.paths = paths
    return examples
