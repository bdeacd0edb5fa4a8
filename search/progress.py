"""What a running study tells the person watching it: one interface, plain lines or a live view.

The Ray adapter calls these methods from the driver as trials start, report, finish; `LineProgress`
prints plain lines (logs, CI, a pipe), `LiveProgress` redraws a live view in a terminal (rich), and
`make_progress` picks one.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol


def short(value: Any) -> str:
    """A sampled value as a person reads it: floats to 3 significant digits."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={short(v)}" for k, v in params.items())


def short_params_text(params: dict[str, Any]) -> str:
    """Like `params_text`, each key by its last part (`r` for `peft.r`) where that is unambiguous."""
    last = [k.rsplit(".", 1)[-1] for k in params]
    return ", ".join(f"{n if last.count(n) == 1 else k}={short(v)}" for k, n, v in zip(params, last, params.values()))


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
        who = f"trial {number}" if number is not None else "a trial"
        if state == "COMPLETE":
            shown = ", ".join(f"{m}={v:.4f}" for m, v in zip(self.metrics, values or [])) or message
            self.say(f"{who} complete: {shown}")
        elif state == "PRUNED":
            self.say(f"{who} pruned{': ' + message if message else ''}")
        else:
            self.say(f"{who} FAILED: {message}")

    def counts(self, *, finished: int, n_trials: int, running: int, pruned: int, failed: int, best: str) -> None:
        self.say(f"[{time.time() - self.started:6.0f}s] finished {finished}/{n_trials} · running {running} · "
                 f"pruned {pruned} · failed {failed} · {best}")

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
    """

    def __init__(self, say: Callable[[str], None] | None = None, metrics: tuple[str, ...] | list[str] = (), *,
                 console: Any = None, linger_s: float = 3.0, clock: Callable[[], float] = time.time,
                 refresh_per_second: float = 4) -> None:
        from rich.console import Console

        self.say = say
        self.metrics = list(metrics)
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
            self.most_running = max(self.most_running, self._running())
        self._start()

    def trial_reported(self, number: int, step: int, max_steps: int | None, metrics: dict[str, float]) -> None:
        with self._lock:
            row = self.rows.get(number)
            if row is None:
                row = self.rows[number] = _Row(number, {}, self.clock())
            row.step, row.max_steps = step, max_steps or row.max_steps
            row.metrics = dict(metrics)
        self._refresh()

    def trial_finished(self, number: int | None, state: str, values: list[float] | None, message: str) -> None:
        now = self.clock()
        with self._lock:
            row = self.rows.get(number) if number is not None else None
            if row is not None:
                row.state, row.message, row.ended = state, message, now
                if values:
                    row.metrics.update(zip(self.metrics, values))
                if state in ("COMPLETE", "PRUNED"):
                    self.durations.append(now - row.started)
        who = f"trial {number}" if number is not None else "a trial"
        if state == "COMPLETE":
            shown = ", ".join(f"{m}={v:.4f}" for m, v in zip(self.metrics, values or [])) or message
            self.message(f"{who} complete: {shown}")
        elif state == "PRUNED":
            self.message(f"{who} pruned{': ' + message if message else ''}")
        else:
            self.message(f"{who} FAILED: {message}")
        self._refresh()

    def counts(self, *, finished: int, n_trials: int, running: int, pruned: int, failed: int, best: str) -> None:
        with self._lock:
            self.totals = {"finished": finished, "n_trials": n_trials, "running": running, "pruned": pruned,
                           "failed": failed, "best": best}
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

        self._live = Live(get_renderable=self.render, console=self.console, transient=True,
                          refresh_per_second=self.refresh_per_second, redirect_stdout=True, redirect_stderr=True)
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
        eta = "" if t["finished"] >= t["n_trials"] else (
            f" · about {_clock_text(left)} left" if left is not None else " · estimating time left")
        return (f"finished {t['finished']}/{t['n_trials']} · running {t['running']} · pruned {t['pruned']} · "
                f"failed {t['failed']} · {elapsed} elapsed{eta}")

    def render(self) -> Any:
        """The live view: counts and best, then one row per trial (what `Live` redraws)."""
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        with self._lock:
            now = self.clock()
            for number in [n for n, r in self.rows.items() if r.ended is not None and now - r.ended > self.linger_s]:
                del self.rows[number]
            table = Table(box=None, padding=(0, 1), show_edge=False, header_style="bold")
            table.add_column("trial", justify="right")
            table.add_column("params", overflow="fold", ratio=3)
            table.add_column("progress", no_wrap=True)
            table.add_column("step", justify="right", no_wrap=True)
            table.add_column(self.metrics[0] if self.metrics else "metric", justify="right", no_wrap=True)
            table.add_column("elapsed", justify="right", no_wrap=True)
            for row in sorted(self.rows.values(), key=lambda r: r.number):
                table.add_row(*self._cells(row, now, ProgressBar, Text))
            header = Text(self._counts_line(), style="bold")
            best = Text((self.totals or {}).get("best", "no complete trial yet"))
            return Group(header, best, table)

    def _cells(self, row: _Row, now: float, bar_cls: Any, text_cls: Any) -> list[Any]:
        metric = row.metrics.get(self.metrics[0]) if self.metrics else next(iter(row.metrics.values()), None)
        shown = f"{metric:.4f}" if isinstance(metric, float) else "-"
        end = row.ended if row.ended is not None else now
        if row.state == "RUNNING":
            progress: Any = (bar_cls(total=row.max_steps, completed=row.step, width=24) if row.max_steps
                             else text_cls("starting", style="dim"))
        else:
            style = {"COMPLETE": "green", "PRUNED": "yellow"}.get(row.state, "red")
            word = {"COMPLETE": "complete", "PRUNED": "pruned"}.get(row.state, "FAILED")
            said = row.message if row.message.lower().startswith(word.lower()) else \
                f"{word}{': ' + row.message if row.message else ''}"
            progress = text_cls(said, style=style)
        step = f"{row.step}/{row.max_steps}" if row.max_steps else (str(row.step) if row.step else "-")
        return [str(row.number), text_cls(short_params_text(row.params)), progress, step, shown,
                _clock_text(end - row.started)]


def _live_terminal() -> bool:
    """stdout is a terminal a person watches (not a pipe, not CI, not TERM=dumb)."""
    try:
        tty = sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False
    return tty and not os.environ.get("CI") and os.environ.get("TERM", "") != "dumb"


def make_progress(say: Callable[[str], None], metrics: tuple[str, ...] | list[str] = (), *,
                  live: bool | None = None) -> Progress:
    """The live view when stdout is a terminal (or `live=True`), plain lines otherwise (or `live=False`)."""
    if live is None:
        live = _live_terminal()
    return LiveProgress(say, metrics) if live else LineProgress(say, metrics)
