"""Supervised fine-tuning of a causal LM on prompt/response pairs: the loss on the response only, perplexity."""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from trainer._model import ENCODER_TYPES
from trainer._tokenize import length_stats, quiet, unknown_tokens
from trainer.data import Examples, columns
from trainer.schema import ConfigError, Problem, describe
from trainer.tasks._base import Task

if TYPE_CHECKING:
    from trainer.config import TrainConfig


class SFT(Task):
    """`task: sft`: a decoder-only causal LM learns each response given its prompt."""

    name = "sft"
    metrics = ("eval_loss", "perplexity")
    directions = {"eval_loss": "minimize", "perplexity": "minimize"}
    default_objective = "eval_loss"
    prediction_loss_only = True
    eval_loss_per_token = True
    generates = True
    eval_batch_size = 8  # a causal LM's logits over a long sequence and a large vocabulary are big
    peft_task_type = "CAUSAL_LM"
    model_mapping = "MODEL_FOR_CAUSAL_LM_MAPPING"
    report_counts = ("dropped",)

    def check_config(self, cfg: TrainConfig, source: str, problems: list[Problem]) -> None:
        d = cfg.data
        if (d.prompt_column is None) != (d.response_column is None):
            problems.append(Problem(source, "data.prompt_column" if d.prompt_column is None else "data.response_column",
                                    "prompt_column and response_column go together: set both or neither"))

    def check_model(self, cfg: TrainConfig, settings: dict[str, Any], source: str, problems: list[Problem]) -> None:
        if not settings or settings.get("is_decoder"):
            return
        model_type = settings.get("model_type", "")
        if settings.get("is_encoder_decoder"):
            problems.append(Problem(source, "task", f"sft trains a decoder-only causal LM, but '{cfg.model}' is an "
                                    f"encoder-decoder model ({model_type}); use a decoder such as GPT-2 or Llama"))
        elif model_type in ENCODER_TYPES:
            problems.append(Problem(source, "task", f"sft trains a causal LM, but '{cfg.model}' is a bidirectional "
                                    f"encoder ({model_type}): it never learned to predict the next token; use "
                                    "task: classification with it, or a decoder model (GPT-2, Llama, ...) for sft"))

    def load_examples(self, cfg: TrainConfig, splits: dict[str, list[dict[str, Any]]], paths: dict[str, str],
                      source: str) -> Examples:
        from trainer.generation import check_eval_data

        examples = read_pairs(cfg, splits, paths, source)
        problems = check_eval_data(cfg, examples.validation, source)
        if problems:
            raise ConfigError(problems)
        return examples

    def generation_prompt(self, row: dict[str, Any], tokenizer: Any) -> str:
        if "messages" in row:
            return _chat_prompt(tokenizer, row["messages"])[0]
        return str(row["prompt"])

    def clean_metrics(self, raw: dict[str, Any], keep: Collection[str] | None = None) -> dict[str, float]:
        out = super().clean_metrics(raw, keep)
        if "eval_loss" in out and (keep is None or "perplexity" in keep):
            out["perplexity"] = math.exp(min(out["eval_loss"], 700.0))
        return out

    def tokenize(self, rows: list[dict[str, Any]], tokenizer: Any,
                 max_length: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        return sft_with_stats(rows, tokenizer, max_length)

    def load_model(self, location: str, labels: list[str], **options: Any) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(location, **options)

    def warning_line(self, split: str, what: str, n: int, of: str, limit: str) -> str | None:
        if what == "truncated":
            return (f"{split}: {n}{of} rows are longer than{limit} tokens: their prompt loses its start "
                    "(the response is kept whole)")
        if what == "empty_texts":
            return f"{split}: {n}{of} rows have an empty response"
        return None

    def over_length_words(self, info: dict[str, Any]) -> str:
        return (f": {info['truncated']} keep their response and lose the start of their prompt, "
                f"{info['dropped']} are dropped (response alone too long)")


def _chat_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, str]:
    history, last = messages[:-1], messages[-1]["content"]
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
    else:
        prompt = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in history) + "<|assistant|>\n"
    return prompt, last


def sft_with_stats(rows: list[dict[str, Any]], tokenizer: Any,
                   max_length: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Prompt + response token ids; the labels mask the prompt so only response tokens are learned.

    A row longer than max_length keeps its whole response (and end-of-sequence token) and loses the
    start of its prompt (a leading BOS token is kept); it is dropped only when the response alone
    does not fit. Both are counted in the stats (`prompt_cut`, `dropped`), never silent.
    """
    out = []
    prompts, responses = [], []
    for r in rows:
        if "messages" in r:
            p, q = _chat_prompt(tokenizer, r["messages"])
        else:
            p, q = r["prompt"], r["response"]
        prompts.append(p)
        responses.append(q)
    if not rows:
        return [], {"rows": 0}
    p_ids = quiet(lambda: tokenizer(prompts, add_special_tokens=True)["input_ids"])
    q_ids = quiet(lambda: tokenizer(responses, add_special_tokens=False)["input_ids"])
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    bos = tokenizer.bos_token_id
    full, cut, dropped = [], 0, 0
    for p, q in zip(p_ids, q_ids):
        p, q = list(p), list(q) + eos
        full.append(len(p) + len(q))
        head = p[:1] if bos is not None and p[:1] == [bos] else []
        room = max_length - len(q) - len(head)
        if room < 0:
            dropped += 1  # the response alone is longer than max_length
            continue
        if len(p) + len(q) > max_length:
            p = head + (p[len(head):][-room:] if room > 0 else [])
            cut += 1
        ids = p + q
        out.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [-100] * len(p) + q})
    stats = length_stats(full, max_length)
    stats.update({"prompt_cut": cut, "dropped": dropped, "truncated": cut})
    stats["unknown_tokens"], stats["tokens"] = unknown_tokens([a + b for a, b in zip(p_ids, q_ids)], tokenizer)
    stats["empty_texts"] = sum(1 for q in responses if not q.strip())
    return out, stats



def _sft_format(cfg: TrainConfig, cols: list[str]) -> tuple[str, dict[str, str]]:
    d = cfg.data
    if d.prompt_column and d.response_column:
        return "prompt_response", {"prompt": d.prompt_column, "response": d.response_column}
    if d.messages_column:
        return "messages", {"messages": d.messages_column}
    if "prompt" in cols and ("response" in cols or "completion" in cols):
        return "prompt_response", {"prompt": "prompt", "response": "response" if "response" in cols else "completion"}
    if "instruction" in cols and "output" in cols:
        return "instruction", {"instruction": "instruction", "input": "input", "output": "output"}
    if "messages" in cols:
        return "messages", {"messages": "messages"}
    if "question" in cols and "answer" in cols:
        return "prompt_response", {"prompt": "question", "response": "answer"}
    return "", {}


def format_instruction(instruction: str, inp: str) -> str:
    if inp and inp.strip():
        return f"### Instruction:\n{instruction}\n\n### Input:\n{inp}\n\n### Response:\n"
    return f"### Instruction:\n{instruction}\n\n### Response:\n"


def read_pairs(cfg: TrainConfig, splits: dict[str, list], paths: dict[str, str], source: str) -> Examples:
    """Find every split's prompt/response (or instruction, or messages) columns and check its rows."""
    problems: list[Problem] = []
    out: dict[str, list] = {}
    fmt = ""
    for split, rows in splits.items():
        path = paths[split]
        cols = columns(rows)
        fmt, names = _sft_format(cfg, cols)
        if not fmt:
            problems.append(Problem(source, "data", f"sft needs prompt and response columns in {split} data "
                                    f"'{path}': set data.prompt_column + data.response_column, or provide "
                                    f"instruction/input/output or messages columns; found columns: {', '.join(cols)}"))
            continue
        needed = [c for k, c in names.items() if k != "input"]
        missing = [c for c in needed if c not in cols]
        if missing:
            key = "data.messages_column" if fmt == "messages" else "data.prompt_column"
            problems.append(Problem(source, key, f"column '{missing[0]}' not found in {split} data '{path}' "
                                    f"(columns: {', '.join(cols)})"))
            continue
        pairs = []
        for i, r in enumerate(rows):
            try:
                pairs.append(_to_pair(fmt, names, r))
            except ValueError as exc:
                problems.append(Problem(source, "data", f"{split} row {i + 1} of '{path}': {exc}"))
                break
        out[split] = pairs
    if problems:
        raise ConfigError(problems)
    return Examples(task=cfg.task, train=out["train"], validation=out["validation"], sft_format=fmt,
                    test=out.get("test", []))


def _to_pair(fmt: str, names: dict[str, str], r: dict[str, Any]) -> dict[str, Any]:
    if fmt == "prompt_response":
        p, q = r.get(names["prompt"]), r.get(names["response"])
        if not isinstance(p, str) or not isinstance(q, str):
            raise ValueError(f"prompt and response must be text, found {describe(p)} and {describe(q)}")
        return {"prompt": p, "response": q}
    if fmt == "instruction":
        ins, inp, o = r.get(names["instruction"]), r.get(names["input"]) or "", r.get(names["output"])
        if not isinstance(ins, str) or not isinstance(o, str) or not isinstance(inp, str):
            raise ValueError("instruction, input and output must be text")
        return {"prompt": format_instruction(ins, inp), "response": o}
    msgs = r.get(names["messages"])
    if (not isinstance(msgs, list) or not msgs
            or not all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs)):
        raise ValueError(f"messages must be a list of {{role, content}} objects, found {describe(msgs)}")
    if msgs[-1]["role"] != "assistant":
        raise ValueError("the last message must be the assistant's (it is the response trained on)")
    return {"messages": msgs}
