"""Tiny randomly initialised models and small synthetic data for tests (nothing downloaded)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import yaml

POSITIVE = ["good", "great", "fine", "lovely", "superb", "nice"]
NEGATIVE = ["bad", "awful", "poor", "dull", "boring", "ugly"]
FILLER = ["the", "movie", "was", "a", "plot", "it", "really", "quite", "and", "story", "film", "very"]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sentiment_rows(n: int, seed: int, string_labels: bool = False) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = rng.sample(FILLER, 4) + [rng.choice(POSITIVE if label else NEGATIVE)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": ["negative", "positive"][label] if string_labels else label})
    return rows


def sft_rows(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        rows.append({"prompt": f"add {a} and {b} :", "response": f" {a + b}"})
    return rows


def _vocab() -> list[str]:
    words = POSITIVE + NEGATIVE + FILLER + ["add", "and", ":", "###", "instruction", "response", "input"]
    words += [str(i) for i in range(19)]
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[EOS]"] + sorted(set(words))


def make_tokenizer(out: Path) -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(_vocab())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", eos_token="[EOS]")
    fast.save_pretrained(out)
    return fast


def make_model(out: Path, arch: str = "bert", seed: int = 0) -> Path:
    """Save a 2-layer randomly initialised `arch` model with a tiny word-level tokenizer in `out`."""
    import torch
    from transformers import (BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                              LlamaForCausalLM)

    torch.manual_seed(seed)
    tok = make_tokenizer(out)
    n = len(tok)
    if arch == "bert":
        model = BertModel(BertConfig(vocab_size=n, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=128, pad_token_id=0))
    elif arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=n, n_embd=32, n_layer=2, n_head=2, n_positions=128,
                                           pad_token_id=0, eos_token_id=4, bos_token_id=4))
    elif arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=n, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
                                             max_position_embeddings=128, pad_token_id=0, eos_token_id=4,
                                             bos_token_id=4))
    else:
        raise ValueError(arch)
    model.save_pretrained(out)
    return out


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def classification_config(tmp: Path, model_dir: Path, **train: Any) -> dict[str, Any]:
    write_jsonl(tmp / "data" / "train.jsonl", sentiment_rows(240, seed=1))
    write_jsonl(tmp / "data" / "val.jsonl", sentiment_rows(80, seed=2))
    return {
        "model": str(model_dir),
        "task": "classification",
        "data": {"train": "data/train.jsonl", "validation": "data/val.jsonl"},
        "peft": {"method": "full"},
        "train": {"learning_rate": 3e-3, "batch_size": 16, "max_steps": 30, "eval_every": 10,
                  "max_length": 16, "seed": 0, **train},
        "output_dir": str(tmp / "out"),
    }


def sft_config(tmp: Path, model_dir: Path, **train: Any) -> dict[str, Any]:
    write_jsonl(tmp / "data" / "sft_train.jsonl", sft_rows(200, seed=1))
    write_jsonl(tmp / "data" / "sft_val.jsonl", sft_rows(40, seed=2))
    return {
        "model": str(model_dir),
        "task": "sft",
        "data": {"train": "data/sft_train.jsonl", "validation": "data/sft_val.jsonl"},
        "peft": {"method": "lora", "r": 4, "alpha": 8},
        "train": {"learning_rate": 3e-3, "batch_size": 16, "max_steps": 20, "eval_every": 10,
                  "max_length": 32, "seed": 0, **train},
        "output_dir": str(tmp / "out"),
    }


def study_file(tmp: Path, model_dir: Path, *, name: str = "s", n_trials: int = 4, pruner: Any = None,
               space: Any = None, concurrency: int = 2, max_steps: int = 30, eval_every: int = 10,
               **extra: Any) -> Path:
    """A study over the tiny classification config; returns the study file path."""
    base = classification_config(tmp, model_dir, max_steps=max_steps, eval_every=eval_every)
    base["peft"] = {"method": "lora", "r": 4}
    data = {
        "name": name,
        "objective": {"metric": "accuracy", "direction": "maximize"},
        "sampler": {"name": "tpe", "seed": 0},
        "pruner": pruner or {"name": "none"},
        "budget": {"n_trials": n_trials, "concurrency": concurrency},
        "resources": {"cpu": 1},
        "base": base,
        "space": space or {"train.learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
                           "peft.r": {"type": "int", "low": 2, "high": 8}},
        "output_dir": str(tmp / "runs"),
        **extra,
    }
    return write_config(tmp / f"{name}.yaml", data)


def chat_rows() -> list[dict[str, Any]]:
    """16 two-exchange conversations of sums in the tiny vocabulary (user asks, assistant answers, twice)."""
    return [{"messages": [{"role": "user", "content": f"add {a} and {b} :"},
                          {"role": "assistant", "content": str(a + b)},
                          {"role": "user", "content": f"add {b} and {a} :"},
                          {"role": "assistant", "content": str(a + b)}]} for a in range(4) for b in range(4)]


def chat_config(tmp: Path, model_dir: Path, **data: Any) -> dict[str, Any]:
    """The tiny SFT config over `chat_rows` (12 train, 4 validation), 2 steps; `data` adds data keys."""
    cfg = sft_config(tmp, model_dir, max_steps=2, eval_every=2, max_length=64)
    rows = chat_rows()
    write_jsonl(tmp / "data" / "chat_train.jsonl", rows[:12])
    write_jsonl(tmp / "data" / "chat_val.jsonl", rows[12:])
    cfg["data"] = {"train": "data/chat_train.jsonl", "validation": "data/chat_val.jsonl", **data}
    return cfg


def make_bpe_tokenizer(texts: list[str], out: Path | None = None, *, bos: bool = True,
                       chat_template: str | None = None) -> Any:
    """A byte-level BPE tokenizer (GPT-2's kind: it decodes back to the exact text) trained on `texts`, with
    <s> added in front of each text when `bos`, and `chat_template` as its own template; saved in `out`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
    if chat_template is not None:
        fast.chat_template = chat_template
    if out is not None:
        fast.save_pretrained(out)
    return fast
