"""A task of a user's own, for test_tasks: classification under another name, objective f1_macro."""

from __future__ import annotations

from trainer.tasks.classification import Classification


class OwnTask(Classification):
    name = "own"
    default_objective = "f1_macro"


class NotATask:
    pass
