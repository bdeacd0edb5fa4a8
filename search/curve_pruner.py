"""The learning-curve pruner: `pruner: {name: learning-curve, ...}` stops a trial when its curve, extrapolated to
the end of training, is unlikely to beat the best finished trial.

The rule, at each evaluation of a trial (its intermediate values, in the study's direction):

1. It waits for `min_points` evaluations, for step `n_warmup_steps`, and for `min_completed` finished
   (COMPLETE) trials; it never prunes a trial at or past `max_resource`, the step training ends at (default:
   the base config's `train.max_steps` when it is not searched, else the last step of the finished trials).
2. **Extrapolate** (a small parametric ensemble, after Domhan et al., 2015): the mean at `max_resource` of
   three curves fitted to the trial's values by least squares: log-linear `a + b ln x` (still climbing),
   saturating power law `c + a x^-alpha` (alpha the best of 0.5, 1, 2: levelling off), and the last value
   (flat). Their spread is the ensemble's own uncertainty.
3. **Calibrate on this study**: the same extrapolation, from the same steps, of every finished trial's curve is
   set against the value that trial ended with (its objective value). The residuals' mean (shrunk toward 0 by
   one pseudo-observation) corrects the prediction: a study whose curves climb late teaches the pruner to
   expect it, one whose curves level off early, too. The residuals' variance (evaluation noise, how far such
   extrapolations miss) plus the square of this curve's own shape uncertainty (the larger of the ensemble's
   spread and the distance from the last value to the prediction) is the prediction's variance sigma^2: a
   curve still climbing steeply is uncertain whatever the other trials did, a flat one is not.
4. **Prune** when the probability that the trial ends at least as good as the best finished trial,
   `1 - Phi((best - (prediction + bias)) / sigma)` under a normal error, is below `threshold`. A trial that is
   already as good as the best is never pruned.

So a slow starter whose curve still climbs steeply is kept (its log-linear fit reaches the best), a flat loser
is stopped at its second evaluation, and nothing depends on the order trials run in: every decision reads the
study's storage only, so it holds with any number of parallel trials and drivers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

ALPHAS = (1.0, 0.5, 2.0)  # the power law's exponents tried (ties keep the first)


def _lstsq2(f: Sequence[float], y: Sequence[float]) -> tuple[float, float, float] | None:
    """Least squares `y = c + a f`: (c, a, sum of squared errors), or None when `f` is constant."""
    n = len(f)
    mf, my = sum(f) / n, sum(y) / n
    var = sum((v - mf) ** 2 for v in f)
    if var <= 1e-300:
        return None
    a = sum((fv - mf) * (yv - my) for fv, yv in zip(f, y, strict=True)) / var
    c = my - a * mf
    sse = sum((yv - c - a * fv) ** 2 for fv, yv in zip(f, y, strict=True))
    return c, a, sse


def extrapolate(steps: Sequence[float], values: Sequence[float], at: float) -> tuple[float, float]:
    """The ensemble's prediction of a curve's value at step `at` (higher is better or not: any sense) and the
    spread (standard deviation) of its members' predictions."""
    predictions = [values[-1]]
    if len(steps) >= 2 and min(steps) > 0:
        loglin = _lstsq2([math.log(s) for s in steps], values)
        if loglin is not None:
            predictions.append(loglin[0] + loglin[1] * math.log(at))
        fits = [(fit, alpha) for alpha in ALPHAS if (fit := _lstsq2([s**-alpha for s in steps], values)) is not None]
        if fits:
            (c, a, _), alpha = min(fits, key=lambda fa: fa[0][2])
            predictions.append(c + a * at**-alpha)
    mean = sum(predictions) / len(predictions)
    spread = math.sqrt(sum((p - mean) ** 2 for p in predictions) / len(predictions))
    return mean, spread


def _curve(trial: FrozenTrial, sign: float, up_to: float | None = None) -> tuple[list[float], list[float]]:
    """A trial's finite intermediate values (at steps <= `up_to`), in maximize sense, by step."""
    items = sorted(
        (s, sign * v)
        for s, v in trial.intermediate_values.items()
        if v is not None and math.isfinite(v) and (up_to is None or s <= up_to)
    )
    return [float(s) for s, _ in items], [v for _, v in items]


def _normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))


class LearningCurvePruner(optuna.pruners.BasePruner):
    """Prunes a trial whose extrapolated learning curve is unlikely to beat the best finished trial (the rule:
    this module's docstring)."""

    def __init__(
        self,
        threshold: float = 0.05,
        min_points: int = 2,
        min_completed: int = 1,
        n_warmup_steps: int = 0,
        max_resource: int | None = None,
    ) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be a probability between 0 and 1 (exclusive), but got {threshold!r}")
        for name, value, low in (("min_points", min_points, 1), ("min_completed", min_completed, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, but got {value!r}")
        if isinstance(n_warmup_steps, bool) or not isinstance(n_warmup_steps, int) or n_warmup_steps < 0:
            raise ValueError(f"n_warmup_steps must be an integer >= 0, but got {n_warmup_steps!r}")
        if max_resource is not None and (
            isinstance(max_resource, bool) or not isinstance(max_resource, int) or max_resource < 1
        ):
            raise ValueError(f"max_resource must be an integer >= 1 (steps), but got {max_resource!r}")
        self.threshold = float(threshold)
        self.min_points = min_points
        self.min_completed = min_completed
        self.n_warmup_steps = n_warmup_steps
        self.max_resource = max_resource
        self.reasons: dict[int, str] = {}
        """Why each trial this pruner stopped was stopped, by trial number (the driver records it on the trial)."""

    def chance(self, study: optuna.Study, trial: FrozenTrial) -> float | None:
        """The probability that `trial` ends at least as good as the best finished trial, or None while the rule
        does not judge it yet (too few evaluations or finished trials, warm-up, at the end)."""
        judged = self._judge(study, trial)
        return None if judged is None else judged[0]

    def _judge(self, study: optuna.Study, trial: FrozenTrial) -> tuple[float, str] | None:
        """`chance`, with the sentence that explains it (the prediction, its spread and the best)."""
        if len(study.directions) != 1:
            return None
        sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
        steps, values = _curve(trial, sign)
        if len(steps) < self.min_points or steps[-1] < self.n_warmup_steps:
            return None
        done = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None and math.isfinite(t.value) and t.number != trial.number
        ]
        if len(done) < self.min_completed:
            return None
        end = self.max_resource or max((max(t.intermediate_values, default=0) for t in done), default=0)
        if steps[-1] >= end:
            return None
        best = max(sign * t.value for t in done if t.value is not None)
        if values[-1] >= best:
            return 1.0, "as good as the best finished trial already"
        predicted, spread = extrapolate(steps, values, end)
        residuals = []
        for t in done:
            s, v = _curve(t, sign, up_to=steps[-1])
            if len(s) >= self.min_points and t.value is not None:
                residuals.append(sign * t.value - extrapolate(s, v, end)[0])
        bias = sum(residuals) / (len(residuals) + 1)
        noise = sum((r - bias) ** 2 for r in residuals) / max(len(residuals), 1)
        shape = max(spread, abs(predicted - values[-1]))  # how unsure this curve's own extrapolation is
        sigma = math.sqrt(shape**2 + noise + 1e-18)
        chance = _normal_sf((best - predicted - bias) / sigma)
        why = (
            f"{chance:.1%} chance to end at or above the best finished trial's {sign * best:.4g}: its curve "
            f"extrapolates to {sign * (predicted + bias):.4g} +- {sigma:.2g} at step {end:g}"
        )
        return chance, why

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        judged = self._judge(study, trial)
        if judged is not None and judged[0] < self.threshold:
            self.reasons[trial.number] = judged[1]
            return True
        return False
