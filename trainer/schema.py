"""Typed dataclass configs read from plain mappings, collecting every problem at once."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Literal, Union, cast, get_args, get_origin, get_type_hints


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: where it is and what was expected versus found."""

    source: str
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        key = f"{self.key}: " if self.key else ""
        return f"{where}{key}{self.message}"


class ConfigError(Exception):
    """Raised with every problem found in a config, so the user fixes them all in one pass."""

    def __init__(self, problems: list[Problem] | Problem | str) -> None:
        if isinstance(problems, str):
            problems = [Problem("", "", problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems = list(problems)
        super().__init__(self.render())

    def render(self) -> str:
        if len(self.problems) == 1:
            return f"error: {self.problems[0]}"
        lines = [f"error: {len(self.problems)} problems:"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


def did_you_mean(name: str, options: typing.Iterable[str]) -> str:
    match = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f"; did you mean '{match[0]}'?" if match else ""


def describe(value: Any) -> str:
    """How a found value is echoed back in an error: its YAML-ish repr and type."""
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(str(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        (inner,) = get_args(tp)
        return f"a list of {_type_name(inner)}"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(tp, str(tp))


_MISSING = object()


def _coerce(tp: Any, value: Any, key: str, source: str, problems: list[Problem]) -> Any:
    """Return `value` checked against `tp`, or _MISSING after recording a problem."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(Problem(source, key, f"expected a mapping, found {describe(value)}"))
            return _MISSING
        return build(cast(type, tp), value, source=source, prefix=key, problems=problems)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        trial: list[Problem] = []
        for option in options:
            if option is type(None):
                continue
            trial = []
            out = _coerce(option, value, key, source, trial)
            if not trial:
                return out
        if len([o for o in options if o is not type(None)]) == 1:
            problems.extend(trial)
        else:
            problems.append(Problem(source, key, f"expected {_type_name(tp)}, found {describe(value)}"))
        return _MISSING
    if origin is Literal:
        allowed = get_args(tp)
        if value in allowed and not isinstance(value, bool):
            return value
        hint = did_you_mean(str(value), [str(a) for a in allowed]) if isinstance(value, str) else ""
        problems.append(
            Problem(source, key, f"expected one of {', '.join(map(str, allowed))}, found {describe(value)}{hint}")
        )
        return _MISSING
    if origin is list:
        (inner,) = get_args(tp)
        if not isinstance(value, list):
            problems.append(Problem(source, key, f"expected {_type_name(tp)}, found {describe(value)}"))
            return _MISSING
        out = [_coerce(inner, v, f"{key}[{i}]", source, problems) for i, v in enumerate(value)]
        return _MISSING if any(v is _MISSING for v in out) else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            problems.append(Problem(source, key, f"expected a mapping, found {describe(value)}"))
            return _MISSING
        return value
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        number: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads `3e-4` as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if math.isfinite(number):
                return number
            problems.append(Problem(source, key, f"expected a finite number, found {describe(value)}"))
            return _MISSING
    elif tp is str and isinstance(value, str):
        return value
    problems.append(Problem(source, key, f"expected {_type_name(tp)}, found {describe(value)}"))
    return _MISSING


def build(cls: type, data: dict, *, source: str, prefix: str = "", problems: list[Problem]) -> Any:
    """Build dataclass `cls` from `data`, appending every problem to `problems`."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    ok = True
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            problems.append(
                Problem(source, key, f"unknown key{did_you_mean(str(name), fields)} (known: {', '.join(fields)})")
            )
            ok = False
            continue
        out = _coerce(hints[name], value, key, source, problems)
        if out is _MISSING:
            ok = False
        else:
            kwargs[name] = out
    for name, f in fields.items():
        if name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            key = f"{prefix}.{name}" if prefix else name
            problems.append(Problem(source, key, f"required key is missing (expected {_type_name(hints[name])})"))
            ok = False
    if not ok:
        # Fill what we can so later checks may still run; callers raise on problems.
        try:
            return cls(**{n: kwargs.get(n, _default(f)) for n, f in fields.items()})
        except Exception:  # noqa: BLE001 - a partial object is a convenience only
            return None
    return cls(**kwargs)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def field_paths(cls: type, prefix: str = "") -> dict[str, Any]:
    """All dotted keys of a (nested) dataclass and their types: {'train.learning_rate': float, ...}."""
    out: dict[str, Any] = {}
    for name, tp in get_type_hints(cls).items():
        key = f"{prefix}.{name}" if prefix else name
        out[key] = tp
        if dataclasses.is_dataclass(tp):
            out.update(field_paths(cast(type, tp), key))
    return out


def set_dotted(data: dict, key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    return obj
