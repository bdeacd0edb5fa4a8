"""What a running study shows: plain lines in logs, a live view (rows, bars, counts, time left) in a terminal."""

from __future__ import annotations

import io

import pytest

from search.progress import (
    LineProgress,
    LiveProgress,
    fixed_keys,
    make_progress,
    short_names,
    short_number,
)


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
    assert "lr 1.23e-3 · r 8" in view  # short names, three significant digits
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
    progress.counts(finished=2, n_trials=4, running=0, pruned=1, failed=1, best="best accuracy 0.8125 (trial 2: r=2)")
    view = _view(progress)
    assert "best accuracy 0.8125 (trial 2: r 2)" in view  # the best trial's params as its row shows them
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


def test_short_numbers_and_names_follow_the_stated_rule() -> None:
    assert [short_number(v) for v in (0.00148123, 0.0071234, 0.0871, 0.5, 16.0, 1234.5, 0.0, 32, "all-linear")] == [
        "1.48e-3",
        "7.12e-3",
        "0.0871",
        "0.5",
        "16",
        "1.23e3",
        "0",
        "32",
        "all-linear",
    ]
    assert short_names(
        [
            "train.learning_rate",
            "train.batch_size",
            "peft.r",
            "train.warmup_ratio",
            "peft.dropout",
            "train.weight_decay",
            "peft.alpha",
            "train.seed",
        ]
    ) == {
        "train.learning_rate": "lr",
        "train.batch_size": "bs",
        "peft.r": "r",
        "train.warmup_ratio": "wu",
        "peft.dropout": "do",
        "train.weight_decay": "wd",
        "peft.alpha": "alpha",
        "train.seed": "seed",
    }
    # two keys with one short name keep their full names
    assert short_names(["peft.dropout", "model.dropout"]) == {
        "peft.dropout": "peft.dropout",
        "model.dropout": "model.dropout",
    }


QUICKSTART_SPACE = {
    "train.learning_rate": {"type": "float", "low": 1.0e-4, "high": 3.0e-3, "log": True},
    "train.batch_size": {"type": "categorical", "choices": [8, 16, 32]},
    "train.warmup_ratio": {"type": "float", "low": 0.0, "high": 0.1},
    "peft.r": {"type": "categorical", "choices": [4, 8, 16, 32]},
    "peft.dropout": {"type": "float", "low": 0.0, "high": 0.1},
    "peft.target_modules": {"type": "categorical", "choices": ["all-linear"]},
}


def _quickstart_view(clock: Clock) -> LiveProgress:
    """The shipped LoRA space's widest values: five searched params, one fixed; 1500 steps a trial."""
    from search.space import parse_space

    problems: list = []
    space = parse_space(QUICKSTART_SPACE, source="space.yaml", base_dir=None, problems=problems)
    assert not problems and fixed_keys(space) == {"peft.target_modules"}
    made = make_progress(print, ["accuracy"], live=True, space=space, slots=2)
    assert isinstance(made, LiveProgress) and made.hidden == {"peft.target_modules"} and made.slots == 2
    progress, _ = _live(clock)
    progress.hidden, progress.slots = made.hidden, 1  # a cluster with room for one trial: trial 12 waits
    for number, (lr, bs, wu, r, do) in enumerate(
        [(0.000123456, 32, 0.0071234, 16, 0.0871234), (0.00148, 8, 0.0999, 32, 0.0123456), (0.002, 16, 0.05, 4, 0.1)],
        start=10,
    ):
        progress.trial_started(
            number,
            {
                "train.learning_rate": lr,
                "train.batch_size": bs,
                "train.warmup_ratio": wu,
                "peft.r": r,
                "peft.dropout": do,
                "peft.target_modules": "all-linear",
            },
        )
    clock.now += 3725
    progress.trial_reported(10, 1250, 1500, {"accuracy": 0.8125})
    progress.trial_reported(11, 1500, 1500, {"accuracy": 0.75})
    progress.trial_finished(11, "PRUNED", None, "at step 1500")
    progress.counts(
        finished=11,
        n_trials=12,
        running=2,
        pruned=3,
        failed=0,
        best="best accuracy 0.8300 (trial 10: learning_rate=0.000123, batch_size=32, "
        "warmup_ratio=0.00712, r=16, dropout=0.0871, target_modules=all-linear)",
    )
    return progress


@pytest.mark.parametrize("width", [60, 80, 160])
def test_live_view_reads_at_60_80_and_160_columns(width: int) -> None:
    """Only searched params, short; no number split across lines; one line per trial from 80 columns up;
    elapsed dropped first, then the bar, as the terminal narrows."""
    from rich.console import Console

    progress = _quickstart_view(Clock())
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(progress.render())
    lines = console.export_text().splitlines()
    assert all(len(line) <= width for line in lines)
    text = "\n".join(lines)
    assert "target_modules" not in text and "all-linear" not in text and " tm " not in text  # not searched
    shown = {
        "10": ["lr 1.23e-4", "bs 32", "wu 7.12e-3", "r 16", "do 0.0871"],
        "11": ["lr 1.48e-3", "bs 8", "wu 0.0999", "r 32", "do 0.0123"],
        "12": ["lr 2e-3", "bs 16", "wu 0.05", "r 4", "do 0.1"],
    }
    for items in shown.values():
        for item in items:  # a param and its number on one line, never split
            assert any(item in line for line in lines), (item, text)
    assert any("lr 1.23e-4" in line for line in lines[:4])  # the best line speaks the same short form
    for number in ("1250/1500", "0.8125"):
        assert any(number in line for line in lines), text
    rows = {n: [i for i, line in enumerate(lines) if line.lstrip().startswith(n + " ")] for n in shown}
    assert all(len(at) == 1 for at in rows.values()), text
    if width >= 80:  # one line per trial: the next trial (or the end) follows at once
        assert [rows[n][0] for n in shown] == list(range(len(lines) - 3, len(lines))), text
        assert all(" · ".join(items) in lines[rows[n][0]] for n, items in shown.items())
    head = next(line for line in lines if line.lstrip().startswith("# params"))
    assert ("elapsed" in head) == (width >= 160)  # elapsed goes first
    assert ("━" in text) == (width >= 80)  # then the bar
    assert "step" in head and "accuracy" in head
    if width >= 160:
        assert "1h02m" in lines[rows["10"][0]]
    # an ended trial's words are cut short where narrow (the line printed above the view holds them all)
    assert ("pruned at step 1500" if width >= 160 else "pruned") in lines[rows["11"][0]]
    assert ("waiting for a free slot" if width >= 80 else "no free slot") in lines[rows["12"][0]]
    progress.close()


def test_a_trial_without_an_evaluation_says_why() -> None:
    clock = Clock()
    progress, _ = _live(clock)
    progress.slots = 1
    progress.trial_started(0, {"peft.r": 4})
    progress.trial_started(1, {"peft.r": 8})
    view = _view(progress)
    row = {n: next(line for line in view.splitlines() if line.strip().startswith(f"{n} ")) for n in (0, 1)}
    assert "starting: worker loading torch" in row[0]  # nothing has reported yet: the workers are importing
    assert "waiting for a free slot" in row[1]  # more trials asked than the cluster has slots
    clock.now += 10
    progress.trial_reported(0, 10, 100, {"accuracy": 0.5})
    progress.trial_finished(0, "COMPLETE", [0.5], "")
    view = _view(progress)
    assert "starting: first steps" in next(line for line in view.splitlines() if line.strip().startswith("1 "))
    progress.close()
