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
        words = [*rng.sample(FILLER, 4), rng.choice(POSITIVE if label else NEGATIVE)]
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
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[EOS]", *sorted(set(words))]


def make_tokenizer(out: Path) -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(_vocab())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        eos_token="[EOS]",
    )
    fast.save_pretrained(out)
    return fast


def make_model(out: Path, arch: str = "bert", seed: int = 0) -> Path:
    """Save a 2-layer randomly initialised `arch` model with a tiny word-level tokenizer in `out`."""
    import torch
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tok = make_tokenizer(out)
    n = len(tok)
    if arch == "bert":
        model = BertModel(
            BertConfig(
                vocab_size=n,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                max_position_embeddings=128,
                pad_token_id=0,
            )
        )
    elif arch == "gpt2":
        model = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=n,
                n_embd=32,
                n_layer=2,
                n_head=2,
                n_positions=128,
                pad_token_id=0,
                eos_token_id=4,
                bos_token_id=4,
            )
        )
    elif arch == "llama":
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=n,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=2,
                intermediate_size=64,
                max_position_embeddings=128,
                pad_token_id=0,
                eos_token_id=4,
                bos_token_id=4,
            )
        )
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
        "train": {
            "learning_rate": 3e-3,
            "batch_size": 16,
            "max_steps": 30,
            "eval_every": 10,
            "max_length": 16,
            "seed": 0,
            **train,
        },
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
        "train": {
            "learning_rate": 3e-3,
            "batch_size": 16,
            "max_steps": 20,
            "eval_every": 10,
            "max_length": 32,
            "seed": 0,
            **train,
        },
        "output_dir": str(tmp / "out"),
    }


def study_file(
    tmp: Path,
    model_dir: Path,
    *,
    name: str = "s",
    n_trials: int = 4,
    pruner: Any = None,
    space: Any = None,
    concurrency: int = 2,
    max_steps: int = 30,
    eval_every: int = 10,
    **extra: Any,
) -> Path:
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
        "space": space
        or {
            "train.learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
            "peft.r": {"type": "int", "low": 2, "high": 8},
        },
        "output_dir": str(tmp / "runs"),
        **extra,
    }
    return write_config(tmp / f"{name}.yaml", data)


def chat_rows() -> list[dict[str, Any]]:
    """16 two-exchange conversations of sums in the tiny vocabulary (user asks, assistant answers, twice)."""
    return [
        {
            "messages": [
                {"role": "user", "content": f"add {a} and {b} :"},
                {"role": "assistant", "content": str(a + b)},
                {"role": "user", "content": f"add {b} and {a} :"},
                {"role": "assistant", "content": str(a + b)},
            ]
        }
        for a in range(4)
        for b in range(4)
    ]


def chat_config(tmp: Path, model_dir: Path, **data: Any) -> dict[str, Any]:
    """The tiny SFT config over `chat_rows` (12 train, 4 validation), 2 steps; `data` adds data keys."""
    cfg = sft_config(tmp, model_dir, max_steps=2, eval_every=2, max_length=64)
    rows = chat_rows()
    write_jsonl(tmp / "data" / "chat_train.jsonl", rows[:12])
    write_jsonl(tmp / "data" / "chat_val.jsonl", rows[12:])
    cfg["data"] = {"train": "data/chat_train.jsonl", "validation": "data/chat_val.jsonl", **data}
    return cfg


def make_bpe_tokenizer(
    texts: list[str], out: Path | None = None, *, bos: bool = True, chat_template: str | None = None
) -> Any:
    """A byte-level BPE tokenizer (GPT-2's kind: it decodes back to the exact text) trained on `texts`, with
    <s> added in front of each text when `bos`, and `chat_template` as its own template; saved in `out`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=600,
            special_tokens=specials,
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    if out is not None:
        fast.save_pretrained(out)
    return fast


def regression_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Sentiment-like texts with float scores: `score` about 40 (negative) or 60 (positive), `second` = score / 10."""
    rng = random.Random(seed)
    rows = []
    for r in sentiment_rows(n, seed):
        score = 40.0 + 20.0 * r["label"] + rng.gauss(0, 1)
        rows.append({"text": r["text"], "score": round(score, 3), "second": round(score / 10 + rng.gauss(0, 0.1), 3)})
    return rows


def regression_config(tmp: Path, model_dir: Path, **train: Any) -> dict[str, Any]:
    write_jsonl(tmp / "data" / "reg_train.jsonl", regression_rows(240, seed=1))
    write_jsonl(tmp / "data" / "reg_val.jsonl", regression_rows(80, seed=2))
    return {
        "model": str(model_dir),
        "task": "regression",
        "data": {"train": "data/reg_train.jsonl", "validation": "data/reg_val.jsonl", "label_column": "score"},
        "task_options": {"standardize": True},
        "peft": {"method": "full"},
        "train": {
            "learning_rate": 3e-3,
            "batch_size": 16,
            "max_steps": 30,
            "eval_every": 10,
            "max_length": 16,
            "seed": 0,
            **train,
        },
        "output_dir": str(tmp / "out"),
    }


TASK_CONFIGS = {"regression": regression_config}
"""The tiny base config of each task beyond classification and sft, by task name."""


def multilabel_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Texts with a list of labels each: positive / negative when such a word is in it, film when film or movie is."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.sample(FILLER, 3)
        if rng.random() < 0.5:
            words.append(rng.choice(POSITIVE))
        if rng.random() < 0.5:
            words.append(rng.choice(NEGATIVE))
        rng.shuffle(words)
        labels = [
            name
            for name, hit in (
                ("positive", set(words) & set(POSITIVE)),
                ("negative", set(words) & set(NEGATIVE)),
                ("film", set(words) & {"film", "movie"}),
            )
            if hit
        ]
        rows.append({"text": " ".join(words), "labels": labels})
    return rows


def multilabel_config(tmp: Path, model_dir: Path, **train: Any) -> dict[str, Any]:
    write_jsonl(tmp / "data" / "ml_train.jsonl", multilabel_rows(240, seed=1))
    write_jsonl(tmp / "data" / "ml_val.jsonl", multilabel_rows(80, seed=2))
    return {
        "model": str(model_dir),
        "task": "multilabel",
        "data": {"train": "data/ml_train.jsonl", "validation": "data/ml_val.jsonl", "label_column": "labels"},
        "task_options": {"threshold": "tune"},
        "peft": {"method": "full"},
        "train": {
            "learning_rate": 1e-2,
            "batch_size": 16,
            "max_steps": 30,
            "eval_every": 10,
            "max_length": 16,
            "seed": 0,
            **train,
        },
        "output_dir": str(tmp / "out"),
    }


TASK_CONFIGS["multilabel"] = multilabel_config


TREC_NAMES = Path(__file__).parent / "data" / "trec6_names"


def name_tags(words: list[str], scheme: str = "bio") -> list[str]:
    """NAME for each capitalised word after the first (a run of them one entity), O for the rest."""
    tags: list[str] = []
    for i, w in enumerate(words):
        if i > 0 and w[0].isupper():
            tags.append("NAME" if scheme == "plain" else ("I-NAME" if tags[-1] != "O" else "B-NAME"))
        else:
            tags.append("O")
    return tags


def tagging_rows(file: str, scheme: str = "bio") -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (TREC_NAMES / file).read_text().splitlines()]
    return [{"tokens": r["text"].split(), "tags": name_tags(r["text"].split(), scheme)} for r in rows]


def make_char_model(out: Path, seed: int = 0) -> Path:
    """A 2-layer random BERT whose (fast) tokenizer splits each word into characters: the first sub-word of a
    word is its first character, `##`-prefixed characters follow; case is kept."""
    import string

    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertForTokenClassification, PreTrainedTokenizerFast

    chars = sorted(set(string.printable.strip()))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + chars + ["##" + c for c in chars]
    tok = Tokenizer(models.WordPiece(vocab={w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    )
    fast.save_pretrained(out)
    torch.manual_seed(seed)
    model = BertForTokenClassification(
        BertConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
            pad_token_id=0,
        )
    )
    model.save_pretrained(out)
    return out


def tagging_config(tmp: Path, model_dir: Path, scheme: str = "bio", **train: Any) -> dict[str, Any]:
    write_jsonl(tmp / "data" / "tag_train.jsonl", tagging_rows("questions.jsonl", scheme))
    write_jsonl(tmp / "data" / "tag_val.jsonl", tagging_rows("questions_val.jsonl", scheme))
    return {
        "model": str(model_dir),
        "task": "token-classification",
        "data": {"train": "data/tag_train.jsonl", "validation": "data/tag_val.jsonl"},
        "task_options": {"tag_scheme": scheme},
        "peft": {"method": "full"},
        "train": {
            "learning_rate": 3e-3,
            "batch_size": 16,
            "max_steps": 60,
            "eval_every": 20,
            "max_length": 96,
            "seed": 0,
            **train,
        },
        "output_dir": str(tmp / "out"),
    }


TASK_CONFIGS["token-classification"] = tagging_config


def digits_folder(out: Path, per_class: int, offset: int = 0) -> Path:
    """scikit-learn's bundled 8x8 digits as PNG files, one folder per class (`per_class` each, from `offset`)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for label in range(10):
        (out / str(label)).mkdir(parents=True, exist_ok=True)
        idx = np.flatnonzero(digits.target == label)[offset : offset + per_class]
        for i in idx:
            image = Image.fromarray((digits.images[i] * 255 / 16).astype("uint8"), mode="L")
            image.save(out / str(label) / f"{i}.png")
    return out


def make_image_model(out: Path, arch: str = "resnet", seed: int = 0) -> Path:
    """A tiny random ResNet or ViT image classifier with its image processor (resize to 32, normalise)."""
    import torch
    from transformers import (
        ResNetConfig,
        ResNetForImageClassification,
        ViTConfig,
        ViTForImageClassification,
        ViTImageProcessorPil,
    )

    torch.manual_seed(seed)
    if arch == "resnet":
        model = ResNetForImageClassification(
            ResNetConfig(
                num_channels=3, embedding_size=8, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic", num_labels=2
            )
        )
    else:
        model = ViTForImageClassification(
            ViTConfig(
                image_size=32,
                patch_size=8,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                num_labels=2,
            )
        )
    model.save_pretrained(out)
    processor = ViTImageProcessorPil(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor.save_pretrained(out)
    return out


def image_config(tmp: Path, model_dir: Path, **train: Any) -> dict[str, Any]:
    digits_folder(tmp / "data" / "digits_train", 40)
    digits_folder(tmp / "data" / "digits_val", 10, offset=100)
    return {
        "model": str(model_dir),
        "task": "image-classification",
        "data": {"train": "data/digits_train", "validation": "data/digits_val"},
        "peft": {"method": "full"},
        "train": {"learning_rate": 3e-3, "batch_size": 32, "max_steps": 40, "eval_every": 10, "seed": 0, **train},
        "output_dir": str(tmp / "out"),
    }


TASK_CONFIGS["image-classification"] = image_config


def refused_train(tmp: Path, data: dict[str, Any], capsys: Any) -> str:
    """`sftune train` on `data` written to tmp/train.yaml must exit 2 with no traceback and train nothing;
    returns what it printed on stderr."""
    from search.cli import main

    path = write_config(tmp / "train.yaml", data)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and not (tmp / "out" / "metrics.json").exists()
    return err
