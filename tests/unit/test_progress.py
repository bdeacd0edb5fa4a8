"""What a running study shows: plain lines in logs, a live view (rows, bars, counts, time left) in a terminal."""

from __future__ import annotations

import io

import pytest

from search.progress import LineProgress, LiveProgress, make_progress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _view(progress: LiveProgress) -> str:
    from rich.console import Console

    out = Console(file=io.StringIO(), width=140, color_system=None, force_terminal=False)
    out.print(progress.render())
    return out.file.getvalue()


def _live(clock: Clock) -> tuple[LiveProgress, io.StringIO]:
    from rich.console import Console

    printed = io.StringIO()
    console = Console(file=printed, width=140, color_system=None, force_terminal=False)
    return LiveProgress(None, ["accuracy"], console=console, clock=clock, linger_s=3.0), printed


def test_live_view_rows_bars_counts_best_and_time_left() -> None:
    clock = Clock()
    progress, printed = _live(clock)
    progress.message("study s · sqlite:///s.db")
    progress.trial_started(0, {"train.learning_rate": 0.00123456, "peft.r": 8})
    progress.trial_started(1, {"train.learning_rate": 0.01, "peft.r": 4})
    clock.now += 20
    progress.trial_reported(0, 50, 200, {"accuracy": 0.61, "eval_loss": 0.7})
    view = _view(progress)
    assert "learning_rate=0.00123, r=8" in view
    assert "50/200" in view and "0.6100" in view and "20s" in view
    assert "━" in view  # the bar of trial 0
    assert "starting" in view  # trial 1 has not evaluated yet
    assert view.splitlines()[0].startswith("running 2 · 20s elapsed")  # no trial has ended: no counts yet

    clock.now += 40
    progress.trial_reported(0, 100, 200, {"accuracy": 0.7})
    progress.trial_reported(1, 50, 200, {"accuracy": 0.4})
    progress.trial_finished(1, "PRUNED", None, "pruned at step 50")
    progress.counts(finished=1, n_trials=4, running=1, pruned=1, failed=0, best="no complete trial yet")
    view = _view(progress)
    assert "finished 1/4 · running 1 · pruned 1 · failed 0 · 1m00s elapsed · about" in view
    row1 = next(line for line in view.splitlines() if line.strip().startswith("1 "))
    assert "pruned at step 50" in row1  # the row says how it ended before it leaves
    assert "trial 1 pruned: pruned at step 50" in printed.getvalue()

    clock.now += 5  # past linger_s: the pruned row leaves, the running one stays
    view = _view(progress)
    assert not any(line.strip().startswith("1 ") for line in view.splitlines())
    assert any(line.strip().startswith("0 ") for line in view.splitlines())

    progress.trial_finished(0, "FAIL", None, "RuntimeError: out of memory")
    progress.counts(finished=1, n_trials=4, running=0, pruned=1, failed=1, best="no complete trial yet")
    view = _view(progress)
    row0 = next(line for line in view.splitlines() if line.strip().startswith("0 "))
    assert "FAILED: RuntimeError: out of memory" in row0
    progress.trial_started(2, {"peft.r": 2})
    progress.trial_finished(2, "COMPLETE", [0.8125], "")
    progress.counts(finished=2, n_trials=4, running=0, pruned=1, failed=1,
                    best="best accuracy 0.8125 (trial 2: r=2)")
    view = _view(progress)
    assert "best accuracy 0.8125 (trial 2: r=2)" in view
    assert "complete" in next(line for line in view.splitlines() if line.strip().startswith("2 "))
    progress.close()
    assert "finished 2/4" in printed.getvalue().splitlines()[-1]


def test_time_left_follows_the_pace_of_this_run() -> None:
    clock = Clock()
    progress, _ = _live(clock)
    for n in (0, 1):
        progress.trial_started(n, {})
    progress.counts(finished=0, n_trials=6, running=2, pruned=0, failed=0, best="")
    assert progress.time_left() is None  # nothing evaluated yet
    clock.now += 10
    progress.trial_reported(0, 50, 100, {"accuracy": 0.5})  # half way in 10 s: 20 s a trial
    progress.trial_reported(1, 50, 100, {"accuracy": 0.5})
    # 10 s left for each running trial, then 4 more trials of 20 s, two at a time
    assert progress.time_left() == pytest.approx((10 + 10 + 4 * 20) / 2)
    progress.close()


def test_make_progress_picks_plain_lines_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    lines: list[str] = []
    assert isinstance(make_progress(lines.append, ["accuracy"]), LineProgress)  # pytest captures stdout
    assert isinstance(make_progress(lines.append, ["accuracy"], live=True), LiveProgress)
    assert isinstance(make_progress(lines.append, ["accuracy"], live=False), LineProgress)

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdout", Tty())
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    assert isinstance(make_progress(lines.append), LiveProgress)
    monkeypatch.setenv("CI", "true")
    assert isinstance(make_progress(lines.append), LineProgress)
    monkeypatch.delenv("CI")
    monkeypatch.setenv("TERM", "dumb")
    assert isinstance(make_progress(lines.append), LineProgress)


def test_live_view_pickles_while_live() -> None:
    """Tune pickles its searcher and scheduler, and with them the progress they report to."""
    import pickle

    progress, _ = _live(Clock())
    progress.trial_started(0, {"peft.r": 4})
    copy = pickle.loads(pickle.dumps(progress))
    assert list(copy.rows) == [0] and copy.metrics == ["accuracy"]
    progress.close()
