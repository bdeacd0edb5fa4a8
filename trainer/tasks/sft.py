"""Supervised fine-tuning of a causal LM on prompt/response pairs: the loss on the response only, perplexity."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from trainer import _chat
from trainer._chat import ChatTemplate
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
    directions: ClassVar[Mapping[str, str]] = {"eval_loss": "minimize", "perplexity": "minimize"}
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
            problems.append(
                Problem(
                    source,
                    "data.prompt_column" if d.prompt_column is None else "data.response_column",
                    "prompt_column and response_column go together: set both or neither",
                )
            )

    def check_model(self, cfg: TrainConfig, settings: dict[str, Any], source: str, problems: list[Problem]) -> None:
        if not settings or settings.get("is_decoder"):
            return
        model_type = settings.get("model_type", "")
        if settings.get("is_encoder_decoder"):
            problems.append(
                Problem(
                    source,
                    "task",
                    f"sft trains a decoder-only causal LM, but '{cfg.model}' is an "
                    f"encoder-decoder model ({model_type}); use a decoder such as GPT-2 or Llama",
                )
            )
        elif model_type in ENCODER_TYPES:
            problems.append(
                Problem(
                    source,
                    "task",
                    f"sft trains a causal LM, but '{cfg.model}' is a bidirectional "
                    f"encoder ({model_type}): it never learned to predict the next token; use "
                    "task: classification with it, or a decoder model (GPT-2, Llama, ...) for sft",
                )
            )

    def load_examples(
        self, cfg: TrainConfig, splits: dict[str, list[dict[str, Any]]], paths: dict[str, str], source: str
    ) -> Examples:
        from trainer.generation import check_eval_data

        examples = read_pairs(cfg, splits, paths, source)
        problems = check_eval_data(cfg, examples.validation, source)
        if problems:
            raise ConfigError(problems)
        return examples

    def generation_prompt(self, row: dict[str, Any], tokenizer: Any, options: dict[str, Any] | None = None) -> str:
        if "messages" in row:  # rendered with the template the data was trained with
            return _chat_prompt(tokenizer, row["messages"], (options or {}).get("chat_template", "auto"))[0]
        return str(row["prompt"])

    def clean_metrics(self, raw: dict[str, Any], keep: Collection[str] | None = None) -> dict[str, float]:
        out = super().clean_metrics(raw, keep)
        if "eval_loss" in out and (keep is None or "perplexity" in keep):
            out["perplexity"] = math.exp(min(out["eval_loss"], 700.0))
        return out

    def tokenize(
        self, rows: list[dict[str, Any]], tokenizer: Any, max_length: int, options: dict[str, Any] | None = None
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        return sft_with_stats(rows, tokenizer, max_length, options)

    def load_model(self, location: str, labels: list[str], **options: Any) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(location, **options)

    def warning_line(self, split: str, what: str, n: int, of: str, limit: str) -> str | None:
        if what == "truncated":
            return (
                f"{split}: {n}{of} rows are longer than{limit} tokens: their prompt loses its start "
                "(a conversation its earliest exchanges first; the last response is kept whole)"
            )
        if what == "empty_texts":
            return f"{split}: {n}{of} rows have an empty response"
        return None

    def over_length_words(self, info: dict[str, Any]) -> str:
        return (
            f": {info['truncated']} keep their response and lose the start of their prompt, "
            f"{info['dropped']} are dropped (response alone too long; a conversation loses its earliest "
            "exchanges before its prompt is cut)"
        )


def _chat_prompt(
    tokenizer: Any, messages: list[dict[str, str]], template: ChatTemplate | str = "auto"
) -> tuple[str, str]:
    """A conversation's prompt (every message before the last, then the template's generation prompt) and
    its last message's content: what a model is asked, and the reference answer."""
    chosen = _chat.resolve(template, tokenizer)
    return _chat.render(chosen, tokenizer, messages[:-1], True), messages[-1]["content"]


def _template_record(options: dict[str, Any], tokenizer: Any, rows: list[dict[str, Any]]) -> dict[str, str]:
    """What names the prompt format on a trial: the chat template of messages rows, else the fixed format."""
    fmt = options.get("format", "")
    if fmt == "messages" or (not fmt and rows and "messages" in rows[0]):
        return _chat.resolve(options.get("chat_template", "auto"), tokenizer).record()
    if fmt == "instruction":
        return {"name": "alpaca", "format": "instruction"}
    return {"name": "none", "format": "prompt_response"}


def sft_with_stats(
    rows: list[dict[str, Any]], tokenizer: Any, max_length: int, options: dict[str, Any] | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Token ids of every row, and labels that mark what is learned (-100 elsewhere).

    Prompt/response (and instruction) rows: the response and an end-of-sequence token are learned.
    Messages rows: rendered with the chat template (`options['chat_template']`, see trainer._chat); every
    assistant turn is learned, with the end-of-turn text the template puts after it (and an EOS token after
    the last turn unless the template ends with one); system and user turns and the template's markers
    around them are not. `options['train_on_prompt']`: every token is learned.

    A row longer than max_length: a conversation first loses its earliest exchanges (user turn and
    assistant reply; a system message is kept); a single prompt/response (or the last exchange) keeps its
    whole response and loses the start of its prompt (a leading BOS token is kept); a row is dropped only
    when its response alone does not fit. All are counted in the stats (`truncated`, of which `turns_cut`
    and `prompt_cut`; `dropped`), never silent.
    """
    options = options or {}
    if not rows:
        return [], {"rows": 0}
    template = _chat.resolve(options.get("chat_template", "auto"), tokenizer)
    whole = bool(options.get("train_on_prompt"))
    pieces = [_pieces(r, template, tokenizer) for r in rows]
    ids = _encode(pieces, tokenizer)
    eos = tokenizer.eos_token_id
    bos = tokenizer.bos_token_id
    out, full, all_ids = [], [], []
    cut = turns = dropped = 0
    for r, row_ids in zip(rows, ids, strict=True):
        row_ids = _end_with_eos(row_ids, eos)
        full.append(sum(len(p) for p, _ in row_ids))
        all_ids.append([t for p, _ in row_ids for t in p])
        if full[-1] > max_length and "messages" in r:
            fitted = _drop_turns(r["messages"], template, tokenizer, max_length, eos)
            if fitted is not None:
                row_ids, turns = fitted, turns + 1
        if sum(len(p) for p, _ in row_ids) > max_length:
            kept = _cut_prompt(row_ids, max_length, bos)
            if kept is None:
                dropped += 1  # the (last) response alone is longer than max_length
                continue
            row_ids = kept
            cut += 1
        tokens = [t for p, _ in row_ids for t in p]
        labels = [t if (learn or whole) else -100 for p, learn in row_ids for t in p]
        out.append({"input_ids": tokens, "attention_mask": [1] * len(tokens), "labels": labels})
    stats = length_stats(full, max_length)
    stats.update(
        {
            "prompt_cut": cut,
            "turns_cut": turns,
            "dropped": dropped,
            "truncated": sum(1 for n in full if n > max_length) - dropped,
        }
    )
    stats["unknown_tokens"], stats["tokens"] = unknown_tokens(all_ids, tokenizer)
    stats["empty_texts"] = sum(1 for r in rows if _has_empty_response(r))
    stats["template"] = _template_record(options, tokenizer, rows)
    return out, stats


def _has_empty_response(r: dict[str, Any]) -> bool:
    if "messages" in r:
        return any(m["role"] == "assistant" and not m["content"].strip() for m in r["messages"])
    return not r["response"].strip()


Piece = tuple[str, bool]
"""A run of a row's text and whether it is learned (a response, an assistant turn)."""


def _pieces(r: dict[str, Any], template: ChatTemplate, tokenizer: Any) -> list[Piece]:
    if "messages" not in r:
        return [(r["prompt"], False), (r["response"], True)]
    try:
        return _chat.segments(template, tokenizer, r["messages"])
    except Exception as exc:  # noqa: BLE001 - a template that fails on a row: the data's or the template's problem
        first = next((m["content"] for m in r["messages"] if m["role"] == "user"), "")
        start = first if len(first) <= 60 else first[:57] + "..."
        raise ConfigError(
            Problem(
                "",
                "data.chat_template",
                f"template {_chat.describe(template.record())} "
                f"cannot render the conversation whose first user message is {start!r}: "
                f"{type(exc).__name__}: {exc}",
            )
        ) from None


def _encode(pieces: list[list[Piece]], tokenizer: Any) -> list[list[tuple[list[int], bool]]]:
    """Each piece's token ids, tokenized apart (as a prompt is at generation time), in batched calls.

    The first piece of a row gets the tokenizer's special tokens (a BOS) unless its text starts with the
    BOS token already (a chat template that writes it); the others get none.
    """
    bos_text = tokenizer.bos_token or None
    firsts = [i for i, p in enumerate(pieces) if p and not (bos_text and p[0][0].startswith(bos_text))]
    flat = [(i, j) for i, p in enumerate(pieces) for j in range(len(p))]
    special = set(firsts)
    with_special = [(i, j) for i, j in flat if j == 0 and i in special]
    without = [(i, j) for i, j in flat if not (j == 0 and i in special)]
    got: dict[tuple[int, int], list[int]] = {}
    for group, add in ((with_special, True), (without, False)):
        if group:
            texts = [pieces[i][j][0] for i, j in group]
            enc = quiet(lambda texts=texts, add=add: tokenizer(texts, add_special_tokens=add)["input_ids"])
            got.update(zip(group, map(list, enc), strict=True))
    return [[(got[(i, j)], learn) for j, (_, learn) in enumerate(p)] for i, p in enumerate(pieces)]


def _end_with_eos(row: list[tuple[list[int], bool]], eos: int | None) -> list[tuple[list[int], bool]]:
    """An EOS token learned after the last learned piece, unless that piece holds one already (a template that
    ends each assistant turn with EOS, perhaps then a newline)."""
    last = max((k for k, (_, learn) in enumerate(row) if learn), default=None)
    if eos is None or last is None or eos in row[last][0]:
        return row
    return [*row[:last], (row[last][0] + [eos], True), *row[last + 1 :]]


def _drop_turns(
    messages: list[dict[str, Any]], template: ChatTemplate, tokenizer: Any, max_length: int, eos: int | None
) -> list[tuple[list[int], bool]] | None:
    """The conversation without its earliest exchanges, as few dropped as fit max_length (a system message
    kept); None when it has one exchange or even its last one does not fit."""
    head = messages[:1] if messages[0]["role"] == "system" else []
    starts = [i for i, m in enumerate(messages) if m["role"] == "user"][1:]
    for k in starts:
        row = _end_with_eos(
            _encode([_pieces({"messages": head + messages[k:]}, template, tokenizer)], tokenizer)[0], eos
        )
        if sum(len(p) for p, _ in row) <= max_length or k == starts[-1]:
            return row  # the last exchange may still be too long: its prompt is cut next
    return None


def _cut_prompt(
    row: list[tuple[list[int], bool]], max_length: int, bos: int | None
) -> list[tuple[list[int], bool]] | None:
    """The row with the start of what comes before its last learned piece cut to fit (a BOS kept); None when
    the last learned piece and what follows it do not fit alone."""
    last = max(k for k, (_, learn) in enumerate(row) if learn)
    prompt = [t for p, _ in row[:last] for t in p]
    kept = row[last:]
    head = prompt[:1] if bos is not None and prompt[:1] == [bos] else []
    room = max_length - sum(len(p) for p, _ in kept) - len(head)
    if room < 0:
        return None
    return [(head + (prompt[len(head) :][-room:] if room > 0 else []), False), *kept]


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
    try:
        template = _chat.load_setting(cfg.data.chat_template)
    except ValueError as exc:
        problems.append(Problem(source, "data.chat_template", str(exc)))
        template = "auto"
    for split, rows in splits.items():
        path = paths[split]
        cols = columns(rows)
        fmt, names = _sft_format(cfg, cols)
        if not fmt:
            problems.append(
                Problem(
                    source,
                    "data",
                    f"sft needs prompt and response columns in {split} data "
                    f"'{path}': set data.prompt_column + data.response_column, or provide "
                    f"instruction/input/output or messages columns; found columns: {', '.join(cols)}",
                )
            )
            continue
        needed = [c for k, c in names.items() if k != "input"]
        missing = [c for c in needed if c not in cols]
        if missing:
            key = "data.messages_column" if fmt == "messages" else "data.prompt_column"
            problems.append(
                Problem(
                    source,
                    key,
                    f"column '{missing[0]}' not found in {split} data '{path}' (columns: {', '.join(cols)})",
                )
            )
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
    options = {"format": fmt, "chat_template": template, "train_on_prompt": cfg.data.train_on_prompt}
    return Examples(
        task=cfg.task,
        train=out["train"],
        validation=out["validation"],
        sft_format=fmt,
        test=out.get("test", []),
        options=options,
    )


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
    if (
        not isinstance(msgs, list)
        or not msgs
        or not all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs)
    ):
        raise ValueError(f"messages must be a list of {{role, content}} objects, found {describe(msgs)}")
    for k, m in enumerate(msgs):
        if m["role"] not in _chat.ROLES or not isinstance(m["content"], str):
            raise ValueError(
                f"message {k + 1}: expected role system, user or assistant and text content, "
                f"found role {describe(m['role'])} and content {describe(m['content'])}"
            )
    wrong = _chat.check_roles(msgs)
    if wrong:
        raise ValueError(wrong)
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in msgs]}
