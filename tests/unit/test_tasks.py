"""The task registry and interface: lookup, a user's own task, bad names, and no task branches elsewhere."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import ClassVar

import pytest
import tiny

from trainer import DIRECTIONS, METRICS, ConfigError, config_from_dict, prepare, run_job
from trainer.tasks import TASKS, Task, get_task, task_names

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))  # tests/unit/_own_task.py as a user's module


def test_registry_names_and_lookup() -> None:
    assert task_names()[:2] == ["classification", "sft"] and task_names() == list(TASKS)
    for name in task_names():
        task = get_task(name)
        assert isinstance(task, Task) and task.name == name
        assert get_task(name) is task  # loaded once


@pytest.mark.parametrize(
    "name,metrics,default,directions",
    [
        (
            "classification",
            ("accuracy", "f1_macro", "eval_loss"),
            "accuracy",
            {"accuracy": "maximize", "f1_macro": "maximize", "eval_loss": "minimize"},
        ),
        ("sft", ("eval_loss", "perplexity"), "eval_loss", {"eval_loss": "minimize", "perplexity": "minimize"}),
    ],
)
def test_builtin_metrics_and_directions(name: str, metrics: tuple, default: str, directions: dict) -> None:
    task = get_task(name)
    assert task.metrics == metrics and METRICS[name] == metrics
    assert task.default_objective == default
    assert dict(task.directions) == directions
    assert all(DIRECTIONS[m] == d for m, d in directions.items())


def test_sft_adds_perplexity_and_drops_other_metrics() -> None:
    out = get_task("sft").clean_metrics({"eval_loss": 0.0, "eval_accuracy": 1.0, "epoch": 1, "eval_note": "x"})
    assert out == {"eval_loss": 0.0, "perplexity": 1.0}
    assert get_task("classification").clean_metrics({"eval_accuracy": 0.5, "eval_loss": 1}) == {
        "accuracy": 0.5,
        "eval_loss": 1.0,
    }


@pytest.mark.parametrize(
    "name,expected",
    [
        ("ranking", f"task: expected one of {', '.join(TASKS)}, found 'ranking' (str); a task of your own"),
        (
            "clasification",
            f"task: expected one of {', '.join(TASKS)}, found 'clasification' (str); did you mean 'classification'?",
        ),
        ("no_such_module_xyz:Task", "task: cannot import module 'no_such_module_xyz' of task"),
        ("_own_task:OwnTsk", "task: module '_own_task' has no 'OwnTsk'; did you mean 'OwnTask'?"),
        ("_own_task:NotATask", "task: expected a subclass of trainer.tasks.Task at '_own_task:NotATask', found"),
    ],
)
def test_bad_task_names(tmp_path: Path, bert_dir: Path, name: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        get_task(name, "train.yaml")
    assert f"train.yaml: {expected}" in str(err.value)
    data = tiny.classification_config(tmp_path, bert_dir)
    data["task"] = name
    with pytest.raises(ConfigError) as err:
        config_from_dict(data, source="train.yaml", base_dir=tmp_path)
    assert expected in str(err.value) and all(p.key == "task" for p in err.value.problems)


def test_own_task_by_module_and_class(tmp_path: Path, bert_dir: Path) -> None:
    task = get_task("_own_task:OwnTask")
    assert task.name == "own" and task.default_objective == "f1_macro"
    data = tiny.classification_config(tmp_path, bert_dir, max_steps=4)
    data["task"] = "_own_task:OwnTask"
    cfg = config_from_dict(data, base_dir=tmp_path)
    prep = prepare(cfg)
    assert prep.examples.task == "_own_task:OwnTask" and prep.examples.labels == ["0", "1"]
    result = run_job(cfg, prepared=prep)
    assert set(result.metrics) == {"accuracy", "f1_macro", "eval_loss"}


def test_own_task_needs_usable_metrics() -> None:
    class Broken(Task):
        metrics = ("score",)
        directions: ClassVar[dict[str, str]] = {"score": "up"}
        default_objective = "loss"

    sys.modules["_broken_task"] = type(sys)("_broken_task")
    sys.modules["_broken_task"].Broken = Broken  # type: ignore[attr-defined]
    with pytest.raises(ConfigError) as err:
        get_task("_broken_task:Broken")
    text = str(err.value)
    assert "expected directions['score'] to be maximize or minimize, found 'up'" in text
    assert "default_objective 'loss' is not one of its metrics ['score']" in text


BRANCH = re.compile(
    "|".join(
        [
            r"""task\s*[!=]=\s*["']""",  # cfg.task == "...", ex.task != "..."
            r"""[!=]=\s*["'](sft|classification)["']""",  # report["task"] == "sft"
            r"""["'](sft|classification)["']\s*[!=]=""",  # "sft" == task
            r"""\bin\s*[(\[{]\s*["'](sft|classification)["']""",  # task in ("sft", ...)
        ]
    )
)


def test_nothing_outside_the_task_modules_branches_on_a_task_name() -> None:
    found = []
    for folder in ("search", "trainer"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if (ROOT / "trainer" / "tasks") in path.parents:
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if BRANCH.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, "task branches outside trainer/tasks:\n" + "\n".join(found)


def test_a_metric_may_not_take_a_name_the_trial_report_keeps() -> None:
    """A metric called `precision` was read as the trial's arithmetic ('bf16') by the driver and failed every
    trial; such names are refused when the task loads, and the list follows the report's own keys."""
    from search._trial_result import ErrorReport, EvaluationReport, FinalReport, ReadyReport
    from trainer.tasks import RESERVED_METRIC_NAMES

    keys = {k for td in (ReadyReport, EvaluationReport, FinalReport, ErrorReport) for k in td.__annotations__}
    assert {k for k in keys if not k.startswith("sftune_")} <= RESERVED_METRIC_NAMES

    class Clash(Task):
        metrics = ("precision", "eval_loss")
        directions: ClassVar[dict[str, str]] = {"precision": "maximize", "eval_loss": "minimize"}

        def load_examples(self, *a):
            raise NotImplementedError

        tokenize = load_model = load_examples

    sys.modules["_clash_task"] = type(sys)("_clash_task")
    sys.modules["_clash_task"].Clash = Clash  # type: ignore[attr-defined]
    with pytest.raises(ConfigError) as err:
        get_task("_clash_task:Clash")
    assert "metric 'precision' is a name a trial's report keeps for itself" in str(err.value)
    for name in task_names():
        assert not set(get_task(name).metrics) & RESERVED_METRIC_NAMES
