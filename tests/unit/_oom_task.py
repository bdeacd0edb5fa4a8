"""A user's task (`task: _oom_task:OomSFT`) whose model runs out of memory the way a GPU does: SFT on a real
model, whose training forward raises torch.OutOfMemoryError from its third step on when a batch has 16 rows
or more (smaller batches fit). Nothing of transformers is mocked; the job's own loop meets the error."""

from __future__ import annotations

from typing import Any

import torch

from trainer.tasks.sft import SFT

FITS_BELOW = 16
"""Training batches of this many rows or more run out of memory."""
FROM_FORWARD = 3
"""The first training forward that runs out (step 3 with gradient_accumulation 1)."""


class OomSFT(SFT):
    name = "oom-sft"

    def load_model(self, location: str, labels: list[str], **options: Any) -> Any:
        model = super().load_model(location, labels, **options)
        own = model.forward
        calls = {"train": 0}

        def forward(*args: Any, **kwargs: Any) -> Any:
            ids = kwargs.get("input_ids", args[0] if args else None)
            if model.training:
                calls["train"] += 1
                if ids is not None and ids.shape[0] >= FITS_BELOW and calls["train"] >= FROM_FORWARD:
                    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (forced by a test)")
            return own(*args, **kwargs)

        model.forward = forward
        return model
