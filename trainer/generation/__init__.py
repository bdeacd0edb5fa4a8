"""Generation-based metrics for causal LMs: what the model writes for validation prompts, scored.

`scores` extracts answers and scores predictions (exact_match, rouge_l, chrf, a function of your
own); `checks` refuses an `eval:` section that cannot work, before anything trains; `generate` runs
greedy, batched generation over a fixed, seeded sample of rows at evaluation time.
"""

from __future__ import annotations

from trainer.generation.checks import check_eval_config, check_eval_data, generation_metrics
from trainer.generation.generate import Generator, prompt_and_reference
from trainer.generation.scores import BUILT_IN, extract, score

__all__ = [
    "BUILT_IN",
    "Generator",
    "check_eval_config",
    "check_eval_data",
    "extract",
    "generation_metrics",
    "prompt_and_reference",
    "score",
]
