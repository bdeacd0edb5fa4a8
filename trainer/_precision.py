"""The precision the model's weights are held in (`train.model_dtype`), apart from the arithmetic (`train.precision`).

A LoRA or QLoRA job trains a few million adapter weights beside billions of frozen ones: holding the
frozen ones in bf16 halves their memory (an 8B model: ~16 GB instead of ~32 GB) and costs nothing in
what is learned, since they never change. What trains (the adapter, a head in `modules_to_save`) and
so the optimizer state stay fp32.
"""

from __future__ import annotations

from typing import Any

DTYPES = ("fp32", "bf16", "fp16")


def resolve_model_dtype(model_dtype: str, method: str, native_bf16: bool | None = None, precision: str = "auto") -> str:
    """fp32 | bf16 | fp16: what `model_dtype` means for a job of `method` (lora | qlora | full) that trains in
    `precision` (`train.precision`).

    `auto`: bf16 where the device computes bf16 natively (`trainer.job.resolve_precision`), the job trains
    adapters (lora, qlora) and does not ask for fp32 arithmetic; fp32 otherwise (a full fine-tune keeps fp32
    master weights; `precision: fp32` runs without autocast, which bf16 frozen weights would need).
    """
    if model_dtype != "auto":
        return model_dtype
    if method not in ("lora", "qlora") or precision == "fp32":
        return "fp32"
    if native_bf16 is None:
        from trainer.job import resolve_precision

        native_bf16 = resolve_precision("auto")[1] == "bf16"
    return "bf16" if native_bf16 else "fp32"


def torch_dtype(name: str) -> Any:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def trainable_to_fp32(model: Any) -> None:
    """Cast every trainable parameter (LoRA A/B, DoRA magnitudes, a saved head) to fp32 in place, so its
    updates and its optimizer state are fp32 whatever the frozen weights are held in."""
    import torch

    for param in model.parameters():
        if param.requires_grad and param.is_floating_point() and param.dtype != torch.float32:
            param.data = param.data.to(torch.float32)


def parameter_bytes(model: Any) -> dict[str, int]:
    """The bytes the model's parameters take: all of them, and those that train."""
    total = trainable = 0
    for param in model.parameters():
        n = param.numel() * param.element_size()
        if type(param).__name__ in ("Params4bit", "Int8Params"):  # bitsandbytes: packed bytes, as stored
            n = param.data.numel() * param.data.element_size()
        total += n
        trainable += n if param.requires_grad else 0
    return {"bytes": total, "trainable_bytes": trainable}
