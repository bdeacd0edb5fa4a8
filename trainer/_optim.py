"""The optimizer, the schedule and the training loss's options of a job, as Trainer arguments.

`trainer_options` is what `TrainingArguments` gets beside the basics; `loraplus_optimizer` builds LoRA+'s
optimizer (peft's `create_loraplus_optimizer`) from the same optimizer class and settings Trainer would use;
`label_smoothed` wraps the training loss so that only training is smoothed and evaluation stays the plain loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainer.config import TrainConfig

OPTIMIZERS = {
    "adamw": "adamw_torch",
    "adafactor": "adafactor",
    "sgd": "sgd",
    "adamw_8bit": "adamw_bnb_8bit",
    "paged_adamw_8bit": "paged_adamw_8bit",
}
"""`train.optimizer` to transformers' `optim` names."""
SGD_MOMENTUM = 0.9


def trainer_options(cfg: TrainConfig, max_steps: int) -> dict[str, Any]:
    """TrainingArguments for `train.optimizer`, `adam_beta2`, the scheduler's options and NEFTune."""
    t = cfg.train
    out: dict[str, Any] = {
        "optim": OPTIMIZERS[t.optimizer],
        "adam_beta2": t.adam_beta2,
        "lr_scheduler_type": t.lr_scheduler,
    }
    if t.optimizer == "sgd":
        out["optim_args"] = f"momentum={SGD_MOMENTUM}"
    if t.lr_scheduler == "cosine" and t.min_lr_ratio > 0:
        out["lr_scheduler_type"] = "cosine_with_min_lr"
        out["lr_scheduler_kwargs"] = {"min_lr_rate": t.min_lr_ratio}
    elif t.lr_scheduler == "warmup_stable_decay":
        out["lr_scheduler_kwargs"] = {
            "num_decay_steps": max(1, round(t.decay_ratio * max_steps)),
            "min_lr_ratio": t.min_lr_ratio,
        }
    if t.neftune_alpha is not None:
        out["neftune_noise_alpha"] = t.neftune_alpha
    return out


def loraplus_optimizer(cfg: TrainConfig, model: Any, args: Any) -> Any:
    """LoRA+ (`peft.loraplus_ratio`): the B matrices learn `ratio` times faster than the rest; None without it."""
    if cfg.peft.loraplus_ratio is None:
        return None
    from peft.optimizers import create_loraplus_optimizer
    from transformers import Trainer

    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    kwargs = dict(kwargs)
    lr = kwargs.pop("lr", cfg.train.learning_rate)
    return create_loraplus_optimizer(
        model, cls, lr=lr, loraplus_lr_ratio=cfg.peft.loraplus_ratio, weight_decay=cfg.train.weight_decay, **kwargs
    )


def label_smoothed(
    epsilon: float, causal: bool, own: Callable[..., Any] | None, model: Any
) -> Callable[..., Any] | None:
    """A Trainer `compute_loss_func` that smooths the labels by `epsilon` while `model` trains and gives the
    plain loss (the task's own, else cross-entropy) while it evaluates; `own` unchanged when epsilon is 0.

    Trainer's own `label_smoothing_factor` smooths the evaluation loss too (trials with different smoothing
    would not compare) and is skipped when a task has a loss of its own."""
    if epsilon <= 0:
        return own
    from transformers.trainer_pt_utils import LabelSmoother

    smooth, plain = LabelSmoother(epsilon=epsilon), LabelSmoother(epsilon=0.0)

    def loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
        if model.training:
            return smooth(outputs, labels, shift_labels=causal, num_items_in_batch=num_items_in_batch)
        if own is not None:
            return own(outputs, labels, num_items_in_batch=num_items_in_batch)
        return plain(outputs, labels, shift_labels=causal, num_items_in_batch=num_items_in_batch)

    return loss
