"""Scores of generated text against references: exact match after answer extraction, ROUGE-L, chrF, yours.

Exact match compares extracted answers after normalising: surrounding whitespace removed, runs of
whitespace made one space, lower case; a number (the `gsm8k` and `last_number` extractions) also
loses its thousands separators, a leading `+` or `$` and trailing decimal zeros (`1,000.50` -> `1000.5`,
`72.0` -> `72`). A prediction whose answer cannot be extracted counts as wrong. ROUGE-L is the
F-measure of the longest common subsequence of words (Google's `rouge-score`, no stemming), averaged
over rows; chrF is sacrebleu's corpus chrF (0-100). All three are in [0, 1] but chrF.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BUILT_IN: dict[str, str] = {"exact_match": "maximize", "rouge_l": "maximize", "chrf": "maximize"}
"""The built-in generation metrics and their directions."""

EXTRACTIONS = ("whole", "gsm8k", "last_number", "regex:<pattern>")
_NUMBER = re.compile(r"[-+]?\$?\d[\d,]*(?:\.\d+)?")


def _number(text: str) -> str:
    text = text.strip().replace(",", "").lstrip("+").replace("$", "")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def _words(text: str) -> str:
    return " ".join(text.split()).lower()


def extract(text: str, how: str) -> str | None:
    """The answer in `text` by the `eval.extract` rule, normalised; None when there is none."""
    if how == "whole":
        return _words(text)
    if how == "gsm8k":
        if "####" not in text:
            return None
        answer = text.rsplit("####", 1)[1].strip().split("\n", 1)[0]
        found = _NUMBER.search(answer)
        return _number(found.group(0)) if found else (_words(answer) or None)
    if how == "last_number":
        numbers = _NUMBER.findall(text)
        return _number(numbers[-1]) if numbers else None
    if how.startswith("regex:"):
        found = re.search(how[len("regex:") :], text)
        if found is None:
            return None
        return _words(found.group(1) if found.groups() else found.group(0))
    raise ValueError(f"unknown extraction {how!r}")


def exact_match(predictions: Sequence[str], references: Sequence[str], how: str) -> float:
    hits = 0
    for p, r in zip(predictions, references, strict=True):
        got = extract(p, how)
        hits += got is not None and got == extract(r, how)
    return hits / len(references) if references else 0.0


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    values = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references, strict=True)]
    return sum(values) / len(values) if values else 0.0


def chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_chrf(list(predictions), [list(references)]).score)


def load_function(ref: str) -> Callable[..., Any]:
    """`module:function` or `file.py:function` imported (ImportError, OSError, AttributeError or ValueError
    say what is wrong). A file is loaded by its path, so a Ray worker on any node that sees it loads it too."""
    module_name, _, name = ref.rpartition(":")
    if not module_name or not name:
        raise ValueError(f"expected module:function or file.py:function, found {ref!r}")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise FileNotFoundError(f"no file {path}")
        spec = importlib.util.spec_from_file_location(f"sftune_metrics_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path} as Python")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    fn = getattr(module, name, None)
    if fn is None or not callable(fn):
        raise AttributeError(f"module {module_name!r} has no function {name!r}")
    return fn


def user_scores(
    fn: Callable[..., Any],
    predictions: list[str],
    references: list[str],
    rows: list[dict[str, Any]],
    names: Sequence[str],
) -> dict[str, float]:
    """Call the user's function; ValueError when it does not return a number for each declared name."""
    out = fn(predictions, references, rows)
    if not isinstance(out, dict):
        raise ValueError(f"expected a dict of metric name to number, found {type(out).__name__}")
    missing = [n for n in names if n not in out]
    extra = [n for n in out if n not in names]
    if missing or extra:
        raise ValueError(
            f"expected the metrics declared in eval.directions ({', '.join(names)}), found "
            f"{', '.join(map(str, out)) or 'none'}"
        )
    values = {}
    for name, value in out.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name}: expected a finite number, found {value!r}")
        values[name] = float(value)
    return values


def score(
    metrics: Sequence[str],
    how: str,
    predictions: list[str],
    references: list[str],
    rows: list[dict[str, Any]],
    function: Callable[..., Any] | None = None,
    declared: Sequence[str] = (),
) -> dict[str, float]:
    """Every asked metric over one evaluation's generations."""
    out: dict[str, float] = {}
    if "exact_match" in metrics:
        out["exact_match"] = exact_match(predictions, references, how)
    if "rouge_l" in metrics:
        out["rouge_l"] = rouge_l(predictions, references)
    if "chrf" in metrics:
        out["chrf"] = chrf(predictions, references)
    if function is not None:
        out.update(user_scores(function, predictions, references, rows, declared))
    return out
