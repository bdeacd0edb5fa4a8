"""Warm start: a study's first trials are the best trials of earlier studies, re-run here.

`warm_start:` in the study file (or `sftune run --warm-start STUDY[@STORAGE]`) names earlier studies; the `top`
best COMPLETE trials of each whose params fit the current space are enqueued before the sampler proposes
anything, in rank order, each recorded on its trial as the user attribute `warm_start_of`.

What fits (see docs/study-file.md#warm-start):
- a value outside the current range, off its step, or not among the current choices: the trial is skipped,
  never clipped (a clipped value is a config nobody ran; the trial would claim to be the earlier best);
- a param the current space no longer has: the value is dropped (the base config's value applies) and the
  trial is still carried;
- a param the current space added: the sampler samples it.

Only enqueued: the earlier results are not added to this study (`add_trial`), because they were measured on
another study's data or base config; the enqueued trials' own results here inform the sampler from the start.

Checked before any trial (exit 2): the earlier study exists and has a compatible trial. Enqueued once: the study
records `warm_started` and a resumed run does not enqueue again.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from trainer import ConfigError, Problem
from trainer.schema import describe, did_you_mean

if TYPE_CHECKING:
    import optuna

    from search.config import StudyConfig
    from search.space import Param

DEFAULT_TOP = 5
ATTR = "warm_start_of"
STUDY_ATTR = "warm_started"
KEYS = ("study", "storage", "top")


@dataclasses.dataclass(frozen=True)
class WarmStart:
    """One earlier study to start from."""

    study: str
    storage: str | None = None
    """Its storage URL; default: this study's."""
    top: int = DEFAULT_TOP
    """How many of its best complete trials to carry."""


@dataclasses.dataclass(frozen=True)
class Carried:
    """One earlier trial to enqueue: its params as they fit the current space."""

    params: dict[str, Any]
    origin: dict[str, Any]
    """study, storage, trial number, values: stored as `warm_start_of`."""
    dropped: tuple[str, ...] = ()


def parse_entry(text: str) -> dict[str, Any]:
    """`STUDY[@STORAGE]` as given to --warm-start (a storage URL may hold '@' itself: the first one splits)."""
    name, _, storage = text.partition("@")
    return {"study": name, **({"storage": storage} if storage else {})}


def parse_warm_start(raw: Any, source: str, problems: list[Problem]) -> list[WarmStart]:
    """The `warm_start:` value: a list of {study, storage, top} (or one of them, or `STUDY[@STORAGE]` strings)."""
    if raw is None:
        return []
    items = raw if isinstance(raw, list) else [raw]
    out: list[WarmStart] = []
    for i, item in enumerate(items):
        key = f"warm_start[{i}]" if isinstance(raw, list) else "warm_start"
        if isinstance(item, str):
            item = parse_entry(item)
        if not isinstance(item, dict):
            problems.append(
                Problem(
                    source,
                    key,
                    f"expected {{study: NAME, storage: URL, top: K}} or 'STUDY[@STORAGE]', found {describe(item)}",
                )
            )
            continue
        bad = False
        for option in item:
            if option not in KEYS:
                problems.append(
                    Problem(
                        source,
                        f"{key}.{option}",
                        f"unknown key{did_you_mean(str(option), KEYS)} (keys: {', '.join(KEYS)})",
                    )
                )
                bad = True
        study, storage, top = item.get("study"), item.get("storage"), item.get("top", DEFAULT_TOP)
        if not isinstance(study, str) or not study:
            problems.append(
                Problem(source, f"{key}.study", f"expected the name of an earlier study, found {describe(study)}")
            )
            bad = True
        if storage is not None and (not isinstance(storage, str) or not storage):
            problems.append(
                Problem(
                    source,
                    f"{key}.storage",
                    f"expected a storage URL (sqlite:///file.db, postgresql://...), found {describe(storage)}",
                )
            )
            bad = True
        if isinstance(top, bool) or not isinstance(top, int) or top < 1:
            problems.append(Problem(source, f"{key}.top", f"expected an integer >= 1, found {describe(top)}"))
            bad = True
        if not bad:
            assert isinstance(study, str)  # checked above
            out.append(WarmStart(study, storage, top))
    return out


# ---------------------------------------------------------------------------------------------------
# Before any trial: what will be carried


def misfit(param: Param, value: Any) -> str | None:
    """Why `value` does not fit `param` as the current space gives it (None: it fits)."""
    if param.type == "categorical":
        return (
            None
            if any(value == c and type(value) is type(c) for c in param.choices)
            else (f"{param.name}={value!r} is not among the choices {param.choices}")
        )
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"{param.name}={value!r} is not a number"
    low, high = float(param.low), float(param.high)  # type: ignore[arg-type]
    if param.type == "int" and value != int(value):
        return f"{param.name}={value!r} is not an integer"
    if not low - 1e-12 * abs(low) <= value <= high + 1e-12 * abs(high):
        return f"{param.name}={value!r} is outside [{param.low:g}, {param.high:g}]"
    if param.step:
        steps = (value - low) / param.step
        if abs(steps - round(steps)) > 1e-6:
            return f"{param.name}={value!r} is off the step {param.step:g} from {param.low:g}"
    return None


def fit(params: dict[str, Any], cfg: StudyConfig) -> tuple[dict[str, Any] | None, list[str], str | None]:
    """An earlier trial's params as the current space takes them: (params, dropped names, why it does not fit)."""
    declared = {p.name: p for p in cfg.space.params}
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for name, value in params.items():
        param = declared.get(name)
        if param is None:
            if cfg.space.python:  # a `python:` space may suggest it: carried as it was
                kept[name] = value
            else:
                dropped.append(name)
            continue
        reason = misfit(param, value)
        if reason is not None:
            return None, dropped, reason
        kept[name] = int(value) if param.type == "int" else value
    return kept, dropped, None


def _ranked(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """COMPLETE trials with finite values, best first (several objectives: the Pareto front first, then the first
    objective)."""
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.values and all(v is not None and math.isfinite(v) for v in t.values)
    ]
    sign = [-1 if d == StudyDirection.MAXIMIZE else 1 for d in study.directions]
    done.sort(key=lambda t: (tuple(s * v for s, v in zip(sign, t.values, strict=False)), t.number))
    if len(study.directions) > 1:
        front = {t.number for t in study.best_trials}
        done.sort(key=lambda t: t.number not in front)
    return done


def _load(entry: WarmStart, url: str, source: str, key: str) -> optuna.Study:
    import optuna

    from search.storage import StorageFailure, open_storage, safe_url, sqlite_path

    where = safe_url(url)
    path = sqlite_path(url)
    if path is not None and not path.exists():  # opening it would create an empty database
        raise ConfigError(
            Problem(source, f"{key}.storage", f"no study named {entry.study!r}: its database {path} does not exist")
        )
    try:
        storage = open_storage(url, source)
        names = [s.study_name for s in storage.get_all_studies()]
        if entry.study not in names:
            shown = ", ".join(names[:10]) or "none"
            raise ConfigError(
                Problem(
                    source,
                    f"{key}.study",
                    f"no study named {entry.study!r} in {where}"
                    f"{did_you_mean(entry.study, names)} (studies there: {shown})",
                )
            )
        return optuna.load_study(study_name=entry.study, storage=storage)
    except StorageFailure as exc:
        raise ConfigError(Problem(source, f"{key}.storage", str(exc))) from None


def plan_warm_start(cfg: StudyConfig) -> list[Carried]:
    """The earlier trials to enqueue, best first, each fitted to the current space; ConfigError (exit 2) when an
    earlier study does not exist or has no trial that fits (saying what did not)."""
    from search.storage import safe_url

    source = str(cfg.path)
    out: list[Carried] = []
    seen: set[tuple[tuple[str, str], ...]] = set()
    problems: list[Problem] = []
    for i, entry in enumerate(cfg.warm_start):
        key = f"warm_start[{i}]"
        url = entry.storage or cfg.storage
        if entry.study == cfg.name and url == cfg.storage:
            problems.append(Problem(source, f"{key}.study", f"{entry.study!r} is this study; name an earlier one"))
            continue
        try:
            earlier = _load(entry, url, source, key)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        ranked = _ranked(earlier)
        if not ranked:
            problems.append(
                Problem(source, key, f"study {entry.study!r} in {safe_url(url)} has no complete trial to start from")
            )
            continue
        metrics = earlier.user_attrs.get("objective_metrics") or [f"value{j}" for j in range(len(earlier.directions))]
        taken, reasons = 0, []
        for trial in ranked:
            if taken >= entry.top:
                break
            params, dropped, reason = fit(trial.params, cfg)
            if params is None:
                reasons.append(f"trial {trial.number}: {reason}")
                continue
            ident = tuple(sorted((k, repr(v)) for k, v in params.items()))
            if ident in seen:
                continue
            seen.add(ident)
            taken += 1
            origin = {
                "study": entry.study,
                "storage": safe_url(url),
                "trial": trial.number,
                "values": dict(zip(metrics, trial.values, strict=False)),
            }
            out.append(Carried(params, origin, tuple(dropped)))
        if taken == 0:
            shown = "; ".join(reasons[:3]) + (f"; and {len(reasons) - 3} more" if len(reasons) > 3 else "")
            problems.append(
                Problem(
                    source,
                    key,
                    f"none of the {len(ranked)} complete trials of study "
                    f"{entry.study!r} fits the current space: {shown or 'all were carried already'}",
                )
            )
    if problems:
        raise ConfigError(problems)
    return out


# ---------------------------------------------------------------------------------------------------
# Once the study is open


def enqueue_warm_start(study: optuna.Study, carried: list[Carried], say: Callable[[str], None]) -> list[int]:
    """Enqueue the carried trials (once per study: a resumed run does not enqueue them again); their numbers."""
    if not carried or study.user_attrs.get(STUDY_ATTR):
        return []
    numbers = []
    for item in carried:
        study.enqueue_trial(item.params, user_attrs={ATTR: item.origin})
    queued = [t for t in study.get_trials(deepcopy=False) if ATTR in t.user_attrs]
    numbers = [t.number for t in queued][-len(carried) :]
    study.set_user_attr(STUDY_ATTR, [{**c.origin, "number": n} for c, n in zip(carried, numbers, strict=False)])
    sources = sorted({f"{c.origin['study']} ({c.origin['storage']})" for c in carried})
    dropped = sorted({name for c in carried for name in c.dropped})
    say(
        f"warm start: {len(carried)} trial(s) of {', '.join(sources)} queued first (best first, as trials "
        f"{', '.join(map(str, numbers))})"
        + (f"; not in the current space, so left to the base config: {', '.join(dropped)}" if dropped else "")
    )
    return numbers
