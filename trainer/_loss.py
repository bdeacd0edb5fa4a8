"""Losses beside the model's own: class-weighted cross-entropy (`train.class_weights: balanced`), and the
token-weighted evaluation loss of a causal LM (`TokenMean`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any


def balanced_weights(labels: list[int], num_labels: int) -> list[float]:
    """n / (classes * count of the class), as scikit-learn's `balanced`; a class absent from train gets 0."""
    counts = Counter(labels)
    n = len(labels)
    present = [c for c in range(num_labels) if counts[c]]
    return [n / (len(present) * counts[c]) if counts[c] else 0.0 for c in range(num_labels)]


def class_weighted_loss(weights: list[float]) -> Callable[..., Any]:
    """A Trainer `compute_loss_func`: weighted cross-entropy while training, plain cross-entropy in evaluation.

    Evaluation stays unweighted so that `eval_loss` means the same in every trial of a study, whether
    or not that trial weighted its training loss. Trainer evaluates under `torch.no_grad()`.
    """
    import torch

    def loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        logits = logits.view(-1, logits.shape[-1]).float()
        labels = labels.view(-1)
        if not torch.is_grad_enabled():
            return torch.nn.functional.cross_entropy(logits, labels)
        weight = torch.tensor(weights, dtype=logits.dtype, device=logits.device)
        total = torch.nn.functional.cross_entropy(logits, labels, weight=weight, reduction="sum")
        # Trainer counts the items of all accumulated batches and expects the loss divided by that count.
        count = num_items_in_batch if num_items_in_batch is not None else labels.numel()
        return total / count

    return loss


class TokenMean:
    """One evaluation's loss as the mean over every target token of the split, whatever the batching.

    A causal LM's loss on a batch is the mean over that batch's target tokens (labels other than -100,
    shifted by one). Trainer averages those batch means weighted by rows, so a batch of short answers
    counts as much as one of long answers and the result moves with the eval batch size and with how
    rows fall into batches. `add` takes each batch's mean back to a sum; `mean` is sum over count.
    """

    def __init__(self) -> None:
        self.total = 0.0
        self.tokens = 0

    def reset(self) -> None:
        self.total, self.tokens = 0.0, 0

    def add(self, batch_mean: Any, labels: Any) -> None:
        """A batch's mean loss and its labels (batch x length, -100 where no target)."""
        count = int((labels[..., 1:] != -100).sum())
        if count:
            self.total += float(batch_mean) * count
            self.tokens += count

    def mean(self) -> float | None:
        return self.total / self.tokens if self.tokens else None
