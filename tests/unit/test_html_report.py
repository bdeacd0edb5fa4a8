"""`sftune report`: one self-contained HTML file with the study's header, trials, best config and plots,
rendered by a real headless Chromium where one is installed."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from pathlib import Path

import optuna
import pytest
import tiny
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from search.cli import main

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="headless Chromium not installed (Debian: apt-get install -y chromium); the report's and the "
    "dashboard's pages are checked in a real browser only where it is",
)


def make_study(tmp: Path, bert_dir: Path, name: str = "rep") -> Path:
    """A study file and a database holding complete, pruned and failed trials (no training needed)."""
    path = tiny.study_file(tmp, bert_dir, name=name, pruner={"name": "median"})
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{tmp / (name + '.db')}", direction="maximize")
    dist = {"train.learning_rate": FloatDistribution(1e-3, 1e-2, log=True), "peft.r": IntDistribution(2, 8)}
    for _i, (lr, r, curve, state) in enumerate(
        [
            (0.002, 4, [0.6, 0.7, 0.75], TrialState.COMPLETE),
            (0.008, 8, [0.55, 0.8, 0.85], TrialState.COMPLETE),
            (0.001, 2, [0.5], TrialState.PRUNED),
            (0.004, 6, [0.62, 0.72, 0.7], TrialState.COMPLETE),
        ]
    ):
        steps = {10 * (j + 1): v for j, v in enumerate(curve)}
        config = {"model": "tiny", "train": {"learning_rate": lr}, "peft": {"r": r}}
        study.add_trial(
            optuna.trial.create_trial(
                params={"train.learning_rate": lr, "peft.r": r},
                distributions=dist,
                state=state,
                value=curve[-1] if state == TrialState.COMPLETE else None,
                intermediate_values=steps,
                user_attrs={"config": config, "final_step": max(steps)},
            )
        )
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"error": "ValueError: boom <b>"}))
    return path


def test_report_holds_header_trials_best_config_and_plots_offline(tmp_path: Path, bert_dir: Path) -> None:
    path = make_study(tmp_path, bert_dir)
    out = tmp_path / "report.html"
    assert main(["report", str(path), "--out", str(out)]) == 0
    page = out.read_text()
    for text in ("Study rep", "accuracy (maximize)", "tpe", "median", "n_trials 4", "rep.db", "wall time"):
        assert text in page
    rows = re.findall(r'<tr[^>]*data-trial="(\d+)" data-state="(\w+)"', page)
    assert rows == [("0", "COMPLETE"), ("1", "COMPLETE"), ("2", "PRUNED"), ("3", "COMPLETE"), ("4", "FAIL")]
    assert "pruned at step 10" in page and "ValueError: boom &lt;b&gt;" in page  # escaped
    assert re.search(r'<tr class="best" data-trial="1"', page)
    assert 'id="best-config"' in page and "learning_rate: 0.008" in page
    assert re.search(r"<details><summary>Trial 1's whole config</summary><pre id=\"best-config\">", page)  # folded
    plots = re.findall(r'data-plot="([\w-]+)"', page)
    assert plots == ["history", "learning-curves", "importances", "parallel", "slice"]
    assert not re.search(r'<script[^>]+src=|<link[^>]+href=["\']?https?:', page)  # nothing fetched


def make_wide_study(tmp: Path, bert_dir: Path, name: str = "wide", n_complete: int = 4) -> Path:
    """A study over the shipped LoRA space's shape: five searched params and one fixed (a one-choice categorical),
    each trial's stored config the base plus its params, as `sftune run` stores them."""
    from search.config import load_study

    path = tiny.study_file(
        tmp,
        bert_dir,
        name=name,
        space={
            "train.learning_rate": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
            "train.batch_size": {"type": "categorical", "choices": [8, 16, 32]},
            "train.warmup_ratio": {"type": "float", "low": 0.0, "high": 0.1},
            "peft.r": {"type": "categorical", "choices": [4, 8, 16, 32]},
            "peft.dropout": {"type": "float", "low": 0.0, "high": 0.1},
            "peft.target_modules": {"type": "categorical", "choices": ["all-linear"]},
        },
    )
    cfg = load_study(str(path), [])
    dist = {
        "train.learning_rate": FloatDistribution(1e-4, 3e-3, log=True),
        "train.batch_size": CategoricalDistribution([8, 16, 32]),
        "train.warmup_ratio": FloatDistribution(0.0, 0.1),
        "peft.r": CategoricalDistribution([4, 8, 16, 32]),
        "peft.dropout": FloatDistribution(0.0, 0.1),
        "peft.target_modules": CategoricalDistribution(["all-linear"]),
    }
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{tmp / (name + '.db')}", direction="maximize")
    for i in range(n_complete):
        params = {
            "train.learning_rate": 1e-4 * (1.5 + i),
            "train.batch_size": [8, 16, 32][i % 3],
            "train.warmup_ratio": 0.01 * (i + 1),
            "peft.r": [4, 8, 16, 32][i % 4],
            "peft.dropout": 0.01 * i,
            "peft.target_modules": "all-linear",
        }
        config = cfg.trial_config(params, i)
        config["train"]["threads"] = 1
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions=dist,
                value=0.6 + 0.05 * (i % 3) + 0.001 * i,
                intermediate_values={10: 0.5, 20: 0.6 + 0.05 * (i % 3)},
                user_attrs={"config": config},
            )
        )
    return path


def test_best_trial_shows_its_searched_values_and_what_differs_from_the_base(tmp_path: Path, bert_dir: Path) -> None:
    path = make_wide_study(tmp_path, bert_dir)
    out = tmp_path / "wide.html"
    assert main(["report", str(path), "--out", str(out)]) == 0
    page = out.read_text()
    best = page[page.index('id="best-params"') : page.index("<details>")]
    searched = re.findall(r"<tr><th>([\w.]+)</th><td", best[: best.index("</table>")])
    assert searched == ["train.learning_rate", "train.batch_size", "train.warmup_ratio", "peft.r", "peft.dropout"]
    assert '<p id="best">Trial 2: accuracy 0.702</p>' in page
    assert '<tr><th>train.batch_size</th><td class="num">32</td><td class="num">16</td></tr>' in best  # vs base
    changes = best[best.index('id="best-changes"') :]
    # the fixed value differs from the base (not searched, so here); a trial's own folder and threads do not count
    assert re.findall(r"<tr><th>([\w.]+)</th><td", changes) == ["peft.target_modules"]
    assert "<details><summary>Trial 2's whole config</summary>" in page
    caption = re.search(r'data-plot="importances".*?<figcaption class="warn">([^<]*)</figcaption>', page, re.DOTALL)
    assert caption and "from 4 complete trials: fewer than 10, so read them as a hint" in caption.group(1)
    for plot in ("importances", "parallel", "slice"):  # searched params only: a fixed value is no parameter
        figure = page[page.index(f'data-plot="{plot}"') :].split("</figure>")[0]
        assert "peft.dropout" in figure and "peft.target_modules" not in figure, plot


def test_importances_with_enough_trials_carry_no_warning(tmp_path: Path, bert_dir: Path) -> None:
    path = make_wide_study(tmp_path, bert_dir, name="many", n_complete=10)
    out = tmp_path / "many.html"
    assert main(["report", str(path), "--out", str(out)]) == 0
    caption = re.search(r'data-plot="importances".*?<figcaption>([^<]*)</figcaption>', out.read_text(), re.DOTALL)
    assert caption and caption.group(1).endswith("from 10 complete trials")


MEASURE = """<script>window.addEventListener("load", () => setTimeout(() => {
  const plots = [...document.querySelectorAll("figure.plot")].map(f => {
    const div = f.querySelector(".plotly-graph-div"), svg = f.querySelector("svg.main-svg");
    const box = div.getBoundingClientRect();
    return {plot: f.dataset.plot, right: box.right, width: box.width, svg: svg ? +svg.getAttribute("width") : -1};
  });
  const out = document.createElement("pre");
  out.id = "measures";
  out.textContent = JSON.stringify({view: document.documentElement.clientWidth,
                                    page: document.documentElement.scrollWidth, plots: plots});
  document.body.appendChild(out);
}, 1500));</script>"""


@needs_chromium
@pytest.mark.parametrize("width", [1280, 800])
def test_every_plot_fits_a_1280_pixel_page_in_headless_chromium(tmp_path: Path, bert_dir: Path, width: int) -> None:
    import json

    path = make_wide_study(tmp_path, bert_dir)  # five params: Optuna draws the slice plot 300 px a param
    out = tmp_path / "wide.html"
    assert main(["report", str(path), "--out", str(out)]) == 0
    measured = tmp_path / "measured.html"
    measured.write_text(out.read_text().replace("</body>", MEASURE + "</body>"))
    dom = _dump_dom(measured.as_uri(), tmp_path, window=f"{width},1000")
    found = re.search(r'<pre id="measures">(.*?)</pre>', dom, re.DOTALL)
    assert found, dom[-2000:]
    m = json.loads(html.unescape(found.group(1)))
    assert width - 80 <= m["view"] <= width, m  # the window's width, less a scroll bar
    assert m["page"] <= m["view"], m  # nothing makes the page scroll sideways
    assert {p["plot"] for p in m["plots"]} >= {"history", "learning-curves", "importances", "parallel", "slice"}
    for plot in m["plots"]:
        assert plot["svg"] > 0, plot  # drawn
        assert plot["right"] <= m["view"] and plot["width"] <= m["view"] and plot["svg"] <= m["view"], (plot, m)


def test_report_of_a_study_that_does_not_exist_creates_nothing(tmp_path: Path, bert_dir: Path) -> None:
    path = tiny.study_file(tmp_path, bert_dir, name="ghost")
    assert main(["report", str(path), "--out", str(tmp_path / "r.html")]) == 2
    assert not (tmp_path / "ghost.db").exists() and not (tmp_path / "r.html").exists()


def _dump_dom(url: str, tmp: Path, budget_ms: int = 15000, window: str | None = None) -> str:
    proc = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-dev-shm-usage",
            f"--user-data-dir={tmp / 'chromium-profile'}",
            *([f"--window-size={window}"] if window else []),
            f"--virtual-time-budget={budget_ms}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@needs_chromium
def test_report_renders_trials_and_plots_in_headless_chromium(tmp_path: Path, bert_dir: Path) -> None:
    path = make_study(tmp_path, bert_dir)
    out = tmp_path / "report.html"
    assert main(["report", str(path), "--out", str(out)]) == 0
    dom = _dump_dom(out.as_uri(), tmp_path)
    assert len(re.findall(r'data-trial="\d+"', dom)) == 5
    # plotly draws each figure as <svg class="main-svg"> inside its div once the inlined JS has run
    figures = dom.split('<figure class="plot"')[1:]
    drawn = [re.search(r'data-plot="([\w-]+)"', f).group(1) for f in figures if 'class="main-svg"' in f]
    assert len(drawn) >= 3, drawn
    assert "learning-curves" in drawn and "history" in drawn


@needs_chromium
def test_dashboard_page_lists_the_trials_in_headless_chromium(tmp_path: Path, bert_dir: Path) -> None:
    import json
    import socket
    import sys
    import time
    import urllib.request

    path = make_study(tmp_path, bert_dir, name="dash")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "search", "dashboard", str(path), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for _ in range(240):  # the server is up when its API answers
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as resp:
                    study_id = json.loads(resp.read())["study_summaries"][0]["study_id"]
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(0.5)
        else:
            pytest.fail("optuna-dashboard did not answer in 120 s")
        dom = _dump_dom(f"http://127.0.0.1:{port}/dashboard/studies/{study_id}/trials", tmp_path)
        listed = sorted(set(re.findall(r"Trial (\d+)", dom)), key=int)
        assert listed == ["0", "1", "2", "3", "4"], dom[-2000:]
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_multi_objective_report_has_the_pareto_front(tmp_path: Path, bert_dir: Path) -> None:
    path = tiny.study_file(tmp_path, bert_dir, name="mo", objective=[{"metric": "accuracy"}, {"metric": "eval_loss"}])
    study = optuna.create_study(
        study_name="mo", storage=f"sqlite:///{tmp_path / 'mo.db'}", directions=["maximize", "minimize"]
    )
    dist = {"train.learning_rate": FloatDistribution(1e-3, 1e-2, log=True)}
    for lr, acc, loss in [(0.002, 0.7, 0.5), (0.005, 0.8, 0.6), (0.009, 0.6, 0.7)]:
        study.add_trial(
            optuna.trial.create_trial(
                params={"train.learning_rate": lr},
                distributions=dist,
                values=[acc, loss],
                intermediate_values={10: acc},
            )
        )
    out = tmp_path / "mo.html"
    assert main(["report", str(path), "--out", str(out)]) == 0
    page = out.read_text()
    plots = re.findall(r'data-plot="([\w-]+)"', page)
    assert plots[:3] == ["pareto", "history-accuracy", "history-eval_loss"]
    assert "2 trials on the Pareto front" in page
    assert len(re.findall(r'<tr class="best"', page)) == 2


def test_the_best_trial_shows_what_it_generated(tmp_path: Path, bert_dir: Path) -> None:
    """With `eval:` generation metrics each trial keeps a few samples: the report shows the best trial's, escaped."""
    path = make_study(tmp_path, bert_dir)
    study = optuna.load_study(study_name="rep", storage=f"sqlite:///{tmp_path / 'rep.db'}")
    samples = [{"prompt": "add 3 and 4 :", "output": " 7 <i>", "reference": " 7"}]
    dist = {"train.learning_rate": FloatDistribution(1e-3, 1e-2, log=True), "peft.r": IntDistribution(2, 8)}
    study.add_trial(
        optuna.trial.create_trial(
            params={"train.learning_rate": 0.005, "peft.r": 4},
            distributions=dist,
            value=0.9,
            intermediate_values={10: 0.9},
            user_attrs={"config": {"model": "tiny"}, "final_step": 10, "generations": {"step": 30, "samples": samples}},
        )
    )
    best = study.best_trial
    out = tmp_path / "report.html"
    assert main(["report", str(path), "--out", str(out)]) == 0
    page = out.read_text()
    table = page[page.index('id="best-generations"') :]
    assert f"What trial {best.number} wrote at step 30" in page
    assert "add 3 and 4 :" in table and " 7 &lt;i&gt;" in table and "<i>" not in table.split("</table>")[0]
