"""One fine-tuning run: data -> model (+LoRA) -> Hugging Face Trainer, reporting each evaluation."""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import random
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import yaml

from trainer import _memory
from trainer._chat import is_file_setting as is_template_file
from trainer._loss import TokenMean
from trainer._metrics import evaluate_on_test
from trainer._model import build_model, check_model, model_location
from trainer._oom import is_out_of_memory, out_of_memory
from trainer._optim import label_smoothed, loraplus_optimizer, trainer_options
from trainer._precision import parameter_bytes, resolve_model_dtype
from trainer._tokenize import data_warnings, tokenize
from trainer.config import TrainConfig
from trainer.data import Examples, load_examples
from trainer.tasks import get_task
from trainer.tasks._options import data_options


class Reporter(Protocol):
    """Receives every evaluation of a run; returning True stops the run (a pruned trial)."""

    def report(self, step: int, metrics: dict[str, float]) -> bool: ...


class NeverStop:
    def report(self, step: int, metrics: dict[str, float]) -> bool:
        return False


@dataclass
class Prepared:
    """What a run needs before its first step: model location, tokenizer, tokenized splits."""

    location: str
    tokenizer: Any
    examples: Examples
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    test: list[dict[str, Any]] = field(default_factory=list)
    """The held-out test split, tokenized (empty without one); only `run_job(evaluate_test=True)` uses it."""
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per split: rows, token-length percentiles, rows truncated or dropped, unknown tokens."""

    @property
    def warnings(self) -> dict[str, int]:
        """Counted data warnings as data, e.g. {'train.truncated': 12, 'validation.dropped': 3}."""
        return data_warnings(self.stats)

    @property
    def template(self) -> dict[str, str]:
        """The prompt format the task tokenized with (sft: the chat template's `name`, and for a Jinja file its
        `path` and `sha256`), or {} for a task without one."""
        return dict(self.stats.get("train", {}).get("template") or {})


@dataclass
class JobResult:
    metrics: dict[str, float]
    """The final evaluation's metrics."""
    step: int
    max_steps: int
    stopped: bool
    """True when the reporter stopped the run before `max_steps`."""
    history: list[dict[str, float]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    device: str = "cpu"
    precision: str = "fp32"
    """The arithmetic the run used: bf16 (mixed precision) or fp32 (see `train.precision`)."""
    model_dtype: str = "fp32"
    """What the model's weights were held in: fp32 | bf16 | fp16 (see `train.model_dtype`)."""
    parameters: dict[str, int] = field(default_factory=dict)
    """Bytes of the model's parameters as trained: `bytes` (all) and `trainable_bytes`."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time split: setup (data/model), train (optimizer steps), eval."""
    test_metrics: dict[str, float] = field(default_factory=dict)
    """`test_`-prefixed metrics of the held-out test split, evaluated once after training (if asked and present)."""
    data_warnings: dict[str, int] = field(default_factory=dict)
    best: dict[str, float] | None = None
    """With `keep_best`: the best evaluation's step and metrics (its weights are the ones saved)."""
    memory: dict[str, float] = field(default_factory=dict)
    """CUDA memory in MiB (see trainer._memory); empty on CPU."""
    generations: list[dict[str, Any]] = field(default_factory=list)
    """Each generating evaluation (`eval:`): its step, seconds spent generating, and a few samples
    (prompt, reference, output)."""
    template: dict[str, str] = field(default_factory=dict)
    """The prompt format the data was tokenized with (see `Prepared.template`)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_PREPARED: dict[str, Prepared] = {}
"""Prepared data by fingerprint, kept for the life of the process (a reused Ray worker runs many trials)."""


def fingerprint(cfg: TrainConfig, location: str) -> str:
    """What the tokenized data depends on: the data files, the data settings, the tokenizer, max_length."""
    h = hashlib.sha256()
    h.update(b"prepared-v3")  # the layout of Prepared: test split and stats; every assistant turn labelled
    template = cfg.data.chat_template if is_template_file(cfg.data.chat_template) else None
    for path in (cfg.data.train, cfg.data.validation, cfg.data.test, template):
        if path:
            p = Path(path)
            files = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]
            for f in files if p.exists() else []:
                st = f.stat()
                h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}".encode())
    loc = Path(location)
    if loc.is_dir():
        for name in (
            "tokenizer.json",
            "tokenizer_config.json",
            "vocab.txt",
            "special_tokens_map.json",
            "tokenizer.model",
            "merges.txt",
            "vocab.json",
            "chat_template.jinja",
        ):
            f = loc / name
            if f.exists():
                h.update(f"{name}:{f.stat().st_size}:{f.stat().st_mtime_ns}".encode())
    data = cfg.data
    h.update(
        json.dumps(
            [location, cfg.task, cfg.train.max_length, cfg.train.seed, asdict(data)], sort_keys=True, default=str
        ).encode()
    )
    h.update(json.dumps(data_options(cfg.task_options), sort_keys=True).encode())
    return h.hexdigest()[:20]


def prepare(
    cfg: TrainConfig, source: str = "", cache_dir: str | Path | None = None, say: Callable[[str], None] | None = None
) -> Prepared:
    """Check the data and the model of `cfg` and tokenize; raises ConfigError before any training.

    With `cache_dir`, the result is cached on disk by `fingerprint` (and in memory for this process),
    so a study tokenizes once and every trial, in any worker, reads the same token ids. A cache file
    that cannot be read or does not hold prepared data is rebuilt, and `say` (default: stderr) says so.
    """
    return _plan(cfg, source, cache_dir, say)[1]()


@dataclass
class Preparing:
    """A `prepare` under way: the checked model location now, the tokenized data from `result()`."""

    location: str
    future: Future

    def result(self) -> Prepared:
        return self.future.result()


def prepare_soon(
    cfg: TrainConfig, source: str = "", cache_dir: str | Path | None = None, say: Callable[[str], None] | None = None
) -> Preparing:
    """`prepare`, with the slow half in a background thread so the caller can start other work.

    The model location and the data are checked here (a ConfigError is raised now); loading the
    tokenizer and tokenizing run in a thread, and `result()` raises their errors.
    """
    location, build = _plan(cfg, source, cache_dir, say)
    done: Future = Future()

    def work() -> None:
        try:
            done.set_result(build())
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
            done.set_exception(exc)

    threading.Thread(target=work, name="sftune-prepare", daemon=True).start()
    return Preparing(location, done)


def _plan(
    cfg: TrainConfig, source: str, cache_dir: str | Path | None, say: Callable[[str], None] | None = None
) -> tuple[str, Callable[[], Prepared]]:
    """Check the model location and the data now; return the location and what builds the rest."""
    location = model_location(cfg, source)
    check_model(cfg, location, source)
    key = fingerprint(cfg, location) if cache_dir is not None else ""
    if key and key in _PREPARED:
        return location, lambda: _PREPARED[key]
    cached = Path(cache_dir) / f"prepared-{key}.pkl" if key and cache_dir is not None else None
    examples = None if cached is not None and cached.exists() else load_examples(cfg, source)
    return location, lambda: _build(cfg, source, location, key, cached, examples, say or _to_stderr)


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _read_cache(cached: Path, location: str) -> tuple[Prepared | None, str]:
    """The prepared data in a cache file, or None and why it cannot be used (torn, another version's, not ours)."""
    try:
        with cached.open("rb") as fh:
            prep = pickle.load(fh)
    except Exception as exc:  # noqa: BLE001 - anything unreadable is rebuilt
        return None, f"unreadable: {type(exc).__name__}"
    if not isinstance(prep, Prepared):
        return None, f"it holds a {type(prep).__name__}, not prepared data"
    missing = [f.name for f in fields(Prepared) if f.name not in vars(prep)]
    if missing:
        return None, f"written by another version (no {', '.join(missing)})"
    if prep.location != location or not isinstance(prep.train, list) or not isinstance(prep.validation, list):
        return None, "it holds another model's or a damaged copy of the data"
    return prep, ""


def _build(
    cfg: TrainConfig,
    source: str,
    location: str,
    key: str,
    cached: Path | None,
    examples: Examples | None,
    say: Callable[[str], None],
) -> Prepared:
    if cached is not None and cached.exists():
        prep, why = _read_cache(cached, location)
        if prep is not None:
            _PREPARED[key] = prep
            return prep
        say(f"note: the tokenized-data cache {cached} cannot be used ({why}): discarded, tokenizing again")
        cached.unlink(missing_ok=True)
    if examples is None:
        examples = load_examples(cfg, source)
    tokenizer = get_task(cfg.task, source).load_processor(location, source)
    splits, stats = tokenize(examples, tokenizer, cfg.train.max_length, source)
    prep = Prepared(location, tokenizer, examples, splits["train"], splits["validation"], splits.get("test", []), stats)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        with tmp.open("wb") as fh:
            pickle.dump(prep, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, cached)
        _PREPARED[key] = prep
    return prep


def total_steps(cfg: TrainConfig, n_train: int, processes: int = 1) -> int:
    """Optimizer steps of a run: `max_steps`, or `epochs` over `n_train` rows shared by `processes` data-parallel
    processes (each takes batch_size rows per micro-batch)."""
    t = cfg.train
    if t.epochs is None:
        return t.max_steps
    per_epoch = math.ceil(n_train / (t.batch_size * t.gradient_accumulation * max(1, processes)))
    return max(1, math.ceil(t.epochs * per_epoch))


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 in hardware (AVX512-BF16 or AMX), where bf16 autocast trains
    about 1.8x faster than fp32; elsewhere it is emulated and slower. The one reach into torch's private
    CPU probes (a canary in tests/unit/test_precision.py); /proc/cpuinfo's flags where they are gone."""
    import torch

    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(callable(p) for p in probes):
        return any(bool(p()) for p in probes if callable(p))
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str = "auto") -> tuple[str, str]:
    """The device a run trains on and the arithmetic it uses: ('cuda' | 'cpu', 'bf16' | 'fp32')."""
    import torch

    if torch.cuda.is_available():
        device, native = "cuda", bool(torch.cuda.is_bf16_supported())
    else:
        device, native = "cpu", cpu_has_native_bf16()
    if precision == "bf16" and device == "cuda" and not native:
        raise ValueError(
            f"train.precision: bf16 was asked for, but this GPU ({torch.cuda.get_device_name()}) "
            "does not support bf16; use auto or fp32"
        )
    if precision == "auto":
        return device, "bf16" if native else "fp32"
    return device, precision


def run_job(
    cfg: TrainConfig,
    reporter: Reporter | None = None,
    *,
    source: str = "",
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
    prepared: Prepared | None = None,
    cache_dir: str | Path | None = None,
    timing: dict[str, float] | None = None,
    evaluate_test: bool = True,
    keep_best: tuple[str, str] | None = None,
    memory: dict[str, float] | None = None,
    generations: list[dict[str, Any]] | None = None,
    fsdp: str | None = None,
) -> JobResult:
    """Train and evaluate `cfg`; every evaluation goes to `reporter`, which may stop the run.

    With a test split in the data and `evaluate_test`, the final model is evaluated once on it
    (`JobResult.test_metrics`); no reporter sees that evaluation. A study's trials pass False.

    `timing`, when given, is updated in place as the run goes (seconds of setup, train steps and
    evaluation; `started_at` and `first_step_at` as Unix times), so a caller can report it mid-run;
    `memory` likewise with the CUDA memory figures of `trainer._memory` (peak so far at each
    evaluation, what is left at the end). `generations`, when given, gets each generating evaluation's
    `{step, seconds, samples}` (`eval:`) before the reporter sees that evaluation. `fsdp`: the Trainer's own
    `fsdp` option (`full_shard auto_wrap`, ...) for a full fine-tune sharded over data-parallel processes.

    When it returns or raises (a reporter that stops the run by raising, as Ray does for a pruned
    trial, included), the run's model, optimizer, Trainer and batches are released and the CUDA
    cache emptied, so a process that runs job after job (a reused Ray worker) starts each clean.
    `keep_best=(metric, direction)`: track the best evaluation of `metric` (maximize | minimize),
    return it as `result.best`, and save (per `cfg.save`) the weights of that evaluation, not the last.
    """
    started = time.perf_counter()
    timing = timing if timing is not None else {}
    memory = memory if memory is not None else {}
    timing.update({"setup": 0.0, "train": 0.0, "eval": 0.0, "started_at": time.time()})
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    threads = threads or cfg.train.threads
    if threads:
        torch.set_num_threads(threads)
    reporter = reporter or NeverStop()
    say = progress or (lambda _msg: None)
    prep = prepared or prepare(cfg, source, cache_dir=cache_dir, say=progress)
    t = cfg.train
    max_steps = total_steps(cfg, len(prep.train), int(os.environ.get("WORLD_SIZE", "1")))  # torchrun, Ray Train
    timing["max_steps"] = max_steps
    transformers.set_seed(t.seed)
    device, precision = resolve_precision(t.precision)
    _memory.begin(memory, device)
    made: dict[str, Any] = {}
    try:
        return _train(
            cfg,
            reporter,
            prep,
            max_steps,
            device,
            precision,
            started,
            timing,
            memory,
            say,
            source,
            evaluate_test=evaluate_test,
            keep_best=keep_best,
            made=made,
            generations=generations if generations is not None else [],
            fsdp=fsdp,
        )
    except BaseException as exc:
        # The frames the exception left (the training loop's, the callback's) hold the model and
        # the optimizer until the exception is gone: let go of their locals now.
        traceback.clear_frames(exc.__traceback__)
        if is_out_of_memory(exc):  # an outcome of these params (trainer._oom), said as one line
            trainer = made.get("trainer")
            raise out_of_memory(exc, getattr(trainer, "state", None), made.get("model"), device) from None
        raise
    finally:
        made.pop("trainer", None)
        _unwrap_forward(made.pop("model", None))
        _memory.release(memory)


def _unwrap_forward(model: Any) -> None:
    """Mixed precision wraps `model.forward` in an autocast method bound to the model itself (accelerate's
    `prepare_model`): a reference cycle that keeps the model alive until a full garbage collection. Drop
    those instance attributes so the model goes with its last reference, without a collection."""
    if model is None:
        return
    for module in model.modules():
        for name in ("forward", "_original_forward"):
            bound = module.__dict__.get(name)
            if getattr(bound, "__self__", None) is module:
                del module.__dict__[name]


def _train(
    cfg: TrainConfig,
    reporter: Reporter,
    prep: Prepared,
    max_steps: int,
    device: str,
    precision: str,
    started: float,
    timing: dict[str, float],
    memory: dict[str, float],
    say: Callable[[str], None],
    source: str,
    *,
    evaluate_test: bool,
    keep_best: tuple[str, str] | None,
    made: dict[str, Any],
    generations: list[dict[str, Any]],
    fsdp: str | None = None,
) -> JobResult:
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    t = cfg.train
    task = get_task(cfg.task, source)
    model = build_model(
        cfg, _local_location(cfg, prep, source), prep.tokenizer, prep.examples.num_labels, prep.examples.labels, source
    )
    made["model"] = model  # run_job undoes what training wrapped around it (see _unwrap_forward)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    history: list[dict[str, float]] = []
    reported = task.reported_metrics(cfg)
    generating = _generators(cfg, task, prep, evaluate_test)
    last_step = min(max_steps, t.stop_at_step or max_steps)
    best = _BestKeeper(keep_best, snapshot=cfg.save != "none") if keep_best else None
    state_box: dict[str, Any] = {"stopped": False, "step_start": None, "eval_start": None}

    class _Report(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            state_box["step_start"] = time.perf_counter()
            if "first_step_at" not in timing:
                timing["first_step_at"] = time.time()
                timing["setup"] = time.perf_counter() - started

        def on_step_end(self, args, state, control, **kw):
            timing["train"] += time.perf_counter() - state_box["step_start"]
            if state.global_step >= state.max_steps:
                control.should_evaluate = True  # the final model is always evaluated

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                say(
                    f"step {state.global_step}/{state.max_steps}  loss {logs['loss']:.4f}  "
                    f"lr {logs.get('learning_rate', 0):.2e}  {time.perf_counter() - started:.0f}s"
                )

        def on_evaluate(self, args, state, control, metrics=None, **kw):
            if state_box.get("testing"):
                return  # the held-out test evaluation is never reported
            m = task.clean_metrics(metrics or {}, keep=reported)
            history.append({"step": state.global_step, **m})
            fresh = generations[-1] if generations and generations[-1]["step"] == state.global_step else None
            if fresh is not None:
                history[-1]["generate_seconds"] = fresh["seconds"]
            if best is not None:
                best.update(history[-1], kw.get("model"))
            if state_box["eval_start"] is not None:  # the report below carries this evaluation's time too
                timing["eval"] += time.perf_counter() - state_box["eval_start"]
                state_box["eval_start"] = time.perf_counter()
            _memory.note_peak(memory)
            say(
                f"eval step {state.global_step}/{state.max_steps}  "
                + "  ".join(f"{k} {v:.4f}" for k, v in m.items())
                + (f"  (generated {len(generating['validation'].rows)} in {fresh['seconds']:.2f}s)" if fresh else "")
            )
            for i, sample in enumerate(fresh["samples"] if fresh else [], 1):
                say(_sample_line(i, sample))
            if reporter.report(state.global_step, m) and state.global_step < state.max_steps:
                state_box["stopped"] = True
                control.should_training_stop = True

    per_token = TokenMean() if task.eval_loss_per_token else None
    early = early_sample(prep.validation, cfg.eval.early_sample)
    if early is not None:
        say(f"early evaluations score a fixed sample of {len(early)} of {len(prep.validation)} validation rows")

    class _TimedTrainer(Trainer):
        def at_last_evaluation(self) -> bool:
            """This evaluation is the run's last: at its last step, or the one after training stopped between."""
            return bool(state_box.get("final")) or self.state.global_step >= last_step

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.get("labels")
            out = super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
            if per_token is not None and not model.training and labels is not None:
                per_token.add((out[0] if return_outputs else out).detach(), labels)
            return out

        def evaluation_loop(self, *args, **kwargs):
            if per_token is not None:
                per_token.reset()
            output = super().evaluation_loop(*args, **kwargs)
            prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
            split = "test" if state_box.get("testing") else "validation"
            generator = generating.get(split)
            final = split == "test" or self.at_last_evaluation()
            if generator is not None and generator.due(final):
                scores, samples, seconds = generator.run(self.model, self.compute_loss_context_manager())
                output.metrics.update({f"{prefix}_{k}": v for k, v in scores.items()})
                timing["generate"] = timing.get("generate", 0.0) + seconds
                if split == "validation":
                    generations.append(
                        {"step": self.state.global_step, "seconds": round(seconds, 3), "samples": samples}
                    )
            mean = per_token.mean() if per_token is not None else None
            if mean is not None and f"{prefix}_loss" in output.metrics:
                output.metrics[f"{prefix}_loss"] = _all_processes_mean(self.accelerator, per_token)
            return output

        def evaluate(self, *args, **kwargs):
            final = self.at_last_evaluation()
            if early is not None and not args and kwargs.get("eval_dataset") is None and not final:
                kwargs["eval_dataset"] = early  # an early evaluation: the fixed sample (`eval.early_sample`)
            state_box["eval_start"] = time.perf_counter()
            try:
                return super().evaluate(*args, **kwargs)
            finally:
                timing["eval"] += time.perf_counter() - state_box["eval_start"]
                state_box["eval_start"] = None

    args = TrainingArguments(
        output_dir=str(out / "_trainer"),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size or task.eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation,
        learning_rate=t.learning_rate,
        **trainer_options(cfg, max_steps),  # optimizer, scheduler options, NEFTune (trainer._optim)
        warmup_steps=round(t.warmup_ratio * max_steps),
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        max_steps=max_steps,
        eval_strategy="steps",
        eval_steps=t.eval_every,
        logging_strategy="steps",
        logging_steps=max(1, min(t.eval_every, 25)),
        save_strategy="no",
        report_to="none",
        seed=t.seed,
        data_seed=t.seed,
        use_cpu=device == "cpu",
        bf16=precision == "bf16",  # mixed precision (autocast): the weights stay fp32
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        label_names=["labels"],
        prediction_loss_only=task.prediction_loss_only,
        fsdp=fsdp or None,
    )
    trainer = _TimedTrainer(
        model=model,
        args=args,
        train_dataset=task.train_rows(cfg, prep.train),  # an image task's augmentation, training only
        eval_dataset=prep.validation,
        data_collator=task.collator(prep.tokenizer),
        compute_metrics=None if task.prediction_loss_only else task.metric_function(cfg, prep.examples),
        compute_loss_func=label_smoothed(
            t.label_smoothing, task.peft_task_type == "CAUSAL_LM", task.loss(cfg, prep.train, prep.examples), model
        ),
        optimizers=(loraplus_optimizer(cfg, model, args), None),
        callbacks=[_Report(), *_stop_at(t.stop_at_step)],
    )
    trainer.remove_callback(PrinterCallback)
    made["trainer"] = trainer  # the step an out-of-memory error stopped at (trainer.state, made anew by train())
    trainer.train()
    step = trainer.state.global_step
    if not history or history[-1]["step"] != step:
        state_box["final"] = True
        trainer.evaluate()  # stopped between evaluations: report the model we have
    tested = _evaluate_test(trainer, prep, cfg, state_box, timing, say) if evaluate_test and prep.test else {}
    result = JobResult(
        metrics={k: v for k, v in history[-1].items() if k not in ("step", "generate_seconds")},
        step=step,
        max_steps=max_steps,
        stopped=state_box["stopped"],
        history=history,
        labels=prep.examples.labels,
        device=device,
        precision=precision,
        model_dtype=resolve_model_dtype(t.model_dtype, cfg.peft.method, precision=t.precision),
        parameters=parameter_bytes(model),
        seconds={**timing, "total": time.perf_counter() - started},
        test_metrics=tested,
        data_warnings=prep.warnings,
        best=best.best if best is not None else None,
        memory=memory,
        generations=generations,
        template=prep.template,
    )
    if best is not None:
        best.restore(trainer.model)
    task.finish_model(trainer.model, cfg, prep.examples)
    if not trainer.is_world_process_zero():  # data-parallel: the main process alone writes the run's files
        return result
    _save(cfg, trainer.model, prep.tokenizer, out)
    (out / "metrics.json").write_text(json.dumps({**result.to_dict(), "config": cfg.to_dict()}, indent=2) + "\n")
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return result


def early_sample(rows: list[Any], size: float | None) -> list[Any] | None:
    """The fixed sample of validation rows early evaluations score (`eval.early_sample`: a count, or a fraction
    of the rows), drawn with seed 0 and kept in the rows' order; None when it would be every row."""
    if size is None:
        return None
    k = int(size) if size >= 1 else max(1, round(size * len(rows)))
    if k >= len(rows):
        return None
    return [rows[i] for i in sorted(random.Random(0).sample(range(len(rows)), k))]


def _generators(cfg: TrainConfig, task: Any, prep: Prepared, evaluate_test: bool) -> dict[str, Any]:
    """Where `eval:` asks for generation metrics: a `Generator` over the validation rows (and the test rows)."""
    from trainer.generation import Generator
    from trainer.generation.checks import asks_generation

    if not task.generates or not asks_generation(cfg.eval):
        return {}
    options = prep.examples.options
    out = {"validation": Generator(cfg, task, prep.examples.validation, prep.tokenizer, options)}
    if evaluate_test and prep.examples.test:
        out["test"] = Generator(cfg, task, prep.examples.test, prep.tokenizer, options)
    return out


def _sample_line(i: int, sample: dict[str, str]) -> str:
    """One kept generation on one line: the prompt's end, the output, the reference."""

    def short(text: str, n: int) -> str:
        text = " ".join(text.split())
        return text if len(text) <= n else "…" + text[-(n - 1) :]

    return (
        f"  sample {i}: {short(sample['prompt'], 60)!r} -> {short(sample['output'], 60)!r} "
        f"(reference {short(sample['reference'], 40)!r})"
    )


def _all_processes_mean(accelerator: Any, per_token: TokenMean) -> float:
    """The token-weighted mean over every process's share of the split (one process: its own)."""
    if accelerator.num_processes <= 1:
        return per_token.total / per_token.tokens
    import torch

    both = accelerator.reduce(
        torch.tensor([per_token.total, float(per_token.tokens)], dtype=torch.float64, device=accelerator.device),
        reduction="sum",
    )
    return float(both[0] / both[1])


def _evaluate_test(
    trainer: Any,
    prep: Prepared,
    cfg: TrainConfig,
    state_box: dict[str, Any],
    timing: dict[str, float],
    say: Callable[[str], None],
) -> dict[str, float]:
    """The final model on the held-out test split, once; its time is `timing['test']`, not eval."""
    eval_before, start = timing["eval"], time.perf_counter()
    state_box["testing"] = True
    try:
        task = get_task(cfg.task)
        out = evaluate_on_test(trainer, prep.test, task, keep=task.reported_metrics(cfg))
    finally:
        state_box["testing"] = False
        timing["eval"], timing["test"] = eval_before, time.perf_counter() - start
    say(f"test ({len(prep.test)} held-out examples)  " + "  ".join(f"{k} {v:.4f}" for k, v in out.items()))
    return out


def _local_location(cfg: TrainConfig, prep: Prepared, source: str) -> str:
    """Where this machine loads the model from: data prepared on another node names that node's path."""
    if Path(prep.location).exists() or not Path(prep.location).is_absolute():
        return prep.location
    return model_location(cfg, source)


def _save(cfg: TrainConfig, model: Any, tokenizer: Any, out: Path) -> None:
    if cfg.save == "none":
        return
    if cfg.save == "adapter":
        model.save_pretrained(out / "adapter")
        tokenizer.save_pretrained(out / "adapter")
        return
    if cfg.peft.method != "full":
        model = model.merge_and_unload()
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")


def _stop_at(step: int | None) -> list[Any]:
    """A callback that ends training after optimizer step `step` (evaluated), the schedule unchanged."""
    if step is None:
        return []
    from transformers import TrainerCallback

    class _StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step >= step:
                control.should_evaluate = True
                control.should_training_stop = True

    return [_StopAt()]


class _BestKeeper:
    """The best evaluation of one metric so far and, when asked, a CPU copy of the weights it had."""

    def __init__(self, keep_best: tuple[str, str], snapshot: bool) -> None:
        self.metric, direction = keep_best
        self.sign = 1.0 if direction == "maximize" else -1.0
        self.snapshot = snapshot
        self.best: dict[str, float] | None = None
        self.weights: dict[str, Any] | None = None

    def update(self, evaluation: dict[str, float], model: Any) -> None:
        value = evaluation.get(self.metric)
        if value is None or math.isnan(value):
            return
        if self.best is not None and self.sign * value <= self.sign * self.best[self.metric]:
            return
        self.best = dict(evaluation)
        if self.snapshot and model is not None:  # the trainable weights only (a LoRA adapter and its head)
            self.weights = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}

    def restore(self, model: Any) -> None:
        """Put the best evaluation's weights back into `model` before it is saved."""
        if not self.weights:
            return
        import torch

        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in self.weights.items():
                params[name].copy_(value.to(params[name].device))
