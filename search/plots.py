"""Pictures of a study: optimization history, learning curves, parameter importances, Pareto front."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from search.config import StudyConfig

IMPORTANCE_MIN_TRIALS = 10
"""Fewer complete trials than this and the importances are a hint, not a finding. Optuna's importances are
fitted to complete trials only (pruned and failed ones carry no final value): fANOVA grows a random forest
over them, and with under ten points (about two per parameter in the shipped spaces, which search 4 to 6)
each split rests on one or two trials, so the ranking changes as the next few trials arrive. Ten is also
where TPE's default startup phase ends: before it, the trials are random samples, not yet the search."""


def searched_params(trial: optuna.trial.FrozenTrial) -> list[str]:
    """A trial's params that were searched: a distribution of a single value is a fixed value, not a search."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    return [
        k
        for k, d in trial.distributions.items()
        if not (isinstance(d, CategoricalDistribution) and len(d.choices) == 1)
        and not (isinstance(d, (FloatDistribution, IntDistribution)) and d.low == d.high)
    ]


def importance_basis(n_complete: int, *, short: bool = False) -> str:
    """What a study's importances rest on, and a warning when that is too few to mean much."""
    basis = f"from {n_complete} complete trial{'s' if n_complete != 1 else ''}"
    if n_complete < IMPORTANCE_MIN_TRIALS and short:
        return f"{basis} (fewer than {IMPORTANCE_MIN_TRIALS}: a hint only)"
    if n_complete < IMPORTANCE_MIN_TRIALS:
        return (
            f"{basis}: fewer than {IMPORTANCE_MIN_TRIALS}, so read them as a hint (they can change a lot "
            "with the next few trials)"
        )
    return basis


def write_plots(study: optuna.Study, cfg: StudyConfig, out: Path) -> list[Path]:
    """Save PNGs under `out`; returns the files written (plots a study cannot have yet are skipped)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    evaluated = any(t.intermediate_values for t in study.get_trials(deepcopy=False))
    names = cfg.metrics
    plots: list[tuple[str, Callable[[], object]]] = []
    if cfg.multi_objective and complete:
        plots.append(("pareto_front.png", lambda: vis.plot_pareto_front(study, target_names=names)))
        for i, name in enumerate(names):
            plots.append((f"history_{name}.png", _history_of(vis, study, i, name)))
    elif complete:
        plots.append(("history.png", lambda: vis.plot_optimization_history(study, target_name=names[0])))
    if evaluated and not cfg.multi_objective:
        plots.append(("learning_curves.png", lambda: vis.plot_intermediate_values(study)))
    if len(complete) >= 2 and study.best_trials and len(complete[0].params) >= 1:
        sign = -1.0 if cfg.directions[0] == "maximize" else 1.0  # a given target is read as lower-is-better
        target = (lambda t: sign * t.values[0]) if cfg.multi_objective else None
        searched = list(dict.fromkeys(k for t in complete for k in searched_params(t))) or None
        plots.append(
            (
                "importances.png",
                lambda: vis.plot_param_importances(study, target=target, params=searched, target_name=names[0]),
            )
        )
    written: list[Path] = []
    if plots:  # nothing to draw: no folder, no blank picture
        out.mkdir(parents=True, exist_ok=True)
    for filename, make in plots:
        try:
            make()
        except Exception:  # noqa: BLE001 - e.g. no intermediate values yet
            plt.close("all")
            continue
        fig = plt.gcf()
        if filename == "importances.png":  # what they rest on, in the picture itself
            basis = importance_basis(len(complete), short=True)
            fig.axes[0].set_title(f"Hyperparameter importances for {names[0]}\n{basis}", loc="left", fontsize=10)
        fig.set_size_inches(9, 5.5)
        fig.tight_layout()
        path = out / filename
        fig.savefig(path, dpi=110)
        plt.close("all")
        written.append(path)
    return written


def _history_of(vis: Any, study: Any, i: int, name: str) -> Callable[[], object]:
    """The optimization history of objective `i` of a multi-objective study, drawn when called."""
    return lambda: vis.plot_optimization_history(study, target=lambda t: t.values[i], target_name=name)
