"""What a running study tells the person watching it: one interface, plain lines or a live view.

The Ray adapter calls these methods from the driver as trials start, report, finish; `LineProgress`
prints plain lines (logs, CI, a pipe), `LiveProgress` redraws a live view in a terminal (rich), and
`make_progress` picks one.

The live view reads at 80 columns: one line per trial, its searched params only (a key whose distribution
has a single value is not searched, and not shown), each as a short name and a short number, and no number is
ever split across lines. The short name is the key's last dotted part, looked up in `SHORT_NAMES` for the
common ones (`train.learning_rate` -> `lr`, `peft.r` -> `r`); two keys that would end up with the same name
keep their full dotted names. A number has three significant digits, in compact scientific form below 0.01
and from 1000 up (`1.48e-3`). When the terminal is too narrow for every column, the view drops the elapsed
column first, then the bar (the step count stays); only then does a trial's params wrap, between params.
"""

from __future__ import annotations

import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol


def short(value: Any) -> str:
    """A sampled value as a person reads it: floats to 3 significant digits."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={short(v)}" for k, v in params.items())


SHORT_NAMES = {
    "learning_rate": "lr",
    "batch_size": "bs",
    "eval_batch_size": "ebs",
    "gradient_accumulation": "ga",
    "warmup_ratio": "wu",
    "weight_decay": "wd",
    "lr_scheduler": "sched",
    "max_grad_norm": "clip",
    "max_length": "len",
    "max_steps": "steps",
    "epochs": "ep",
    "dropout": "do",
    "lora_dropout": "do",
    "alpha": "alpha",
    "lora_alpha": "alpha",
    "r": "r",
    "target_modules": "tm",
    "method": "peft",
    "precision": "prec",
    "class_weights": "cw",
}
"""The live view's names for common params, by the key's last dotted part (any other key: that part itself)."""


def short_number(value: Any) -> str:
    """A value as the live view shows it: a float to 3 significant digits, in compact scientific form below
    0.01 and from 1000 up (`1.48e-3`, `2.5e4`); anything else as it is."""
    if not isinstance(value, float):
        return str(value)
    text = f"{value:.3g}"
    if math.isfinite(value) and value != 0 and ("e" in text or abs(value) < 0.01):
        mantissa, exponent = f"{value:.2e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".")
        return f"{mantissa}e{int(exponent)}"
    return text


def short_names(keys: Iterable[str]) -> dict[str, str]:
    """Each key's short name in the live view (see the module's docstring for the rule)."""
    keys = list(keys)
    names = {k: SHORT_NAMES.get(k.rsplit(".", 1)[-1], k.rsplit(".", 1)[-1]) for k in keys}
    taken = list(names.values())
    return {k: n if taken.count(n) == 1 else k for k, n in names.items()}


def param_items(params: dict[str, Any], hidden: Iterable[str] = ()) -> list[str]:
    """The live view's params of one trial: `["lr 1.48e-3", "bs 32", ...]`, the `hidden` keys left out."""
    shown = {k: v for k, v in params.items() if k not in set(hidden)}
    names = short_names(shown)
    return [f"{names[k]} {short_number(v)}" for k, v in shown.items()]


def fixed_keys(space: Any) -> frozenset[str]:
    """The keys of a search space that are not searched: a categorical of one choice, a range of one value."""
    return frozenset(
        p.name
        for p in getattr(space, "params", ())
        if (p.type == "categorical" and len(p.choices) == 1)
        or (p.type != "categorical" and p.low is not None and p.low == p.high)
    )


def finished_line(number: int | None, state: str, values: list[float] | None, message: str, metrics: list[str]) -> str:
    """The line that says how a trial ended, the same in plain lines and in the live view's log."""
    who = f"trial {number}" if number is not None else "a trial"
    if state == "COMPLETE":
        shown = ", ".join(f"{m}={v:.4f}" for m, v in zip(metrics, values or [], strict=False)) or message
        return f"{who} complete: {shown}"
    if state == "PRUNED":
        return f"{who} pruned{': ' + message if message else ''}"
    return f"{who} FAILED: {message}"


class Progress(Protocol):
    """Events of one `sftune run`, in the order they happen (all calls come from the driver's thread)."""

    def message(self, text: str) -> None:
        """A line of its own: the header, `ray: ...`, a note, why the run stopped."""

    def trial_started(self, number: int, params: dict[str, Any]) -> None:
        """Optuna trial `number` was asked and its params sent to a worker."""

    def trial_reported(self, number: int, step: int, max_steps: int | None, metrics: dict[str, float]) -> None:
        """An evaluation of trial `number` at optimizer step `step` of `max_steps`."""

    def trial_finished(self, number: int | None, state: str, values: list[float] | None, message: str) -> None:
        """Trial `number` ended: state COMPLETE | PRUNED | FAIL; `message` says why (pruned at step N, the error).

        `number` is None for a trial that failed before Optuna was asked for it.
        """

    def counts(self, *, finished: int, n_trials: int, running: int, pruned: int, failed: int, best: str) -> None:
        """The study's counts after a trial ended: finished (complete + pruned, in storage) of n_trials."""

    def close(self) -> None:
        """The run is over (normally, interrupted or failed): restore the terminal."""


class LineProgress:
    """Plain lines, one per event: what `sftune run` prints when stdout is not a terminal."""

    def __init__(self, say: Callable[[str], None], metrics: tuple[str, ...] | list[str] = ()) -> None:
        self.say = say
        self.metrics = list(metrics)
        self.started = time.time()

    def message(self, text: str) -> None:
        self.say(text)

    def trial_started(self, number: int, params: dict[str, Any]) -> None:
        self.say(f"trial {number} started: {params_text(params)}")

    def trial_reported(self, number: int, step: int, max_steps: int | None, metrics: dict[str, float]) -> None:
        of = f"/{max_steps}" if max_steps else ""
        self.say(f"trial {number} step {step}{of}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    def trial_finished(self, number: int | None, state: str, values: list[float] | None, message: str) -> None:
        self.say(finished_line(number, state, values, message, self.metrics))

    def counts(self, *, finished: int, n_trials: int, running: int, pruned: int, failed: int, best: str) -> None:
        self.say(
            f"[{time.time() - self.started:6.0f}s] finished {finished}/{n_trials} · running {running} · "
            f"pruned {pruned} · failed {failed} · {best}"
        )

    def close(self) -> None:
        pass


def _clock_text(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass
class _Row:
    """One trial in the live view."""

    number: int
    params: dict[str, Any]
    started: float
    step: int = 0
    max_steps: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    state: str = "RUNNING"
    message: str = ""
    ended: float | None = None


class LiveProgress:
    """A live terminal view (rich): a row per running trial with a bar of its steps, the study's counts,
    the best so far and an estimate of the time left. A trial that ends says how in its row for
    `linger_s` seconds before it leaves; each end is also printed as a line that stays above the view.

    A trial with no evaluation yet says why: "waiting for a free slot" when more trials are running than the
    cluster has `slots` for, else "starting: worker loading torch" until a trial of this run has reported
    (the workers are still importing the training stack), then "starting: first steps" (a warm worker
    loads the model and trains up to the first evaluation). `hidden`: keys not shown (not searched).
    """

    def __init__(
        self,
        say: Callable[[str], None] | None = None,
        metrics: tuple[str, ...] | list[str] = (),
        *,
        console: Any = None,
        linger_s: float = 3.0,
        clock: Callable[[], float] = time.time,
        refresh_per_second: float = 4,
        hidden: Iterable[str] = (),
        slots: int | None = None,
    ) -> None:
        from rich.console import Console

        self.say = say
        self.metrics = list(metrics)
        self.hidden = frozenset(hidden)
        self.slots = slots
        """How many trials the cluster runs at once (None: as many as are started)."""
        self.reported = False
        """A trial of this run has reported an evaluation (its worker had the training stack loaded)."""
        self.params_of: dict[int, dict[str, Any]] = {}
        self.console = console or Console()
        self.linger_s = linger_s
        self.clock = clock
        self.refresh_per_second = refresh_per_second
        self.started = clock()
        self.rows: dict[int, _Row] = {}
        self.totals: dict[str, Any] | None = None
        self.durations: list[float] = []
        """Seconds of each trial that finished during this run (complete or pruned)."""
        self.most_running = 0
        self._live: Any = None
        self._lock = threading.RLock()

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its searcher and scheduler, which hold the progress: the terminal parts stay here."""
        return {k: v for k, v in self.__dict__.items() if k not in ("console", "_live", "_lock", "say")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        from rich.console import Console

        self.__dict__.update(state, console=Console(), _live=None, _lock=threading.RLock(), say=None)

    # -- events ---------------------------------------------------------------------------------
    def message(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def trial_started(self, number: int, params: dict[str, Any]) -> None:
        with self._lock:
            self.rows[number] = _Row(number, dict(params), self.clock())
            self.params_of[number] = dict(params)
            self.most_running = max(self.most_running, self._running())
        self._start()

    def trial_reported(self, number: int, step: int, max_steps: int | None, metrics: dict[str, float]) -> None:
        with self._lock:
            row = self.rows.get(number)
            if row is None:
                row = self.rows[number] = _Row(number, {}, self.clock())
            row.step, row.max_steps = step, max_steps or row.max_steps
            row.metrics.update(metrics)  # an evaluation that did not generate keeps the last generated values
            self.reported = True
        self._refresh()

    def trial_finished(self, number: int | None, state: str, values: list[float] | None, message: str) -> None:
        now = self.clock()
        with self._lock:
            row = self.rows.get(number) if number is not None else None
            if row is not None:
                row.state, row.message, row.ended = state, message, now
                if values:
                    row.metrics.update(zip(self.metrics, values, strict=False))
                if state in ("COMPLETE", "PRUNED"):
                    self.durations.append(now - row.started)
        self.message(finished_line(number, state, values, message, self.metrics))
        self._refresh()

    def counts(self, *, finished: int, n_trials: int, running: int, pruned: int, failed: int, best: str) -> None:
        with self._lock:
            self.totals = {
                "finished": finished,
                "n_trials": n_trials,
                "running": running,
                "pruned": pruned,
                "failed": failed,
                "best": self._short_best(best),
            }
        self._refresh()

    def close(self) -> None:
        live, self._live = self._live, None
        if live is not None:
            live.stop()
        if self.totals:
            self.message(self._counts_line())

    # -- view -----------------------------------------------------------------------------------
    def _running(self) -> int:
        return sum(r.state == "RUNNING" for r in self.rows.values())

    def _start(self) -> None:
        if self._live is not None:
            return
        from rich.live import Live

        self._live = Live(
            get_renderable=self.render,
            console=self.console,
            transient=True,
            refresh_per_second=self.refresh_per_second,
            redirect_stdout=True,
            redirect_stderr=True,
        )
        self._live.start()

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.refresh()

    def time_left(self) -> float | None:
        """Seconds until the study holds n_trials finished trials, from this run's pace; None: too early."""
        if not self.totals:
            return None
        now = self.clock()
        running = [r for r in self.rows.values() if r.state == "RUNNING"]
        average = sum(self.durations) / len(self.durations) if self.durations else None
        left_running = []
        for r in running:
            if r.step and r.max_steps:
                left_running.append((now - r.started) * (r.max_steps - r.step) / r.step)
            elif average is not None:
                left_running.append(max(0.0, average - (now - r.started)))
            else:
                return None
        to_start = max(0, self.totals["n_trials"] - self.totals["finished"] - len(running))
        if to_start and average is None:
            known = [(now - r.started) * r.max_steps / r.step for r in running if r.step and r.max_steps]
            if not known:
                return None
            average = sum(known) / len(known)
        slots = max(1, self.most_running)
        return max(max(left_running, default=0.0), (sum(left_running) + to_start * (average or 0.0)) / slots)

    def _counts_line(self) -> str:
        t = self.totals or {}
        elapsed = _clock_text(self.clock() - self.started)
        if not t:  # no trial has ended yet: what is running
            running = self._running()
            return f"running {running} · {elapsed} elapsed" if running else f"starting · {elapsed} elapsed"
        left = self.time_left()
        eta = (
            ""
            if t["finished"] >= t["n_trials"]
            else (f" · about {_clock_text(left)} left" if left is not None else " · estimating time left")
        )
        return (
            f"finished {t['finished']}/{t['n_trials']} · running {t['running']} · pruned {t['pruned']} · "
            f"failed {t['failed']} · {elapsed} elapsed{eta}"
        )

    def _short_best(self, best: str) -> str:
        """The driver's best line with the best trial's params as the rows show them, where this run knows them."""
        found = re.search(r"\(trial (\d+): .*\)$", best)
        params = self.params_of.get(int(found.group(1))) if found else None
        if not found or params is None:
            return best
        return best[: found.start()] + f"(trial {found.group(1)}: {' · '.join(param_items(params, self.hidden))})"

    def render(self) -> Any:
        """The live view: counts and best, then one row per trial (what `Live` redraws)."""
        from rich.console import Group

        with self._lock:
            now = self.clock()
            for number in [n for n, r in self.rows.items() if r.ended is not None and now - r.ended > self.linger_s]:
                del self.rows[number]
            header = _Dotted(self._counts_line(), style="bold")
            best = _Dotted((self.totals or {}).get("best", "no complete trial yet"))
            return Group(header, best, _Rows(self._cells(now)))

    def _why_waiting(self, row: _Row) -> tuple[str, str]:
        """Why a RUNNING trial has no evaluation yet: (long, short) words."""
        before = sum(
            r.state == "RUNNING" and (r.started, r.number) < (row.started, row.number) for r in self.rows.values()
        )
        if self.slots is not None and before >= self.slots:
            return "waiting for a free slot", "no free slot"
        if not self.reported:
            return "starting: worker loading torch", "loading torch"
        return "starting: first steps", "first steps"

    def _cells(self, now: float) -> list[_Cells]:
        metric_name = self.metrics[0] if self.metrics else "metric"
        cells = []
        for row in sorted(self.rows.values(), key=lambda r: r.number):
            metric = row.metrics.get(metric_name) if self.metrics else next(iter(row.metrics.values()), None)
            end = row.ended if row.ended is not None else now
            cell = _Cells(
                str(row.number),
                param_items(row.params, self.hidden),
                f"{row.step}/{row.max_steps}" if row.max_steps else (str(row.step) if row.step else "-"),
                f"{metric:.4f}" if isinstance(metric, float) else "-",
                _clock_text(end - row.started),
                metric_name,
            )
            if row.state == "RUNNING" and row.max_steps:
                cell.bar = (row.step, row.max_steps)
            elif row.state == "RUNNING":
                cell.status = self._why_waiting(row)
                cell.style = "dim"
            else:
                word = {"COMPLETE": "complete", "PRUNED": "pruned"}.get(row.state, "FAILED")
                if row.message.lower().startswith(word.lower()):
                    said = row.message
                elif row.message.startswith("at "):
                    said = f"{word} {row.message}"
                else:
                    said = f"{word}{': ' + row.message if row.message else ''}"
                cell.status = (said,)  # cut with an ellipsis when narrow: the line above the view says it all
                cell.style = {"COMPLETE": "green", "PRUNED": "yellow"}.get(row.state, "red")
            cells.append(cell)
        return cells


class _Dotted:
    """A line of parts joined by " · ", wrapped between parts when it does not fit (a part wider than the
    terminal wraps between its words)."""

    def __init__(self, text: str, style: str = "") -> None:
        self.text, self.style = text, style

    def __rich_console__(self, console: Any, options: Any) -> Any:
        from rich.text import Text

        for line in _wrap(self.text.split(" · "), options.max_width):
            yield Text(line, style=self.style)


BAR_WIDTH, MIN_BAR_WIDTH = 24, 6
"""A trial's bar of steps: its width when there is room, and the narrowest before the bar is dropped."""


@dataclass
class _Cells:
    """What one trial's row shows, as text; `bar` (step, max_steps) or `status` (words, then shorter ones)."""

    number: str
    params: list[str]
    step: str
    metric: str
    elapsed: str
    metric_name: str
    bar: tuple[int, int] | None = None
    status: tuple[str, ...] | None = None
    style: str = ""


class _Rows:
    """The trials' rows, laid out for the width they are drawn at: one line per trial while the params fit;
    the elapsed column goes first, then the bar, and only then do params wrap (between params, never inside one).
    A trial without a bar says its status across the bar and step columns (and the metric's, when it has none).
    """

    def __init__(self, cells: list[_Cells]) -> None:
        self.cells = cells

    def layout(self, width: int) -> tuple[dict[str, int], int, bool]:
        """Column widths, the progress column's width (0: no bar) and whether elapsed shows, at `width` columns."""
        cells = self.cells
        w = {
            "number": max(len("#"), *(len(c.number) for c in cells)),
            "params": max(len("params"), *(len(" · ".join(c.params)) for c in cells)),
            "step": max(len("step"), *(len(c.step) for c in cells)),
            "metric": max(len(cells[0].metric_name), *(len(c.metric) for c in cells)),
            "elapsed": max(len("elapsed"), *(len(c.elapsed) for c in cells)),
        }
        fixed = w["number"] + 1 + w["params"] + 1 + w["step"] + 1 + w["metric"]
        # the progress column: a bar, or wider where there is room for a status's words in full
        want = max(
            [BAR_WIDTH]
            + [
                len(c.status[0]) - 1 - w["step"] - (1 + w["metric"] if c.metric == "-" else 0)
                for c in cells
                if c.status
            ]
        )
        for elapsed in (True, False):
            room = width - fixed - (1 + w["elapsed"] if elapsed else 0) - 1
            if room >= MIN_BAR_WIDTH:
                return w, min(want, room), elapsed
        longest = max(len(p) for c in cells for p in c.params) if any(c.params for c in cells) else 0
        w["params"] = max(min(w["params"], width - (fixed - w["params"])), longest, len("params"))
        return w, 0, False

    def __rich_console__(self, console: Any, options: Any) -> Any:
        from rich.text import Text

        if not self.cells:
            return
        w, bar, elapsed = self.layout(options.max_width)
        head = Text(no_wrap=True, overflow="crop", style="bold")
        head.append(f"{'#':>{w['number']}} {'params':<{w['params']}} ")
        if bar:
            head.append(f"{'progress' if bar >= len('progress') else '':<{bar}} ")
        head.append(f"{'step':>{w['step']}} {self.cells[0].metric_name:>{w['metric']}}")
        if elapsed:
            head.append(f" {'elapsed':>{w['elapsed']}}")
        yield head
        for cell in self.cells:
            lines = _wrap(cell.params, w["params"])
            line = Text(no_wrap=True, overflow="crop")
            line.append(f"{cell.number:>{w['number']}} {lines[0]:<{w['params']}} ")
            if cell.status is None:
                if bar:
                    drawn = min(bar, BAR_WIDTH)
                    done = min(drawn, round(drawn * cell.bar[0] / cell.bar[1])) if cell.bar and cell.bar[1] else 0
                    line.append("━" * done, style="bar.complete")
                    line.append("━" * (drawn - done), style="bar.back")
                    line.append(" " * (bar - drawn + 1))
                line.append(f"{cell.step:>{w['step']}} {cell.metric:>{w['metric']}}")
            else:
                spans_metric = cell.metric == "-"
                room = (bar + 1 if bar else 0) + w["step"] + (1 + w["metric"] if spans_metric else 0)
                words = next((s for s in cell.status if len(s) <= room), cell.status[-1])
                if len(words) > room:
                    words = words[: room - 1] + "…"
                line.append(f"{words:<{room}}", style=cell.style)
                if not spans_metric:
                    line.append(f" {cell.metric:>{w['metric']}}")
            if elapsed:
                line.append(f" {cell.elapsed:>{w['elapsed']}}")
            yield line
            for more in lines[1:]:
                yield Text(f"{'':>{w['number']}} {more}", no_wrap=True, overflow="crop")


def _wrap(items: list[str], width: int) -> list[str]:
    """`items` joined by " · " in lines of up to `width` columns, broken between items only."""
    lines: list[str] = []
    for item in items:
        if lines and len(lines[-1]) + 3 + len(item) <= width:
            lines[-1] += " · " + item
        else:
            lines.append(item)
    return lines or [""]


def _live_terminal() -> bool:
    """stdout is a terminal a person watches (not a pipe, not CI, not TERM=dumb)."""
    try:
        tty = sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False
    return tty and not os.environ.get("CI") and os.environ.get("TERM", "") != "dumb"


def make_progress(
    say: Callable[[str], None],
    metrics: tuple[str, ...] | list[str] = (),
    *,
    live: bool | None = None,
    space: Any = None,
    slots: int | None = None,
) -> Progress:
    """The live view when stdout is a terminal (or `live=True`), plain lines otherwise (or `live=False`).

    `space`: the study's search space (the live view leaves out its keys that are not searched);
    `slots`: how many trials run at once (the live view says when a trial waits for one).
    """
    if live is None:
        live = _live_terminal()
    if live:
        return LiveProgress(say, metrics, hidden=fixed_keys(space), slots=slots)
    return LineProgress(say, metrics)
