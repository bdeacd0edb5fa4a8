"""The adapter's contract, driven without a cluster: ready, ask, report, prune, complete, fail, NaN,
a failing tell, grid exhaustion, the budget counted in storage, max_failures.

The driver (`search._driver.Driver`) is what Tune's searcher and scheduler call; these tests call it
the same way against a real Optuna study, and call the Tune shells themselves once.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import tiny
from optuna.trial import TrialState

from search._driver import FINISHED, Driver
from search._trial_result import DONE_KEY, ERROR_KEY, READY_KEY
from search.config import load_study
from search.study import open_study


class Events:
    """A Progress that remembers what it was told."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, Any]] = []

    def message(self, text: str) -> None:
        self.lines.append(("message", text))

    def trial_started(self, number: int, params: dict) -> None:
        self.lines.append(("started", number))

    def trial_reported(self, number: int, step: int, max_steps: int | None, metrics: dict) -> None:
        self.lines.append(("reported", (number, step, max_steps)))

    def trial_finished(self, number: int | None, state: str, values: Any, message: str) -> None:
        self.lines.append(("finished", (number, state, message)))

    def counts(self, **kw: Any) -> None:
        self.lines.append(("counts", kw))

    def close(self) -> None:
        pass


def _driver(tmp: Path, model: Path, name: str = "c", **study: Any) -> Driver:
    path = tiny.study_file(tmp, model, name=name, **study)
    cfg = load_study(path)
    return Driver(cfg=cfg, study=open_study(cfg), progress=Events())


def _ready(d: Driver, tid: str) -> None:
    assert d.result(tid, {READY_KEY: True, "host": "h1", "node": "n1", "preloaded": True}) is False


def _eval(d: Driver, tid: str, step: int, acc: float) -> bool:
    return d.result(
        tid,
        {
            "accuracy": acc,
            "f1_macro": acc,
            "eval_loss": 1 - acc,
            "step": step,
            "max_steps": 30,
            "precision": "bf16",
            "template": "file /x/chat.jinja sha256:0123456789ab",
        },
    )


def _done(acc: float, step: int = 30) -> dict[str, Any]:
    return {"accuracy": acc, "f1_macro": acc, "eval_loss": 1 - acc, "step": step, DONE_KEY: True}


def test_ask_report_complete_stores_the_exact_trial(tmp_path: Path, bert_dir: Path) -> None:
    d = _driver(tmp_path, bert_dir, n_trials=2)
    config = d.suggest("t1")
    assert isinstance(config, dict)
    spec = config["sftune"]
    assert spec["number"] == 0 and spec["config"]["train"]["threads"] == 1
    _ready(d, "t1")
    assert _eval(d, "t1", 10, 0.6) is False
    assert _eval(d, "t1", 30, 0.7) is False
    d.complete("t1", _done(0.7), error=False)
    (t,) = d.study.trials
    assert t.state == TrialState.COMPLETE and t.value == 0.7
    assert t.intermediate_values == {10: 0.6, 30: 0.7}
    assert t.user_attrs["node"] == "n1" and t.user_attrs["host"] == "h1" and t.user_attrs["worker_preloaded"]
    assert t.user_attrs["precision"] == "bf16"  # the arithmetic the worker reported
    assert t.user_attrs["template"] == "file /x/chat.jinja sha256:0123456789ab"  # its prompt format
    assert t.user_attrs["config"]["train"]["learning_rate"] == t.params["train.learning_rate"]
    assert ("reported", (0, 30, 30)) in d.progress.lines


def test_a_pruned_trial_is_pruned_not_complete(tmp_path: Path, bert_dir: Path) -> None:
    d = _driver(tmp_path, bert_dir, n_trials=2, pruner={"name": "threshold", "lower": 0.9})
    d.suggest("t1")
    _ready(d, "t1")
    assert _eval(d, "t1", 10, 0.5) is True  # the scheduler stops it
    d.complete("t1", {"accuracy": 0.5, "step": 10, "seconds/train": 1.5}, error=False)  # Tune: "complete"
    (t,) = d.study.trials
    assert t.state == TrialState.PRUNED and d.n_pruned == 1
    assert t.user_attrs["seconds"] == {"train": 1.5}  # its time is kept too


def test_a_job_error_fails_alone_and_is_not_retried(tmp_path: Path, bert_dir: Path) -> None:
    d = _driver(tmp_path, bert_dir, n_trials=2)
    d.suggest("t1")
    d.complete("t1", {ERROR_KEY: "ValueError: boom"}, error=False)
    (t,) = d.study.trials
    assert t.state == TrialState.FAIL and t.user_attrs["error"] == "ValueError: boom"
    assert not d.study.get_trials(states=(TrialState.WAITING,))


def test_a_dead_worker_fails_its_trial_and_queues_its_params(tmp_path: Path, bert_dir: Path) -> None:
    d = _driver(tmp_path, bert_dir, n_trials=2)
    d.suggest("t1")
    d.worker_error("t1", RuntimeError("The actor died unexpectedly before finishing this task."))
    d.complete("t1", None, error=True)
    failed = d.study.trials[0]
    assert failed.state == TrialState.FAIL and "worker died" in failed.user_attrs["error"]
    (queued,) = d.study.get_trials(states=(TrialState.WAITING,))
    assert queued.system_attrs["fixed_params"] == failed.params
    retry = d.suggest("t2")
    assert retry["sftune"]["number"] == 1 and d.study.trials[1].params == failed.params


def test_a_dead_cluster_starts_nothing_and_its_trials_fail_and_are_queued(tmp_path: Path, bert_dir: Path) -> None:
    """Once the cluster is gone, suggest starts no trial; abandon_all (the watcher's thread) waits for the call
    Tune is making, then fails every running trial with the reason and queues its params; Tune's later calls
    wait (the lock stays held: the process ends next)."""
    import threading

    d = _driver(tmp_path, bert_dir, n_trials=4)
    gone: list[str] = []
    d.cluster_gone = lambda: gone[0] if gone else None
    d.suggest("t1")
    d.suggest("t2")
    _ready(d, "t1")
    assert _eval(d, "t1", 10, 0.6) is False
    gone.append("its raylet ended")
    assert d.suggest("t3") is None and len(d.study.trials) == 2
    with d.lock:  # Tune is inside a call: abandon_all waits for it
        watcher = threading.Thread(target=d.abandon_all, args=("the local Ray cluster died (its raylet ended)",))
        watcher.start()
        watcher.join(0.3)
        assert watcher.is_alive() and not d.stop_reason
    watcher.join(10)
    assert not watcher.is_alive() and not d.trials
    started = [t for t in d.study.trials if t.state != TrialState.WAITING]
    assert [t.state for t in started] == [TrialState.FAIL, TrialState.FAIL]
    assert all(
        t.user_attrs["error"] == "the local Ray cluster died (its raylet ended); its params are queued for the next run"
        for t in started
    )
    queued = [t.system_attrs["fixed_params"] for t in d.study.get_trials(states=(TrialState.WAITING,))]
    assert sorted(map(str, queued)) == sorted(str(t.params) for t in started)
    assert not d.lock.acquire(blocking=False)  # Tune's next call (here, this thread's) is held off


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_metric_stops_and_fails_the_trial(tmp_path: Path, bert_dir: Path, bad: float) -> None:
    d = _driver(tmp_path, bert_dir, n_trials=2)
    d.suggest("t1")
    assert _eval(d, "t1", 10, bad) is True
    d.complete("t1", {"accuracy": bad, "step": 10}, error=False)
    (t,) = d.study.trials
    word = "nan" if math.isnan(bad) else "inf"
    assert t.state == TrialState.FAIL and t.user_attrs["error"] == f"metric was {word} at step 10"
    assert d.failed == 1 and d.completed == 0


def test_a_non_finite_final_metric_is_never_complete(tmp_path: Path, bert_dir: Path) -> None:
    d = _driver(tmp_path, bert_dir, n_trials=2)
    d.suggest("t1")
    d.complete("t1", _done(math.nan), error=False)
    (t,) = d.study.trials
    assert t.state == TrialState.FAIL and "metric was nan" in t.user_attrs["error"]


def test_a_failing_tell_ends_the_run_and_leaves_nothing_counted(
    tmp_path: Path, bert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import OperationalError

    d = _driver(tmp_path, bert_dir, n_trials=3)
    d.suggest("t1")

    def full(*a: Any, **k: Any) -> None:
        raise OperationalError("UPDATE trials", {}, Exception("database or disk is full"))

    monkeypatch.setattr(d.study, "tell", full)
    d.complete("t1", _done(0.7), error=False)
    assert "is full" in d.fatal  # one sentence a person reads, from search.study.storage_problem
    assert d.completed == 0
    assert d.suggest("t2") == FINISHED


def test_grid_exhaustion_stops_cleanly(tmp_path: Path, bert_dir: Path) -> None:
    space = {"train.learning_rate": {"type": "categorical", "choices": [1e-3, 2e-3]}}
    d = _driver(tmp_path, bert_dir, n_trials=5, space=space, sampler={"name": "grid"}, concurrency=1)
    for i in range(2):
        d.suggest(f"t{i}")
        d.complete(f"t{i}", _done(0.6), error=False)
    assert d.suggest("t9") == FINISHED
    assert "whole space" in d.stop_reason
    assert sorted(t.params["train.learning_rate"] for t in d.study.trials) == [1e-3, 2e-3]


def test_the_budget_is_counted_in_storage_across_drivers(tmp_path: Path, bert_dir: Path) -> None:
    a = _driver(tmp_path, bert_dir, n_trials=3)
    b = Driver(cfg=a.cfg, study=open_study(a.cfg), progress=Events())
    assert isinstance(a.suggest("a1"), dict) and isinstance(a.suggest("a2"), dict)
    assert isinstance(b.suggest("b1"), dict)
    assert b.suggest("b2") is None  # the rest of the budget is running: wait
    assert any("running in other drivers" in str(x) for x in b.progress.lines)
    for d, tid in ((a, "a1"), (a, "a2"), (b, "b1")):
        d.complete(tid, _done(0.6), error=False)
    assert a.suggest("a3") == FINISHED and b.suggest("b3") == FINISHED
    assert len(a.study.trials) == 3


@pytest.mark.parametrize("limit,runs", [(0, 1), (1, 2)])
def test_max_failures_counts_failures_tolerated(tmp_path: Path, bert_dir: Path, limit: int, runs: int) -> None:
    d = _driver(tmp_path, bert_dir, n_trials=5, budget={"n_trials": 5, "concurrency": 1, "max_failures": limit})
    for i in range(runs):
        assert isinstance(d.suggest(f"t{i}"), dict)  # max_failures 0 still runs the first trial
        d.complete(f"t{i}", {ERROR_KEY: "boom"}, error=False)
    assert d.suggest("last") == FINISHED and d.gave_up


def test_the_tune_shells_delegate_to_the_driver(tmp_path: Path, bert_dir: Path) -> None:
    from ray.tune.schedulers import TrialScheduler
    from ray.tune.search import Searcher

    from search._ray.shells import OptunaPruningScheduler, OptunaSearcher

    d = _driver(tmp_path, bert_dir, n_trials=1, pruner={"name": "threshold", "lower": 0.9})
    searcher, scheduler = OptunaSearcher(d), OptunaPruningScheduler(d)

    class FakeTuneTrial:  # what the scheduler reads of a Tune trial
        trial_id = "t1"

    assert "sftune" in searcher.suggest("t1")
    assert scheduler.on_trial_result(None, FakeTuneTrial(), {"accuracy": 0.1, "step": 10}) == TrialScheduler.STOP
    searcher.on_trial_complete("t1", {"accuracy": 0.1, "step": 10})
    assert d.study.trials[0].state == TrialState.PRUNED
    assert searcher.suggest("t2") == Searcher.FINISHED


def test_a_remote_trial_sends_its_files_to_the_driver(tmp_path: Path, bert_dir: Path) -> None:
    from search._ray.worker import writable_dir
    from search._trial_result import FILES_KEY, pack

    remote = tmp_path / "node-disk"
    (remote / "adapter").mkdir(parents=True)
    (remote / "metrics.json").write_text('{"metrics": {"accuracy": 0.7}}')
    (remote / "adapter" / "adapter_model.safetensors").write_bytes(b"\0" * 1000)
    (remote / "_trainer").mkdir()
    (remote / "_trainer" / "junk").write_text("x")
    d = _driver(tmp_path, bert_dir, n_trials=1)
    d.suggest("t1")
    d.complete("t1", {**_done(0.7), FILES_KEY: pack(remote)}, error=False)
    here = d.cfg.output_dir / "trials" / "0000"
    assert (here / "metrics.json").read_text() == '{"metrics": {"accuracy": 0.7}}'
    assert (here / "adapter" / "adapter_model.safetensors").stat().st_size == 1000
    assert not (here / "_trainer").exists()
    assert d.study.trials[0].state == TrialState.COMPLETE

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    fallback = writable_dir(blocker / "runs" / "s" / "trials" / "0003")  # cannot be created on this node
    assert fallback.is_dir() and fallback.parts[-3:] == ("sftune-trials", "s", "0003")


def test_running_trials_keep_a_heartbeat_of_their_own(
    tmp_path: Path, bert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    monkeypatch.setenv("SFTUNE_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("SFTUNE_HEARTBEAT_GRACE", "3")
    d = _driver(tmp_path, bert_dir, n_trials=2)
    other = Driver(cfg=d.cfg, study=open_study(d.cfg), progress=Events())
    d.suggest("t1")
    stop = d.heartbeats()
    try:
        time.sleep(5)  # longer than the grace: only the heartbeat thread keeps the trial alive
        other.tick()
        assert d.study.trials[0].state == TrialState.RUNNING
    finally:
        stop.set()
    time.sleep(4.5)  # the driver "died": no heartbeat for longer than the grace
    other.last_beat = 0.0
    other.tick()
    trials = d.study.trials
    assert trials[0].state == TrialState.FAIL and trials[1].state == TrialState.WAITING
    assert any("left RUNNING by a driver that died" in str(x) for x in other.progress.lines)


def test_a_driver_waiting_on_a_dead_drivers_trials_takes_them_over_from_suggest(
    tmp_path: Path, bert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing of its own running, Tune only calls `suggest` (once a second, up to 600 s) and never
    steps its loop: the stale check must run from there, or the run waits out Tune's timeout."""
    import time

    monkeypatch.setenv("SFTUNE_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("SFTUNE_HEARTBEAT_GRACE", "2")
    dead = _driver(tmp_path, bert_dir, n_trials=2)
    assert isinstance(dead.suggest("a"), dict) and isinstance(dead.suggest("b"), dict)  # then it "dies"
    d = Driver(cfg=dead.cfg, study=open_study(dead.cfg), progress=Events())
    assert d.suggest("t1") is None  # the whole budget runs elsewhere: wait
    deadline = time.time() + 15
    config = None
    while config is None and time.time() < deadline:
        time.sleep(0.5)
        config = d.suggest("t1")  # only suggest: no tick() from a loop step
    assert isinstance(config, dict), "the dead driver's trials were never taken over"
    assert config["sftune"]["config"]["peft"]["r"] in {t.params["peft.r"] for t in d.study.trials[:2]}


def test_a_driver_never_fails_its_own_running_trials_as_stale(
    tmp_path: Path, bert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A starved machine can let a heartbeat come late: the driver's own stale check still spares its trials
    (other drivers judge them by heartbeat); when the run abandons a trial already failed elsewhere, it is
    left as it is."""
    import time

    monkeypatch.setenv("SFTUNE_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("SFTUNE_HEARTBEAT_GRACE", "2")
    d = _driver(tmp_path, bert_dir, n_trials=3)
    d.suggest("t1")
    d.suggest("t2")
    time.sleep(3)  # no heartbeat thread: both heartbeats are older than the grace
    d.tick()
    assert [t.state for t in d.study.trials] == [TrialState.RUNNING, TrialState.RUNNING]
    other = Driver(cfg=d.cfg, study=open_study(d.cfg), progress=Events())
    other.tick()  # another driver goes by the heartbeats
    assert [t.state for t in other.study.trials[:2]] == [TrialState.FAIL, TrialState.FAIL]
    d.abandon("stopped when the run ended")  # already failed elsewhere: no error, nothing told twice
    assert d.failed == 0 and not d.trials


def test_cuda_memory_figures_are_kept_and_packing_is_judged_once(tmp_path: Path, bert_dir: Path) -> None:
    d = _driver(tmp_path, bert_dir, n_trials=2, resources={"cpu": 1, "gpu": 0.5})
    d.suggest("t1")
    memory = {"cuda_total_mb": 1000.0, "cuda_reserved_peak_mb": 700.0, "cuda_peak_mb": 650.0}
    d.result(
        "t1",
        {
            "accuracy": 0.6,
            "step": 10,
            "memory/cuda_total_mb": 1000.0,  # flattened by Tune
            "memory/cuda_reserved_peak_mb": 700.0,
            "memory/cuda_peak_mb": 650.0,
        },
    )
    d.result("t1", {"accuracy": 0.6, "step": 20, "memory": memory})
    d.complete("t1", {**_done(0.7), "memory": {**memory, "cuda_allocated_end_mb": 0.0}}, error=False)
    t = d.study.trials[0]
    assert t.user_attrs["cuda_peak_mb"] == 650.0 and t.user_attrs["cuda_allocated_end_mb"] == 0.0
    said = [x[1] for x in d.progress.lines if x[0] == "message" and "GPU memory" in x[1]]
    assert len(said) == 1 and said[0].startswith("warning: ") and "over" in said[0]  # 2 x 700+ MiB > 1000 MiB


def test_a_tuned_multilabel_threshold_is_kept_in_the_history_and_named_by_export(
    tmp_path: Path, bert_dir: Path
) -> None:
    from search.report import export_trial

    base = tiny.multilabel_config(tmp_path, bert_dir)
    base["task_options"] = {"threshold": "tune"}
    objective = {"metric": "f1_micro", "direction": "maximize"}
    d = _driver(tmp_path, bert_dir, n_trials=1, base=base, objective=objective)
    d.suggest("t1")
    _ready(d, "t1")
    for step, f1, threshold in ((10, 0.6, 0.35), (30, 0.8, 0.4)):
        evaluation = {"f1_micro": f1, "f1_macro": f1, "exact_match": f1, "eval_loss": 1 - f1, "threshold": threshold}
        assert d.result("t1", {**evaluation, "step": step, "max_steps": 30}) is False
    d.complete("t1", {**evaluation, "step": 30, DONE_KEY: True}, error=False)
    (t,) = d.study.trials
    assert t.state == TrialState.COMPLETE and t.value == 0.8
    assert [(h["step"], h["threshold"]) for h in t.user_attrs["history"]] == [(10, 0.35), (30, 0.4)]
    out = tmp_path / "best.yaml"
    export_trial(d.study, d.cfg, out, None)
    text = out.read_text()
    assert "# task_options.threshold: tune chose 0.4 on validation at step 30;" in text
    assert "threshold: tune" in text  # the re-run tunes again, as the trial did
