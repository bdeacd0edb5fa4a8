"""Class-weighted cross-entropy for imbalanced classification (`train.class_weights: balanced`)."""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable


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
