"""The job options that decide whether a trial fits (weights' dtype, gradient checkpointing, QLoRA, optimizer)
and the LoRA variants: their rules, checked where a config enters, and what the model and device rule out.

`check_options` runs with every config check (cheap: no torch); `check_fit` runs with the model checks,
before any trial, on the machine that prepares the study (it asks torch and bitsandbytes what this device
can do).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainer.schema import Problem

if TYPE_CHECKING:
    from trainer.config import TrainConfig


DROPOUT_KEYS = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "classifier_dropout",
    "hidden_dropout",
    "attention_dropout",
    "dropout",
    "activation_dropout",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "summary_first_dropout",
    "seq_classif_dropout",
    "qa_dropout",
    "residual_dropout",
    "embedding_dropout",
    "ffn_dropout",
    "mlp_dropout",
    "attn_dropout",
    "emb_dropout",
)
"""Config fields that hold a dropout probability, across transformers' architectures (`train.dropout` sets
every one the model's config has)."""

BNB_OPTIMIZERS = ("adamw_8bit", "paged_adamw_8bit")


def check_options(cfg: TrainConfig, source: str, problems: list[Problem]) -> None:
    """Rules between the job options and on their ranges (types are already checked)."""
    from trainer._quant import INSTALL, bitsandbytes_installed

    t, p = cfg.train, cfg.peft

    def need(cond: bool, key: str, message: str) -> None:
        if not cond:
            problems.append(Problem(source, key, message))

    need(0 < t.adam_beta2 < 1, "train.adam_beta2", f"must be in (0, 1), found {t.adam_beta2}")
    need(0 <= t.min_lr_ratio < 1, "train.min_lr_ratio", f"must be in [0, 1), found {t.min_lr_ratio}")
    need(0 < t.decay_ratio <= 1, "train.decay_ratio", f"must be in (0, 1], found {t.decay_ratio}")
    if t.neftune_alpha is not None:
        from trainer.schema import ConfigError
        from trainer.tasks import get_task

        try:
            generates = get_task(cfg.task).generates
        except ConfigError:  # check_config reports it
            generates = True
        need(
            generates,
            "train.neftune_alpha",
            f"NEFTune noises the embeddings of a causal LM's prompt and "
            f"response (task sft); task is {cfg.task}, so leave it out",
        )
    need(0 <= t.label_smoothing < 1, "train.label_smoothing", f"must be in [0, 1), found {t.label_smoothing}")
    need(t.dropout is None or 0 <= t.dropout < 1, "train.dropout", f"must be in [0, 1), found {t.dropout}")
    need(t.neftune_alpha is None or t.neftune_alpha > 0, "train.neftune_alpha", f"must be > 0, found {t.neftune_alpha}")
    if t.min_lr_ratio > 0:
        need(
            t.lr_scheduler in ("cosine", "warmup_stable_decay"),
            "train.min_lr_ratio",
            f"applies to lr_scheduler cosine or warmup_stable_decay; lr_scheduler is {t.lr_scheduler}, so set it to 0",
        )
    if t.label_smoothing > 0:
        need(
            t.class_weights == "none",
            "train.label_smoothing",
            "cannot be combined with class_weights: "
            f"{t.class_weights} (one loss takes one); set one of them to its default",
        )
    if t.optimizer in BNB_OPTIMIZERS:
        need(
            bitsandbytes_installed(),
            "train.optimizer",
            f"{t.optimizer} needs the package bitsandbytes, which is not installed; {INSTALL}, or use adamw",
        )
    if p.method == "qlora":
        need(
            bitsandbytes_installed(),
            "peft.method",
            f"qlora needs the package bitsandbytes, which is not installed; {INSTALL}, or use lora",
        )
    need(
        p.loraplus_ratio is None or p.loraplus_ratio > 0,
        "peft.loraplus_ratio",
        f"must be > 0, found {p.loraplus_ratio}",
    )
    if p.modules_to_save is not None:
        need(len(p.modules_to_save) > 0, "peft.modules_to_save", "expected a non-empty list (or leave it out)")
    if p.method == "full":
        full = "peft.method is full (every weight trains), so leave it out or use peft.method: lora"
        need(not p.use_dora, "peft.use_dora", f"DoRA is a kind of LoRA adapter; {full}")
        need(
            p.loraplus_ratio is None,
            "peft.loraplus_ratio",
            f"LoRA+ sets the learning rate of LoRA's B matrices; {full}",
        )
        from trainer.config import QuantizationConfig

        need(
            p.quantization == QuantizationConfig(),
            "peft.quantization",
            "quantized weights cannot be trained in full; quantization applies to peft.method: qlora",
        )


def check_fit(cfg: TrainConfig, settings: dict[str, Any], mapping: str, source: str, problems: list[Problem]) -> None:
    """What the model's architecture (`settings`: its config.json; `mapping`: the task's modeling_auto mapping)
    and this device rule out, before any weight is loaded."""
    t = cfg.train
    if t.model_dtype == "fp16":
        import torch

        if not torch.cuda.is_available():
            problems.append(
                Problem(
                    source,
                    "train.model_dtype",
                    "fp16 weights need a CUDA GPU (a CPU has no fp16 "
                    "arithmetic for training) and none is visible here; use auto, bf16 or fp32",
                )
            )
    if cfg.peft.method == "qlora":
        from trainer._quant import backend_problem

        why = backend_problem(cfg.peft.quantization.bits)
        if why is not None:
            problems.append(Problem(source, "peft.method", f"qlora cannot run here: {why}"))
    if t.dropout is not None and settings and not any(k in settings for k in DROPOUT_KEYS):
        problems.append(
            Problem(
                source,
                "train.dropout",
                f"'{cfg.model}' ({settings.get('model_type')}) has no "
                "dropout field in its config to set; leave train.dropout out",
            )
        )
    if t.gradient_checkpointing:
        supported = supports_gradient_checkpointing(settings, mapping)
        if supported is False:
            problems.append(
                Problem(
                    source,
                    "train.gradient_checkpointing",
                    f"'{cfg.model}' "
                    f"({settings.get('model_type')}) does not support gradient checkpointing "
                    "(its class says supports_gradient_checkpointing = False); set it to false",
                )
            )


def supports_gradient_checkpointing(settings: dict[str, Any], mapping: str) -> bool | None:
    """What the architecture's model class says, without loading weights; None when it cannot be told."""
    model_type = settings.get("model_type")
    if not model_type or not mapping:
        return None
    try:
        from transformers import CONFIG_MAPPING
        from transformers.models.auto import modeling_auto

        cls = getattr(modeling_auto, mapping)[CONFIG_MAPPING[model_type]]
    except Exception:  # noqa: BLE001 - an architecture of its own (remote code): found out when it loads
        return None
    return bool(getattr(cls, "supports_gradient_checkpointing", False))


def enable_gradient_checkpointing(model: Any) -> None:
    """Recompute each layer's activations in the backward pass instead of keeping them. Non-reentrant
    checkpointing (use_reentrant=False) works with frozen inputs, as LoRA has, without
    `enable_input_require_grads`; the KV cache is off (it is useless in training and conflicts)."""
    model.config.use_cache = False
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def dropout_options(cfg: TrainConfig, settings: dict[str, Any]) -> dict[str, float]:
    """`train.dropout` as the model config's own fields (passed to `from_pretrained`), or {} when unset."""
    if cfg.train.dropout is None:
        return {}
    return {
        key: cfg.train.dropout
        for key in DROPOUT_KEYS
        if isinstance(settings.get(key), (int, float)) and not isinstance(settings.get(key), bool)
    }
