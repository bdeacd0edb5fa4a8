"""Greedy generation for a fixed, seeded sample of rows, batched with left padding, scored at evaluation."""

from __future__ import annotations

import random
import time
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from trainer.generation.checks import reference_of
from trainer.generation.scores import load_function, score

if TYPE_CHECKING:
    from trainer.config import TrainConfig
    from trainer.tasks import Task

DEFAULT_SAMPLES = 256
"""Rows generated for when `eval.samples` is not given (all of a smaller split)."""
SHOWN_CHARS = 600
"""A kept sample's prompt is cut to its last this many characters (its output and reference are whole)."""


def prompt_and_reference(
    task: Task, row: dict[str, Any], tokenizer: Any, options: dict[str, Any] | None = None
) -> tuple[str, str]:
    """The text a row's generation starts from (as training formats it), and what it is compared with."""
    return task.generation_prompt(row, tokenizer, options), reference_of(row)


class Generator:
    """One split's generation at evaluation: which rows (seeded), their prompts' tokens, and their scoring."""

    def __init__(
        self,
        cfg: TrainConfig,
        task: Task,
        rows: list[dict[str, Any]],
        tokenizer: Any,
        options: dict[str, Any] | None = None,
    ) -> None:
        e = cfg.eval
        self.cfg, self.tokenizer = cfg, tokenizer
        n = min(len(rows), e.samples or DEFAULT_SAMPLES)
        chosen = sorted(random.Random(cfg.train.seed).sample(range(len(rows)), n)) if n < len(rows) else range(n)
        self.rows = [rows[i] for i in chosen]
        pairs = [prompt_and_reference(task, r, tokenizer, options) for r in self.rows]
        self.prompts = [p for p, _ in pairs]
        self.references = [r for _, r in pairs]
        ids = tokenizer(self.prompts, add_special_tokens=True)["input_ids"] if self.prompts else []
        room = max(cfg.train.max_length - e.max_new_tokens, cfg.train.max_length // 2, 1)
        bos = tokenizer.bos_token_id
        self.ids = []
        for p in ids:
            p = list(p)
            if len(p) > room:  # as in training: the start of a long prompt goes (a leading BOS stays)
                head = p[:1] if bos is not None and p[:1] == [bos] else []
                p = head + p[len(p) - (room - len(head)) :]
            self.ids.append(p)
        self.function = load_function(e.function) if e.function else None
        self.evaluations = 0

    def due(self, final: bool) -> bool:
        """Whether this evaluation generates: every `eval.every`-th one, and always the last."""
        self.evaluations += 1
        return final or self.evaluations % self.cfg.eval.every == 0

    def run(
        self, model: Any, context: AbstractContextManager[Any] | None = None
    ) -> tuple[dict[str, float], list[dict[str, str]], float]:
        """Generate for every chosen row; (metrics, the first `eval.show` samples, seconds spent)."""
        import torch
        from transformers import GenerationConfig

        started = time.perf_counter()
        e, tok = self.cfg.eval, self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        settings = GenerationConfig(
            max_new_tokens=e.max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad,
            eos_token_id=tok.eos_token_id,
        )
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        outputs = [""] * len(self.ids)
        order = sorted(range(len(self.ids)), key=lambda i: len(self.ids[i]))  # similar lengths, less padding
        try:
            for start in range(0, len(order), e.batch_size):
                batch = order[start : start + e.batch_size]
                width = max(len(self.ids[i]) for i in batch)
                ids = [[pad] * (width - len(self.ids[i])) + self.ids[i] for i in batch]
                mask = [[0] * (width - len(self.ids[i])) + [1] * len(self.ids[i]) for i in batch]
                with torch.no_grad(), context or nullcontext():
                    out = model.generate(
                        input_ids=torch.tensor(ids, device=device),
                        attention_mask=torch.tensor(mask, device=device),
                        generation_config=settings,
                    )
                for i, row in zip(batch, out[:, width:].tolist(), strict=True):
                    outputs[i] = tok.decode(row, skip_special_tokens=True)
        finally:
            model.train(was_training)
        metrics = score(e.metrics, e.extract, outputs, self.references, self.rows, self.function, list(e.directions))
        samples = [
            {"prompt": p[-SHOWN_CHARS:], "reference": r, "output": o}
            for p, r, o in zip(self.prompts[: e.show], self.references[: e.show], outputs[: e.show], strict=True)
        ]
        return metrics, samples, time.perf_counter() - started
