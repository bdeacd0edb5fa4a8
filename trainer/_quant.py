"""QLoRA: the frozen weights quantized to 4 or 8 bits by bitsandbytes (`peft.method: qlora`, `peft.quantization`).

`pip install "sftune[qlora]"` brings bitsandbytes. Whether it is installed is checked with every config
(cheap: no import); whether it runs on this device is checked once before any trial (`backend_problem`).
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainer.config import QuantizationConfig

INSTALL = 'pip install "sftune[qlora]" (or pip install "bitsandbytes>=0.45")'


def bitsandbytes_installed() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def backend_problem(bits: int) -> str | None:
    """Why bitsandbytes cannot quantize to `bits` on this machine's device, or None when it can: it is
    imported and one small layer is quantized and run forward and backward, as training will."""
    if not bitsandbytes_installed():
        return f"bitsandbytes is not installed; {INSTALL}"
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    version = "?"
    try:
        import bitsandbytes as bnb

        version = bnb.__version__
        layer = (
            bnb.nn.Linear4bit(64, 64, bias=False, quant_type="nf4")
            if bits == 4
            else bnb.nn.Linear8bitLt(64, 64, bias=False, has_fp16_weights=False)
        ).to(device)
        x = torch.randn(2, 3, 64, device=device, requires_grad=True)
        layer(x).float().sum().backward()
    except Exception as exc:  # noqa: BLE001 - any failure means the backend is missing here
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return (
            f"bitsandbytes {version} cannot run {bits}-bit layers on this device ({device}): "
            f"{type(exc).__name__}: {first}"
        )
    return None


def bnb_config(q: QuantizationConfig) -> Any:
    """transformers' BitsAndBytesConfig for `peft.quantization`."""
    from transformers import BitsAndBytesConfig

    from trainer._precision import torch_dtype

    if q.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=torch_dtype(q.compute_dtype),
    )
