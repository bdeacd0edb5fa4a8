"""An `eval:` section checked before anything trains: its fields, its function, and the validation answers."""

from __future__ import annotations

import inspect
import re
from typing import TYPE_CHECKING, Any

from trainer.generation.scores import BUILT_IN, EXTRACTIONS, extract, load_function, user_scores
from trainer.schema import Problem, describe, did_you_mean

if TYPE_CHECKING:
    from trainer.config import EvalConfig, TrainConfig
    from trainer.tasks import Task


def generation_metrics(e: EvalConfig) -> dict[str, str]:
    """The metrics an `eval:` section adds to each evaluation, with their directions."""
    out = {m: BUILT_IN[m] for m in e.metrics if m in BUILT_IN}
    if e.function:
        out.update({name: str(d) for name, d in e.directions.items()})
    return out


def asks_generation(e: EvalConfig) -> bool:
    return bool(e.metrics or e.function)


def check_eval_config(cfg: TrainConfig, task: Task, source: str, problems: list[Problem]) -> None:
    """Rules on `eval:` that need no data (types are already checked)."""
    e = cfg.eval

    def need(cond: bool, key: str, message: str) -> None:
        if not cond:
            problems.append(Problem(source, key, message))

    need(e.max_new_tokens >= 1, "eval.max_new_tokens", f"must be >= 1, found {e.max_new_tokens}")
    need(e.every >= 1, "eval.every", f"must be >= 1, found {e.every}")
    need(e.batch_size >= 1, "eval.batch_size", f"must be >= 1, found {e.batch_size}")
    need(e.samples is None or e.samples >= 1, "eval.samples", f"must be >= 1 (or null: all), found {e.samples}")
    need(e.show >= 0, "eval.show", f"must be >= 0, found {e.show}")
    if not asks_generation(e):
        need(
            not e.directions,
            "eval.directions",
            "directions are those of eval.function's metrics, but no eval.function is given",
        )
        return
    if not getattr(task, "generates", False):
        key = "eval.metrics" if e.metrics else "eval.function"
        problems.append(
            Problem(
                source,
                key,
                f"generation metrics need a task whose model writes text (sft); task "
                f"{cfg.task} does not generate: remove `eval:` or use task: sft",
            )
        )
        return
    for name in e.metrics:
        need(
            name in BUILT_IN,
            "eval.metrics",
            f"expected metrics among {', '.join(BUILT_IN)}, found {name!r}"
            f"{did_you_mean(name, BUILT_IN)} (a metric of your own goes in eval.function)",
        )
    if e.extract not in EXTRACTIONS[:-1]:
        if not e.extract.startswith("regex:"):
            problems.append(
                Problem(
                    source,
                    "eval.extract",
                    f"expected one of {', '.join(EXTRACTIONS)}, found "
                    f"{e.extract!r}{did_you_mean(e.extract, EXTRACTIONS[:-1])}",
                )
            )
        else:
            try:
                re.compile(e.extract[len("regex:") :])
            except re.error as exc:
                problems.append(Problem(source, "eval.extract", f"the regex does not compile: {exc}"))
    _check_directions(e, task, source, problems)


def _check_directions(e: EvalConfig, task: Task, source: str, problems: list[Problem]) -> None:
    if not e.function:
        if e.directions:
            problems.append(
                Problem(
                    source,
                    "eval.directions",
                    "directions are those of eval.function's metrics, but no eval.function is given",
                )
            )
        return
    if not e.directions:
        problems.append(
            Problem(
                source,
                "eval.directions",
                f"declare each metric {e.function} returns and its direction, e.g. {{my_score: maximize}}",
            )
        )
    taken = set(BUILT_IN) | set(task.metrics)
    for name, direction in e.directions.items():
        if direction not in ("maximize", "minimize"):
            problems.append(
                Problem(
                    source, f"eval.directions.{name}", f"expected maximize or minimize, found {describe(direction)}"
                )
            )
        if name in taken:
            problems.append(
                Problem(
                    source, f"eval.directions.{name}", f"{name!r} is a built-in metric's name; give your metric another"
                )
            )


def check_eval_function(cfg: TrainConfig, source: str, problems: list[Problem]) -> None:
    """`eval.function` imports (after paths are resolved) and takes (predictions, references, rows)."""
    e = cfg.eval
    if not e.function:
        return
    try:
        fn = load_function(e.function)
    except Exception as exc:  # noqa: BLE001 - any failure to import is the user's module
        problems.append(Problem(source, "eval.function", f"cannot import {e.function!r}: {type(exc).__name__}: {exc}"))
        return
    try:
        inspect.signature(fn).bind([], [], [])
    except TypeError:
        problems.append(
            Problem(
                source,
                "eval.function",
                f"{e.function} must take (predictions, references, rows); "
                f"found {getattr(fn, '__name__', 'it')}{inspect.signature(fn)}",
            )
        )
    except ValueError:  # a builtin without a signature: the call on the validation rows decides
        pass


def reference_of(row: dict[str, Any]) -> str:
    """What a row's generation is compared with: its response, or a chat's last assistant turn."""
    if "messages" in row:
        return str(row["messages"][-1]["content"])
    return str(row["response"])


def check_eval_data(cfg: TrainConfig, rows: list[dict[str, Any]], source: str) -> list[Problem]:
    """What `eval:` needs of the validation rows: answers the extraction finds, and a function that scores them."""
    e = cfg.eval
    if not asks_generation(e) or not rows:
        return []
    problems = []
    references = [reference_of(r) for r in rows]
    if "exact_match" in e.metrics and e.extract != "whole":
        failed = [i for i, ref in enumerate(references) if extract(ref, e.extract) is None]
        if failed:
            first = references[failed[0]]
            problems.append(
                Problem(
                    source,
                    "eval.extract",
                    f"{e.extract} finds no answer in {len(failed)} of "
                    f"{len(references)} validation references (the first: row {failed[0] + 1}, "
                    f"{first[:80]!r}); choose an extraction that matches them (whole, gsm8k, "
                    "last_number, regex:<pattern>)",
                )
            )
    if e.function:
        try:
            fn = load_function(e.function)
            few = min(2, len(rows))
            user_scores(fn, references[:few], references[:few], rows[:few], list(e.directions))
        except Exception as exc:  # noqa: BLE001 - whatever the user's function does wrong
            problems.append(
                Problem(
                    source,
                    "eval.function",
                    f"called on {min(2, len(rows))} validation rows "
                    f"(predictions = their references), {e.function} failed: "
                    f"{type(exc).__name__}: {exc}",
                )
            )
    return problems
