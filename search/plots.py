"""Pictures of a study: optimization history, learning curves, parameter importances, Pareto front."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import optuna

from search.config import StudyConfig


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
            plots.append((f"history_{name}.png", lambda i=i, name=name: vis.plot_optimization_history(
                study, target=lambda t: t.values[i], target_name=name)))
    elif complete:
        plots.append(("history.png", lambda: vis.plot_optimization_history(study, target_name=names[0])))
    if evaluated and not cfg.multi_objective:
        plots.append(("learning_curves.png", lambda: vis.plot_intermediate_values(study)))
    if len(complete) >= 2 and study.best_trials and len(complete[0].params) >= 1:
        sign = -1.0 if cfg.directions[0] == "maximize" else 1.0  # a given target is read as lower-is-better
        target = (lambda t: sign * t.values[0]) if cfg.multi_objective else None
        plots.append(("importances.png", lambda: vis.plot_param_importances(study, target=target,
                                                                            target_name=names[0])))
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
        fig.set_size_inches(9, 5.5)
        fig.tight_layout()
        path = out / filename
        fig.savefig(path, dpi=110)
        plt.close("all")
        written.append(path)
    return written
