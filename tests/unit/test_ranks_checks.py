"""Trials over several workers (`resources.workers`), without a cluster: the checks before any trial (exit 2,
nothing written), the placement a cluster can offer, and how a failed Train run is judged."""

from __future__ import annotations

from pathlib import Path

import pytest
import tiny
import yaml
from optuna.trial import TrialState

from search._driver.outcome import failure, outcome_state
from search._ray.ranks import judge_failure, placement_problem
from search._ray.resources import local_cluster_cpus
from search._trial_result import lost_report
from search.cli import main
from search.config import load_study


def _study(tmp: Path, bert: Path, **resources: object) -> Path:
    path = tiny.study_file(tmp, bert, name="w")
    data = yaml.safe_load(path.read_text())
    data["resources"] = {"cpu": 1, **resources}
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "resources,expected",
    [
        ({"workers": 0}, "resources.workers: must be a whole number >= 1, found 0"),
        ({"workers": 2, "gpu": 0.5}, "resources.gpu: with workers: 2 each rank needs a whole GPU of its own"),
        ({"workers": 2, "gpu": 2}, "resources.gpu: with workers: 2 each rank trains on one GPU, so gpu: 2 per rank"),
        ({"workers": 1.5}, "resources.workers"),
        (
            {"workers": 1, "fsdp": "full_shard auto_wrap"},
            "resources.fsdp: FSDP shards a model over several GPUs: it needs "
            "workers >= 2 and gpu: 1, found workers: 1, gpu: 0",
        ),
        ({"workers": 2, "gpu": 1, "fsdp": "full_shard auto_wrap"}, "resources.fsdp: FSDP is for full fine-tunes"),
        ({"workers": 2, "gpu": 1, "fsdp": "full_shard sideways"}, "resources.fsdp: expected the Trainer's fsdp words"),
    ],
)
def test_bad_workers_exit_2_before_anything_is_written(
    tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture, resources: dict, expected: str
) -> None:
    path = _study(tmp_path, bert_dir, **resources)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "w.db").exists() and not (tmp_path / "runs").exists()


def test_a_task_that_cannot_train_data_parallel_is_refused(
    tmp_path: Path, bert_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from trainer.tasks.classification import Classification

    monkeypatch.setattr(Classification, "data_parallel", False, raising=False)
    assert main(["run", str(_study(tmp_path, bert_dir, workers=2))]) == 2
    assert "task classification says it cannot train data-parallel" in capsys.readouterr().err


def test_one_worker_is_today_s_study_and_two_size_a_local_cluster_per_rank(tmp_path: Path, bert_dir: Path) -> None:
    one = load_study(_study(tmp_path, bert_dir))
    assert one.resources.workers == 1 and local_cluster_cpus(one) == one.budget.concurrency
    two = load_study(_study(tmp_path, bert_dir, workers=2))
    assert local_cluster_cpus(two) == two.budget.concurrency * 2  # the coordinators ask for no CPU


def _node(cpu: float, gpu: float = 0, alive: bool = True) -> dict:
    return {"Alive": alive, "Resources": {"CPU": cpu, "GPU": gpu}}


def test_placement_counts_ranks_over_nodes_and_names_the_largest_possible() -> None:
    nodes = [_node(8, 1), _node(8, 1), _node(64, 0, alive=False)]
    assert placement_problem(2, {"cpu": 4, "gpu": 1}, nodes, "the cluster", "s.yaml") is None  # one per node
    problem = placement_problem(3, {"cpu": 4, "gpu": 1}, nodes, "the cluster at h:1", "s.yaml")
    assert problem is not None and problem.key == "resources.workers"
    assert "3 workers of 4 CPU and 1 GPU each" in problem.message
    assert "can place at most 2 such worker(s) at once (per node: 1, 1; 2 node(s) alive)" in problem.message
    cpus = placement_problem(5, {"cpu": 2}, [_node(8)], "this machine", "s.yaml")
    assert cpus is not None and "at most 4" in cpus.message


class RayActorError(Exception):
    """Named as Ray's: `judge_failure` reads the class names, so these stand for Ray's errors."""


class WorkerHealthCheckFailedError(Exception):
    pass


def test_a_dead_rank_is_named_and_retried_a_raised_job_error_is_not() -> None:
    died = judge_failure(
        {
            1: WorkerHealthCheckFailedError("The actor is dead because its worker process has died."),
            0: RuntimeError("[gloo] Connection closed by peer"),
        },
        workers=2,
    )
    assert died.retry and died.message.startswith("rank 1 of 2 died (WorkerHealthCheckFailedError")
    lost = judge_failure({0: RuntimeError("Gloo connection reset by peer")}, workers=2)
    assert lost.retry and "rank 0 of 2 lost its peers" in lost.message
    raised = judge_failure(
        {1: ValueError("no_such_layer not found"), 0: ValueError("no_such_layer not found")}, workers=2
    )
    assert not raised.retry and raised.message == "rank 0 of 2: ValueError: no_such_layer not found"
    gone = judge_failure({3: RayActorError("x" * 1000)}, workers=4)
    assert gone.retry and len(gone.message) < 300


def test_a_lost_rank_fails_the_trial_as_a_dead_worker_params_queued() -> None:
    result = lost_report("rank 1 of 2 died (ActorDiedError: killed)")
    assert outcome_state(pruned=False, error=False, result=result) == TrialState.FAIL
    message, retry = failure(
        stopped=None, result=result, error=False, worker_error=None, retries=lambda: 0, timed_out=None, stop_reason=""
    )
    assert retry and "rank 1 of 2 died" in message and "queued to run again" in message
    message, retry = failure(
        stopped=None, result=result, error=False, worker_error=None, retries=lambda: 2, timed_out=None, stop_reason=""
    )
    assert not retry  # as often as a dead worker's, no more


def test_an_effective_batch_that_does_not_divide_over_the_ranks_is_refused(
    tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    path = _study(tmp_path, bert_dir, workers=3, batch="effective")  # the base's batch_size: 16
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert (
        "resources.batch: effective: each rank takes train.batch_size / (workers x gradient_accumulation), "
        "but batch size 16 does not divide by 3 x 1" in err
    )
    assert not (tmp_path / "w.db").exists()
    path = _study(tmp_path, bert_dir, workers=2, batch="sideways")
    assert main(["run", str(path)]) == 2
    assert "resources.batch: expected one of per_worker, effective, found 'sideways'" in capsys.readouterr().err


def test_an_effective_batch_stays_fixed_while_workers_change(tmp_path: Path, bert_dir: Path) -> None:
    space = {"train.batch_size": {"type": "categorical", "choices": [16, 32]}}
    for workers in (1, 2, 4):
        path = tiny.study_file(tmp_path, bert_dir, name="w", space=space)
        data = yaml.safe_load(path.read_text())
        data["resources"] = {"cpu": 1, "workers": workers, "batch": "effective"}
        path.write_text(yaml.safe_dump(data))
        cfg = load_study(path)
        for effective in (16, 32):
            train = cfg.trial_config({"train.batch_size": effective}, 0)["train"]
            assert train["batch_size"] * workers * train["gradient_accumulation"] == effective
