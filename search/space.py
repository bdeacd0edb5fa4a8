"""Search spaces: dotted train-config keys with Optuna distributions, sampled define-by-run."""

from __future__ import annotations

import dataclasses
import importlib
import math
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from trainer import FIELDS, Problem
from trainer.schema import describe, did_you_mean

TYPES = ("float", "int", "categorical")
SPEC_KEYS = {
    "float": {"type", "low", "high", "log", "step", "when"},
    "int": {"type", "low", "high", "log", "step", "when"},
    "categorical": {"type", "choices", "when"},
}
LEAF_FIELDS = {k for k, tp in FIELDS.items() if not dataclasses.is_dataclass(tp)}


@dataclasses.dataclass
class Param:
    """One searched key: `train.learning_rate: {type: float, low: 1e-5, high: 1e-3, log: true}`."""

    name: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] = dataclasses.field(default_factory=list)
    when: dict[str, list[Any]] = dataclasses.field(default_factory=dict)

    def bounds(self) -> tuple[float, float]:
        """`low` and `high` of a float or int parameter (set by `parse_space` for those)."""
        assert self.low is not None and self.high is not None, f"{self.name} is {self.type}: it has no bounds"
        return self.low, self.high

    def active(self, sampled: dict[str, Any]) -> bool:
        return all(key in sampled and sampled[key] in values for key, values in self.when.items())

    def sample(self, trial: Any) -> Any:
        if self.type == "float":
            low, high = self.bounds()
            return trial.suggest_float(self.name, low, high, log=self.log, step=self.step)
        if self.type == "int":
            low, high = self.bounds()
            return trial.suggest_int(self.name, int(low), int(high), log=self.log, step=int(self.step or 1))
        return trial.suggest_categorical(self.name, self.choices)

    def grid_values(self) -> list[Any] | None:
        if self.type == "categorical":
            return list(self.choices)
        if self.step is None and self.type == "float":
            return None
        step = self.step or 1
        low, high = self.bounds()
        n = math.floor((high - low) / step + 1e-9) + 1
        values = [low + i * step for i in range(n)]
        return [int(v) for v in values] if self.type == "int" else values


@dataclasses.dataclass
class Space:
    params: list[Param]
    python: str | None = None
    """`module:function`, a `(trial) -> {dotted key: value}` function for anything else."""
    fixed: dict[str, Any] = dataclasses.field(default_factory=dict)
    """`fixed:` {dotted key: value}: applied to every trial's config, never sampled nor stored as a param."""
    source: str = ""
    base_dir: Path | None = None

    def __contains__(self, key: object) -> bool:
        """Whether `key` (a dotted config path) is one of the searched params."""
        return key in self.keys()

    def keys(self) -> list[str]:
        return [p.name for p in self.params]

    def python_function(self) -> Callable[[Any], dict[str, Any]] | None:
        if not self.python:
            return None
        return _import_function(self.python, self.base_dir)


def _import_function(ref: str, base_dir: Path | None) -> Callable[[Any], dict[str, Any]]:
    module_name, _, func_name = ref.partition(":")
    if base_dir is not None and str(base_dir) not in sys.path:
        sys.path.insert(0, str(base_dir))
    module = importlib.import_module(module_name)
    func = getattr(module, func_name)
    if not callable(func):
        raise TypeError(f"{ref} is not callable")
    return func


def sample_params(trial: Any, space: Space) -> dict[str, Any]:
    """Sample every active parameter on an Optuna trial, in file order; returns {dotted key: value}."""
    sampled: dict[str, Any] = {}
    for param in space.params:
        if param.active(sampled):
            sampled[param.name] = param.sample(trial)
    func = space.python_function()
    if func is not None:
        extra = func(trial)
        if not isinstance(extra, dict):
            raise TypeError(f"{space.python} must return a mapping of config keys to values, found {describe(extra)}")
        sampled.update(extra)
    return sampled


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int_field(key: str) -> bool:
    """A train-config field that holds whole numbers (`peft.r`, `train.batch_size`, ...)."""
    tp = FIELDS.get(key)
    options = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    return int in options and float not in options


def _on_grid(value: float, low: float, step: float) -> bool:
    n = (value - low) / step
    return abs(n - round(n)) <= 1e-9 * max(1.0, abs(n))


def _check_step(param: Param, key: str, bad: Callable[[str, str], None]) -> None:
    """`step` must divide `high - low`: Optuna would otherwise narrow the range without a word."""
    low, high, step = param.low, param.high, param.step
    assert low is not None and high is not None and step is not None
    if _on_grid(high, low, step):
        return
    n = math.floor((high - low) / step + 1e-9)
    narrowed = low + n * step
    wider = low + (n + 1) * step
    fmt = (lambda v: str(int(v))) if param.type == "int" else (lambda v: f"{v:.10g}")
    bad(
        f"{key}.step",
        f"step {fmt(step)} does not divide high - low = {fmt(high - low)}: the range would be "
        f"narrowed to [{fmt(low)}, {fmt(narrowed)}]; set high to {fmt(narrowed)} or {fmt(wider)}, "
        "or choose a step that divides the range",
    )


def _can_take(param: Param, value: Any) -> tuple[bool, str]:
    """Whether `param` can ever be sampled as `value`, and what it can take (for the message)."""
    if param.type == "categorical":
        same = (lambda c: c is value) if isinstance(value, bool) else (lambda c: not isinstance(c, bool) and c == value)
        return any(same(c) for c in param.choices), f"its choices are {param.choices}"
    low, high = param.low, param.high
    span = f"[{low:g}, {high:g}]" + (f" in steps of {param.step:g}" if param.step else "")
    what = f"an {'integer' if param.type == 'int' else 'number'} in {span}"
    if not _number(value) or low is None or high is None:
        return False, f"it takes {what}"
    if param.type == "int" and not float(value).is_integer():
        return False, f"it takes {what}"
    if not low <= value <= high:
        return False, f"it takes {what}"
    if param.step and not _on_grid(value, low, param.step):
        return False, f"it takes {what}"
    return True, ""


def _check_when_values(param: Param, cond: Param, bad: Callable[[str, str], None]) -> None:
    """Every value a `when` names must be one its parameter can take, or `param` would never be sampled."""
    for value in param.when[cond.name]:
        ok, takes = _can_take(cond, value)
        if not ok:
            hint = did_you_mean(value, [str(c) for c in cond.choices]) if isinstance(value, str) else ""
            bad(
                f"{param.name}.when",
                f"{cond.name} can never be {value!r} ({takes}), so {param.name} would never be sampled{hint}",
            )


def parse_space(data: Any, *, source: str, base_dir: Path | None, problems: list[Problem], prefix: str = "") -> Space:
    """Read and check a space mapping; every problem goes to `problems` with its key."""

    def bad(key: str, message: str) -> None:
        problems.append(Problem(source, f"{prefix}{key}", message))

    space = Space(params=[], source=source, base_dir=base_dir)
    if not isinstance(data, dict):
        bad("", f"expected a mapping of config keys to parameter specs, found {describe(data)}")
        return space
    for key, spec in data.items():
        key = str(key)
        if key == "fixed":
            space.fixed = _parse_fixed(spec, bad)
        elif key == "python":
            python = _parse_python(spec, base_dir, bad)
            if python is not None:
                space.python = python
        else:
            param = _parse_param(key, spec, bad)
            if param is not None:
                space.params.append(param)
    _check_fixed_not_searched(space, bad)
    _check_conditions(space, bad)
    if not space.params and not space.python:
        bad("", "the space has no parameters")
    return space


def _parse_python(spec: Any, base_dir: Path | None, bad: Callable[[str, str], None]) -> str | None:
    """The `python: module:function` entry when its function imports; None (with the problem said) otherwise."""
    if not isinstance(spec, str) or ":" not in spec:
        bad("python", f"expected 'module:function', found {describe(spec)}")
        return None
    try:
        _import_function(spec, base_dir)
    except Exception as exc:  # noqa: BLE001 - any failure to import is the user's module
        bad("python", f"cannot import {spec!r}: {type(exc).__name__}: {exc}")
        return None
    return spec


def _parse_param(key: str, spec: Any, bad: Callable[[str, str], None]) -> Param | None:
    """One searched key's parameter spec; None when the key or its type is refused."""
    if key not in LEAF_FIELDS:
        bad(key, f"not a train-config field{did_you_mean(key, LEAF_FIELDS)}")
        return None
    if not isinstance(spec, dict):
        bad(key, f"expected a parameter spec such as {{type: float, low: 1e-5, high: 1e-3}}, found {describe(spec)}")
        return None
    kind = spec.get("type")
    if kind is None and "choices" in spec:
        kind = "categorical"
    if kind not in TYPES:
        bad(
            f"{key}.type",
            f"expected one of {', '.join(TYPES)}, found {describe(kind)}"
            + (did_you_mean(kind, TYPES) if isinstance(kind, str) else ""),
        )
        return None
    for extra in set(spec) - SPEC_KEYS[kind]:
        bad(f"{key}.{extra}", f"unknown option for a {kind} parameter{did_you_mean(str(extra), SPEC_KEYS[kind])}")
    param = Param(name=key, type=kind)
    if kind == "categorical":
        _parse_choices(param, spec, bad)
    else:
        _parse_range(param, spec, bad)
    when = spec.get("when")
    if when is not None:
        if not isinstance(when, dict) or not when:
            bad(f"{key}.when", f"expected a mapping {{parameter: value or [values]}}, found {describe(when)}")
        else:
            param.when = {str(k): (v if isinstance(v, list) else [v]) for k, v in when.items()}
    return param


def _parse_choices(param: Param, spec: dict[str, Any], bad: Callable[[str, str], None]) -> None:
    """A categorical parameter's `choices`: a non-empty list of nulls, booleans, numbers or strings."""
    key = param.name
    choices = spec.get("choices")
    if not isinstance(choices, list) or not choices:
        bad(f"{key}.choices", f"expected a non-empty list, found {describe(choices)}")
    elif not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
        bad(f"{key}.choices", "choices must be null, booleans, numbers or strings")
    else:
        param.choices = choices


def _parse_range(param: Param, spec: dict[str, Any], bad: Callable[[str, str], None]) -> None:
    """A float or int parameter's `low`, `high`, `log` and `step`, each checked, then checked together."""
    key, kind = param.name, param.type
    low, high = spec.get("low"), spec.get("high")
    ok = _parse_bounds(param, low, high, bad)
    ok = _parse_log_and_step(param, spec, bad) and ok
    if ok and not all(math.isfinite(v) for v in param.bounds()):
        bad(key, f"low and high must be finite numbers, found (low={low}, high={high})")
        ok = False
    if kind == "float" and _is_int_field(key):
        bad(
            f"{key}.type",
            f"{key} is an integer field, so a float parameter would give it values like "
            "4.7; use type: int (or categorical choices)",
        )
        ok = False
    if ok:
        p_low, p_high = param.bounds()
        if p_low > p_high:
            bad(key, f"`low <= high` must hold, but got (low={p_low}, high={p_high})")
        if param.log and p_low <= 0:
            bad(key, f"log scale needs low > 0, but got low={p_low}")
        if param.log and param.step is not None:
            bad(key, "`step` and `log: true` cannot be used together")
        elif param.step is not None and p_low <= p_high:
            _check_step(param, key, bad)


def _parse_bounds(param: Param, low: Any, high: Any, bad: Callable[[str, str], None]) -> bool:
    """Set `low` and `high` (numbers, whole for an int parameter); False when either is refused."""
    key, kind = param.name, param.type
    ok = True
    for name, v in (("low", low), ("high", high)):
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                pass
        if not _number(v):
            bad(f"{key}.{name}", f"expected a number, found {describe(v)}")
            ok = False
        elif kind == "int" and not float(cast(float, v)).is_integer():
            bad(f"{key}.{name}", f"expected an integer for an int parameter, found {v!r}")
            ok = False
        else:
            setattr(param, name, float(cast(float, v)) if kind == "float" else int(cast(float, v)))
    return ok


def _parse_log_and_step(param: Param, spec: dict[str, Any], bad: Callable[[str, str], None]) -> bool:
    """Set `log` (a boolean) and `step` (a number > 0, whole for an int parameter); False when either is refused."""
    key, kind = param.name, param.type
    ok = True
    log = spec.get("log", False)
    if not isinstance(log, bool):
        bad(f"{key}.log", f"expected true/false, found {describe(log)}")
        ok = False
    param.log = bool(log)
    step = spec.get("step")
    if step is not None and (not _number(step) or not math.isfinite(float(step)) or step <= 0):
        bad(f"{key}.step", f"expected a number > 0, found {describe(step)}")
        ok = False
    elif step is not None and kind == "int" and not float(step).is_integer():
        bad(f"{key}.step", f"an int parameter needs a whole step, found {step!r}")
        ok = False
    elif step is not None and kind == "int":
        step = int(step)
    param.step = step
    return ok


def _check_fixed_not_searched(space: Space, bad: Callable[[str, str], None]) -> None:
    """No key is both fixed and searched."""
    for name in [p.name for p in space.params]:
        if name in space.fixed:
            bad(
                f"fixed.{name}",
                f"{name} is both fixed and searched; keep one (fixed: one value for every trial, "
                "or a parameter spec to search it)",
            )


def _check_conditions(space: Space, bad: Callable[[str, str], None]) -> None:
    """Each `when:` names a searched parameter that comes before it, with values that parameter can take."""
    names = [p.name for p in space.params]
    for i, param in enumerate(space.params):
        for cond in param.when:
            if cond in space.fixed:
                bad(
                    f"{param.name}.when",
                    f"names '{cond}', which is fixed (to {space.fixed[cond]!r}), not searched: "
                    "drop the condition, or search it",
                )
            elif cond not in names:
                bad(
                    f"{param.name}.when",
                    f"names unknown parameter '{cond}'{did_you_mean(cond, names)} (parameters: {', '.join(names)})",
                )
            elif names.index(cond) >= i:
                bad(f"{param.name}.when", f"parameter '{cond}' must come before '{param.name}' in the space")
            else:
                _check_when_values(param, space.params[names.index(cond)], bad)


STUDY_SET = {
    "output_dir": "the study sets each trial's output_dir (<output_dir>/trials/NNNN); set output_dir "
    "in the study file instead"
}
"""Train-config keys a space cannot fix, and why."""


def _parse_fixed(spec: Any, bad: Callable[[str, str], None]) -> dict[str, Any]:
    """`fixed: {dotted key: value}`; the values are checked against the train config in search/config.py."""
    if not isinstance(spec, dict):
        bad(
            "fixed",
            f"expected a mapping of config keys to values, such as {{peft.target_modules: all-linear}}, "
            f"found {describe(spec)}",
        )
        return {}
    fixed: dict[str, Any] = {}
    for key, value in spec.items():
        key = str(key)
        if key in STUDY_SET:
            bad(f"fixed.{key}", STUDY_SET[key])
        elif key not in LEAF_FIELDS:
            bad(f"fixed.{key}", f"not a train-config field{did_you_mean(key, LEAF_FIELDS)}")
        elif isinstance(value, dict):
            bad(
                f"fixed.{key}",
                f"expected a value, found a mapping {describe(value)}; a parameter spec belongs outside `fixed:`",
            )
        else:
            fixed[key] = value
    return fixed


def check_space_with_base(space: Space, base: Any, prefix: str, problems: list[Problem]) -> None:
    """Rules between the space and the base train config (a TrainConfig)."""
    d = base.data
    drawn = [name for name, held in (("validation", not d.validation), ("test", bool(d.test_fraction))) if held]
    if "train.seed" in space and drawn and d.split_seed is None:
        splits = " and ".join(drawn) + (" splits are" if len(drawn) > 1 else " split is")
        problems.append(
            Problem(
                space.source,
                f"{prefix}train.seed",
                f"train.seed is searched, and the {splits} "
                "held out of train with train.seed: every trial would hold out other rows, so "
                "their scores would not compare (and one trial's held-out rows would be another's "
                "training rows); set data.split_seed in the base config",
            )
        )
