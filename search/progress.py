"""What a running study tells the person watching it: one interface, plain lines or a live view.

The Ray adapter calls these methods from the driver as trials start, report, finish; `LineProgress`
prints plain lines (logs, CI, a pipe). A live terminal view implements the same `Progress` methods.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Protocol


def short(value: Any) -> str:
    """A sampled value as a person reads it: floats to 3 significant digits."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={short(v)}" for k, v in params.items())


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


def make_progress(say: Callable[[str], None], metrics: tuple[str, ...] | list[str] = ()) -> Progress:
    """The progress a run shows: plain lines (a live terminal view plugs in here)."""
    return LineProgress(say, metrics)
