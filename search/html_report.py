"""`sftune report`: one self-contained HTML page of a study (header, trials, best config, plots), no network needed.

The plots are Optuna's plotly figures (the ones optuna-dashboard draws) plus a learning-curve view
where pruned trials are visibly cut short; plotly.js is inlined once, so the file opens offline. Every plot
takes the page's width (responsive, no fixed width), and the best trial shows what a reader wants first: its
searched values beside the base config's, what else differs from the base, then the whole config folded.
"""

from __future__ import annotations

import html
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from search.config import StudyConfig
from search.plots import IMPORTANCE_MIN_TRIALS, importance_basis, searched_params
from search.report import fail_reason, ranked

STATE_COLORS = {
    "COMPLETE": "#1f77b4",
    "PRUNED": "#d62728",
    "FAIL": "#7f7f7f",
    "RUNNING": "#2ca02c",
    "WAITING": "#bcbd22",
}

CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 2rem auto; max-width: 1200px;
       color: #222; padding: 0 1rem; }
h1 { margin-bottom: .2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
table { border-collapse: collapse; font-size: .9rem; }
th, td { border-bottom: 1px solid #eee; padding: .25rem .6rem; text-align: left; vertical-align: top; }
th { background: #f6f6f6; }
table.header th { background: none; color: #555; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.state-COMPLETE { color: #1f77b4; } .state-PRUNED { color: #d62728; } .state-FAIL { color: #7f7f7f; }
tr.best td { background: #eef6ff; }
pre { background: #f6f8fa; padding: .8rem; overflow-x: auto; font-size: .85rem; }
.note { color: #666; font-style: italic; }
figure.plot { margin: 1rem 0; max-width: 100%; } figcaption { color: #555; font-size: .9rem; }
figure.plot .plotly-graph-div { width: 100% !important; max-width: 100%; }
.wide { max-width: 100%; overflow-x: auto; }
.warn { color: #8a5300; }
details summary { cursor: pointer; color: #555; margin-top: .6rem; }
"""

PER_TRIAL_KEYS = ("output_dir", "train.threads")
"""Keys every trial sets for itself (its folder, its threads): not a difference from the base worth showing."""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _wall_time(trials: list[FrozenTrial]) -> float | None:
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    if not starts or not ends:
        return None
    return (max(ends) - min(starts)).total_seconds()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _options(spec: dict[str, Any]) -> str:
    extra = ", ".join(f"{k}={v}" for k, v in spec.items() if k != "name")
    return f"{spec.get('name')}" + (f" ({extra})" if extra else "")


def _header(study: optuna.Study, cfg: StudyConfig, trials: list[FrozenTrial]) -> str:
    counts = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    base = cfg.base_config
    b = cfg.budget
    rows = [
        ("model", base.model),
        ("task", base.task),
        (
            "objective",
            ", ".join(f"{m} ({d})" for m, d in zip(cfg.metrics, cfg.directions, strict=False))
            + (f" · value: {cfg.use} evaluation" if not cfg.multi_objective else ""),
        ),
        ("sampler", _options(cfg.sampler)),
        ("pruner", _options(cfg.pruner)),
        (
            "budget",
            f"n_trials {b.n_trials} · concurrency {b.concurrency}"
            + (f" · timeout {b.timeout:g} s" if b.timeout else ""),
        ),
        ("storage", cfg.storage),
        (
            "trials",
            f"{counts['COMPLETE']} complete · {counts['PRUNED']} pruned · {counts['FAIL']} failed"
            + (f" · {counts['RUNNING']} running" if counts["RUNNING"] else ""),
        ),
        ("wall time", _duration(_wall_time(trials))),
    ]
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows)
    return f'<table class="header" id="study-header">{body}</table>'


def _steps(t: FrozenTrial) -> str:
    if t.intermediate_values:
        return str(max(t.intermediate_values))
    return str(t.user_attrs.get("final_step", "-"))


def _why(t: FrozenTrial) -> str:
    if t.state == TrialState.PRUNED:
        return f"pruned at step {max(t.intermediate_values)}" if t.intermediate_values else "pruned"
    if t.state == TrialState.FAIL:
        return fail_reason(t)
    if t.state == TrialState.COMPLETE and t.user_attrs.get("best_step") is not None:
        return f"best evaluation at step {t.user_attrs['best_step']}"
    return ""


def _trial_table(cfg: StudyConfig, trials: list[FrozenTrial], best: set[int]) -> str:
    params = list(dict.fromkeys(k for t in trials for k in t.params))
    head = ["trial", "state", *cfg.metrics, *params, "steps", "time", "note"]
    rows = []
    for t in trials:
        values = list(t.values or [])
        cells = [f'<td class="num">{t.number}</td>', f'<td class="state-{t.state.name}">{t.state.name}</td>']
        cells += [
            f'<td class="num">{_num(values[i]) if i < len(values) else "-"}</td>' for i in range(len(cfg.metrics))
        ]
        cells += [f'<td class="num">{_esc(_num(t.params[p])) if p in t.params else "-"}</td>' for p in params]
        seconds = t.duration.total_seconds() if t.duration else None
        cells += [
            f'<td class="num">{_steps(t)}</td>',
            f'<td class="num">{_duration(seconds)}</td>',
            f"<td>{_esc(_why(t))}</td>",
        ]
        cls = ' class="best"' if t.number in best else ""
        rows.append(f'<tr{cls} data-trial="{t.number}" data-state="{t.state.name}">{"".join(cells)}</tr>')
    thead = "".join(f"<th>{_esc(h)}</th>" for h in head)
    return f'<table id="trials"><thead><tr>{thead}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as {dotted key: value}."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def _beside_base(table_id: str, first: str, values: dict[str, Any], base: dict[str, Any]) -> str:
    """A table of {dotted key: this trial's value} beside the base config's value of each key."""
    rows = "".join(
        f'<tr><th>{_esc(k)}</th><td class="num">{_esc(_num(v))}</td>'
        f'<td class="num">{_esc(_num(base[k])) if k in base else "(default)"}</td></tr>'
        for k, v in values.items()
    )
    return (
        f'<table id="{table_id}"><thead><tr><th>{first}</th><th>this trial</th><th>base config</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>"
    )


def _best_trial(best: FrozenTrial, cfg: StudyConfig) -> list[str]:
    """The best trial's searched values beside the base config's, what else differs from the base, and its whole
    config folded below."""
    base = _flat(cfg.base)
    parts = []
    searched = searched_params(best)
    if searched:
        parts.append(_beside_base("best-params", "searched", {k: best.params[k] for k in searched}, base))
    config = best.user_attrs.get("config")
    if isinstance(config, dict):
        mine = _flat(config)
        differ = [k for k in mine if k not in searched and k not in PER_TRIAL_KEYS and mine[k] != base.get(k)]
        if differ:
            parts.append(
                "<p>Also different from the base config:</p>"
                + _beside_base("best-changes", "key", {k: mine[k] for k in differ}, base)
            )
        elif searched:
            parts.append('<p class="note" id="best-changes">Nothing else differs from the base config.</p>')
        parts.append(
            f"<details><summary>Trial {best.number}'s whole config</summary>"
            f'<pre id="best-config">{_esc(yaml.safe_dump(config, sort_keys=False))}</pre></details>'
        )
    parts += _generations(best)
    return parts


def _generations(trial: FrozenTrial) -> list[str]:
    """The trial's last sample generations (`eval:` metrics): prompt, output and reference side by side."""
    kept = trial.user_attrs.get("generations")
    if not isinstance(kept, dict) or not kept.get("samples"):
        return []
    rows = "".join(
        f"<tr><td><pre>{_esc(s.get('prompt', ''))}</pre></td><td><pre>{_esc(s.get('output', ''))}</pre>"
        f"</td><td><pre>{_esc(s.get('reference', ''))}</pre></td></tr>"
        for s in kept["samples"]
    )
    return [
        f"<p>What trial {trial.number} wrote at step {_esc(kept.get('step'))} (a few of the validation rows "
        "it generated for):</p>"
        '<table id="best-generations"><tr><th>prompt (its end)</th><th>output</th><th>reference</th></tr>'
        f"{rows}</table>"
    ]


def learning_curves(study: optuna.Study, cfg: StudyConfig, trials: list[FrozenTrial]) -> Any:
    """Every trial's evaluations by step; a pruned trial's line is dashed and ends in a red cross."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for t in trials:
        if not t.intermediate_values:
            continue
        steps = sorted(t.intermediate_values)
        values = [t.intermediate_values[s] for s in steps]
        pruned = t.state == TrialState.PRUNED
        color = None if t.state == TrialState.COMPLETE else STATE_COLORS.get(t.state.name, "#444")
        symbols = ["circle"] * (len(steps) - 1) + ["x" if pruned else "circle"]
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=values,
                mode="lines+markers",
                name=f"trial {t.number} ({t.state.name.lower()})",
                line={"color": color, "dash": "dot" if pruned else "solid", "width": 1.5},  # complete: one hue each
                marker={"symbol": symbols, "size": [6] * (len(steps) - 1) + [11 if pruned else 6], "color": color},
                opacity=0.85,
            )
        )
    fig.update_layout(
        title=f"Learning curves: {cfg.metrics[0]} at each evaluation (pruned trials dotted, cut short at the ×)",
        xaxis_title="optimizer step",
        yaxis_title=cfg.metrics[0],
        template="plotly_white",
        height=480,
    )
    return fig


def _plots(
    study: optuna.Study, cfg: StudyConfig, trials: list[FrozenTrial]
) -> list[tuple[str, str, Callable[[], Any]]]:
    """(key, caption, make-figure) for every plot the study can have now."""
    from optuna import visualization as vis

    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    names = cfg.metrics
    target = (lambda t: t.values[0]) if cfg.multi_objective else None
    searched = list(dict.fromkeys(k for t in complete for k in searched_params(t)))  # fixed values left out
    plots: list[tuple[str, str, Callable[[], Any]]] = []
    if complete:
        if cfg.multi_objective:
            plots.append(
                (
                    "pareto",
                    "Pareto front: the trials no other trial beats on every objective",
                    lambda: vis.plot_pareto_front(study, target_names=names),
                )
            )
            for i, name in enumerate(names):
                plots.append((f"history-{name}", f"Optimization history of {name}", _history_of(vis, study, i, name)))
        else:
            plots.append(
                (
                    "history",
                    f"Optimization history: each complete trial's {names[0]} and the best so far",
                    lambda: vis.plot_optimization_history(study, target_name=names[0]),
                )
            )
    if any(t.intermediate_values for t in trials):
        plots.append(("learning-curves", "Learning curves of every trial", lambda: learning_curves(study, cfg, trials)))
    if len(complete) >= 2 and searched:
        plots.append(
            (
                "importances",
                f"Parameter importances for {names[0]}, {importance_basis(len(complete))}",
                lambda: vis.plot_param_importances(
                    study, target=_lower_is_better(cfg), params=searched, target_name=names[0]
                ),
            )
        )
        plots.append(
            (
                "parallel",
                f"Parallel coordinates: each complete trial's params and {names[0]}",
                lambda: vis.plot_parallel_coordinate(study, params=searched, target=target, target_name=names[0]),
            )
        )
        plots.append(
            (
                "slice",
                f"{names[0]} against each parameter",
                lambda: vis.plot_slice(study, params=searched, target=target, target_name=names[0]),
            )
        )
    return plots


def _history_of(vis: Any, study: optuna.Study, i: int, name: str) -> Callable[[], Any]:
    """The optimization history of objective `i` of a multi-objective study, drawn when called."""
    return lambda: vis.plot_optimization_history(study, target=lambda t: t.values[i], target_name=name)


def _lower_is_better(cfg: StudyConfig) -> Callable[[FrozenTrial], float] | None:
    """The first objective as importance evaluators read a given target (lower is better); None: the study's own."""
    if not cfg.multi_objective:
        return None
    sign = -1.0 if cfg.directions[0] == "maximize" else 1.0
    return lambda t: sign * t.values[0]


def _figures(study: optuna.Study, cfg: StudyConfig, trials: list[FrozenTrial]) -> tuple[list[str], list[str]]:
    """The plots as HTML fragments (plotly.js not included), and the notes of plots that could not be drawn."""
    out, skipped = [], []
    for key, caption, make in _plots(study, cfg, trials):
        try:
            with warnings.catch_warnings():  # experimental plots; a given target read as lower-is-better
                warnings.simplefilter("ignore")
                fig = make()
        except Exception as exc:  # noqa: BLE001 - e.g. a parameter that never varied
            skipped.append(f"{caption}: not drawn ({type(exc).__name__}: {exc})")
            continue
        fig.update_layout(template="plotly_white", width=None, autosize=True)  # the page's width, not 300 px a param
        div = fig.to_html(
            full_html=False,
            include_plotlyjs=False,
            div_id=f"plot-{key}",
            config={"displaylogo": False, "responsive": True},
        )
        few = key == "importances" and sum(t.state == TrialState.COMPLETE for t in trials) < IMPORTANCE_MIN_TRIALS
        warn = ' class="warn"' if few else ""
        note = f"<figcaption{warn}>{_esc(caption)}</figcaption>"
        out.append(f'<figure class="plot" data-plot="{key}">{div}{note}</figure>')
    return out, skipped


def report_html(study: optuna.Study, cfg: StudyConfig) -> str:
    """The whole page as one string."""
    from plotly.offline import get_plotlyjs

    trials = study.get_trials(deepcopy=False)
    best_trials = ranked(study, cfg)
    front = {t.number for t in study.best_trials} if cfg.multi_objective and best_trials else set()
    best = best_trials[0] if best_trials else None
    marked = front or ({best.number} if best else set())
    figures, skipped = _figures(study, cfg, trials)
    parts = [
        f"<h1>Study {_esc(cfg.name)}</h1>",
        f'<p class="note">sftune report · {len(trials)} trials · {_esc(cfg.path)}</p>',
        _header(study, cfg, trials),
        "<h2>Best trial</h2>",
    ]
    if best is None:
        parts.append('<p class="note">No complete trial yet.</p>')
    else:
        values = ", ".join(f"{m} {_num(v)}" for m, v in zip(cfg.metrics, best.values, strict=False))
        parts.append(
            f'<p id="best">Trial {best.number}: {_esc(values)}'
            + (f" ({len(front)} trials on the Pareto front, highlighted below)" if front else "")
            + "</p>"
        )
        parts += _best_trial(best, cfg)
    parts.append("<h2>Plots</h2>")
    parts += figures or ['<p class="note">Nothing to plot yet: no trial has reported an evaluation.</p>']
    parts += [f'<p class="note">{_esc(s)}</p>' for s in skipped]
    parts += ["<h2>Trials</h2>", f'<div class="wide">{_trial_table(cfg, trials, marked)}</div>']
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>sftune report: {_esc(cfg.name)}</title><style>{CSS}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script></head>'
        f"<body>{''.join(parts)}</body></html>\n"
    )


def write_report(study: optuna.Study, cfg: StudyConfig, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report_html(study, cfg), encoding="utf-8")
    return out
