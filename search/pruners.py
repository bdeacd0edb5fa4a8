"""Pruning studies with several objectives: `pruner: {name: mo-successive-halving}`.

Optuna prunes single-objective studies only (`Trial.report` takes one value), so a multi-objective study's
evaluations are judged here, by the driver (`search._driver.judge.Judge`), with successive halving over
Pareto fronts as MO-ASHA does (Schmucker et al., 2021):

- Rungs are at steps `min_resource * reduction_factor ** (min_early_stopping_rate + k)`, k = 0, 1, ...
  (`min_resource` defaults to the base config's `train.eval_every`: the first evaluation is the first rung).
- A trial reaches a rung at its first evaluation at or past the rung's step; its objective values there are
  stored on the trial (user attribute `mo_rungs`: {rung step: [values]}), so every driver of the study sees them.
- At that evaluation, the values of every trial of the study at the same rung (this one included, n of them) are
  sorted into Pareto fronts (non-dominated sorting, each objective in its direction). The trial continues when
  the fronts ahead of its own hold fewer than `max(1, n // reduction_factor)` trials; otherwise it is pruned.
  A trial on the first front always continues, and so does one on a later front while the quota (the top
  1/reduction_factor of the rung, as successive halving keeps) is not filled by trials that beat it.
- Between rungs a trial is never pruned, and a trial with a non-finite value is left to the driver's own check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

RUNGS_ATTR = "mo_rungs"
MO_PRUNERS = ("mo-successive-halving",)


class MOSuccessiveHalving:
    """The options of `pruner: {name: mo-successive-halving, ...}` (checked against this signature)."""

    def __init__(
        self, min_resource: int | None = None, reduction_factor: int = 3, min_early_stopping_rate: int = 0
    ) -> None:
        if min_resource is not None and (
            isinstance(min_resource, bool) or not isinstance(min_resource, int) or min_resource < 1
        ):
            raise ValueError(f"min_resource must be an integer >= 1 (steps), but got {min_resource!r}")
        if isinstance(reduction_factor, bool) or not isinstance(reduction_factor, int) or reduction_factor < 2:
            raise ValueError(f"reduction_factor must be an integer >= 2, but got {reduction_factor!r}")
        if (
            isinstance(min_early_stopping_rate, bool)
            or not isinstance(min_early_stopping_rate, int)
            or min_early_stopping_rate < 0
        ):
            raise ValueError(f"min_early_stopping_rate must be an integer >= 0, but got {min_early_stopping_rate!r}")
        self.min_resource = min_resource
        self.reduction_factor = reduction_factor
        self.min_early_stopping_rate = min_early_stopping_rate


def dominates(a: list[float], b: list[float]) -> bool:
    """`a` is at least as good as `b` in every objective and better in one (values in minimize sense)."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def front_ranks(points: list[list[float]]) -> list[int]:
    """Each point's Pareto front (0: not dominated by any; 1: only by front 0; ...), minimize sense."""
    ranks = [-1] * len(points)
    left = set(range(len(points)))
    rank = 0
    while left:
        front = {i for i in left if not any(dominates(points[j], points[i]) for j in left if j != i)}
        for i in front:
            ranks[i] = rank
        left -= front
        rank += 1
    return ranks


def keeps(me: list[float], others: list[list[float]], reduction_factor: int) -> bool:
    """The rule at one rung: True when the trial with values `me` continues against the `others` there
    (minimize sense): the fronts ahead of its own hold fewer than max(1, n // reduction_factor) trials."""
    points = [me, *others]
    ranks = front_ranks(points)
    ahead = sum(1 for r in ranks[1:] if r < ranks[0])
    return ahead < max(1, len(points) // reduction_factor)


@dataclass
class MOPruner:
    """MO successive halving for one study: `judge` is called at each evaluation of each trial."""

    directions: list[str]
    min_resource: int
    reduction_factor: int = 3
    min_early_stopping_rate: int = 0

    def rung_of(self, step: int) -> int | None:
        """The highest rung step at or below `step` (None before the first rung)."""
        rung = self.min_resource * self.reduction_factor**self.min_early_stopping_rate
        if step < rung:
            return None
        while rung * self.reduction_factor <= step:
            rung *= self.reduction_factor
        return rung

    def _minimized(self, values: list[float]) -> list[float]:
        return [-v if d == "maximize" else v for v, d in zip(values, self.directions, strict=True)]

    def judge(self, study: optuna.Study, trial: optuna.Trial, values: list[float], step: int) -> bool:
        """Record the trial's values at the rung this evaluation reaches (once per rung) and say whether to prune."""
        if not all(math.isfinite(v) for v in values):
            return False
        rung = self.rung_of(step)
        if rung is None:
            return False
        recorded: dict[str, Any] = dict(trial.user_attrs.get(RUNGS_ATTR) or {})
        if str(rung) in recorded:
            return False  # judged at this rung already; the next judgement is at the next rung
        recorded[str(rung)] = list(values)
        trial.set_user_attr(RUNGS_ATTR, recorded)
        others = []
        for t in study.get_trials(deepcopy=False):
            if t.number == trial.number:
                continue
            at = (t.user_attrs.get(RUNGS_ATTR) or {}).get(str(rung))
            if at is not None and len(at) == len(values) and all(math.isfinite(v) for v in at):
                others.append(self._minimized(at))
        return not keeps(self._minimized(values), others, self.reduction_factor)


def build_mo_pruner(cfg: Any) -> MOPruner | None:
    """The study's multi-objective pruner, or None (a single-objective study, or no MO pruner asked for)."""
    if not cfg.multi_objective or cfg.pruner.get("name") not in MO_PRUNERS:
        return None
    options = {k: v for k, v in cfg.pruner.items() if k != "name"}
    checked = MOSuccessiveHalving(**options)
    min_resource = checked.min_resource or (cfg.base_config.train.eval_every if cfg.base_config else 1)
    return MOPruner(list(cfg.directions), int(min_resource), checked.reduction_factor, checked.min_early_stopping_rate)
