"""What each built-in task reports, by name, and the one held-out test evaluation of a trained model."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from trainer.tasks import TASKS, Task, get_task

METRICS: dict[str, tuple[str, ...]] = {name: get_task(name).metrics for name in TASKS}
"""The metrics each built-in task reports; a study objective must name one of its task's (`Task.metrics`)."""

DIRECTIONS: dict[str, str] = {
    metric: direction for name in TASKS for metric, direction in get_task(name).directions.items()
}
"""Each built-in metric's natural direction (a task's own: `Task.directions`)."""


def evaluate_on_test(
    trainer: Any, rows: list[dict[str, Any]], task: Task, keep: Collection[str] | None = None
) -> dict[str, float]:
    """Evaluate `trainer`'s model once on the held-out test rows: our metric names with a `test_` prefix.

    The caller makes sure no reporter sees this evaluation (it must never steer a search).
    """
    raw = trainer.evaluate(eval_dataset=rows)
    return {f"test_{k}": v for k, v in task.clean_metrics(raw, keep).items()}
