"""Side-by-side HPO benchmark: sftune vs Trainer.hyperparameter_search (optuna) vs (ray + OptunaSearch + ASHA).

Runs one task through the three, one after another, each in its own child process, once per sampler
seed (`--seeds 0,1,2`), and prints a table per seed: best validation metric, wall time, optimizer
steps trained, and, to 99% of the best metric any of them found with that seed: the time, the
optimizer steps and the machine's busy CPU seconds; then the mean per-trial overhead (trial wall time
minus time inside training and evaluation steps), time from command start to the first training
step, mean CPU utilisation, and the anytime view: the best metric each had found at 25%, 50% and 100%
of the slowest system's wall time. Below each table, sftune's speedups to 99% (time, steps, CPU
seconds: the baseline's / sftune's) against each baseline. Then the medians over the seeds, sftune's
speedups per seed and their medians, and one line that measures the model recipe itself (sftune's
default LoRA recipe against plain peft LoRA, one fixed config), since the baselines here are given
sftune's recipe.

    python tests/benchmarks/compare.py --seeds 0,1,2   # MiniLM + LoRA on SST-2, 12 trials, 2 at a time
    python tests/benchmarks/compare.py --quick --seeds 0,1,2   # tiny random model, smoke run
    python tests/benchmarks/compare.py --dataset trec6 --n-trials 8 --only sftune
    # a sftune variant against the baselines stored by an earlier run (same seeds, data and settings):
    python tests/benchmarks/compare.py --seeds 0,1,2 --only sftune --reuse /tmp/sftune-bench-XXXX \
        --pruner median --label median
    python tests/benchmarks/compare.py --only sftune --reuse DIR --eval-option early_sample=0.2

Same space (a sftune space file), same sampler (TPE, same seed and startup trials; sftune's ranks a
running trial by its reports, where Optuna's counts it as bad: search/tpe.py), same pruning rule
(successive halving on the same evaluation steps; ASHA for stock Ray Tune), same data, model (built
with sftune's recipe), steps and evaluation schedule, and an explicit objective for the Hugging Face
runs. The seeds vary the samplers only: the data subset and the training seed stay those of `--seed`.
"Found" counts every evaluation, a pruned trial's included (the same events as time to 99%).

Precision: like with like. The baselines train in the arithmetic sftune's `train.precision: auto`
picks (`trainer.job.resolve_precision("auto")`: bf16 mixed precision where the GPU or the CPU does
bf16 natively, else fp32), their weights held as sftune's `model_dtype: auto` holds them.
`--baseline-fp32` trains them in Hugging Face's default instead, fp32 weights and arithmetic (the
header then says "baselines in fp32 (Hugging Face's default), not like with like"). The header
names the precision of each.

To 99%, per system: t = the first evaluation (any trial) at or above 99% of the best metric any
system found with that seed. Steps = the optimizer steps all of that system's trials had trained at
t, every trial counted (finished, pruned or running): each trial's steps are interpolated linearly
in time through (its first step's start, 0) and (each of its evaluations, that step), so a trial
running at t counts the share of steps between its last evaluation and its next one that the time
gone says; a trial whose first step comes after t counts nothing. CPU seconds = the machine's busy
CPU seconds, all cores (user + nice + system + irq + softirq from psutil.cpu_times(); idle, iowait
and steal are not busy), from the system's start to t, interpolated between samples taken every half
second. The machine's: other load on a shared machine counts too. Never = not reached.

Ablations of sftune without re-running the baselines: `--pruner NAME` and `--pruner-option
key=value` (repeatable; values read as YAML) set the study's pruner (default: successive-halving,
min_resource = eval_every, reduction_factor 3; options without --pruner change that one's),
`--eval-option key=value` (repeatable) sets keys of the `eval:` section of sftune's base train
config as given (the baselines never read them), and `--label TEXT` names the variant in the tables
(default: what it changes). Every system's result for every seed is written to
`<out>/seed<N>/<system>/result.json` (raw evaluations, trials, timings, busy-CPU samples, its
settings, the scored figures). `--reuse DIR` reads from DIR the results of the systems `--only`
leaves out, for the same seeds (a missing one is left out, with a note), and refuses, before anything
runs, where their settings differ from this run's (task, data and space by content, steps,
evaluation schedule, trials, concurrency, CPUs, GPU share, precisions); the recipe line is skipped.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SFTUNE_SHARED_DATA", REPO.parent / "shared" / "data"))
SYSTEMS = ("sftune", "hf-optuna", "hf-ray")
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


# ---------------------------------------------------------------------------------------------- task


def write_subset(dataset: str, seed: int, n_train: int, n_eval: int, data_dir: Path) -> None:
    """A seeded subset of a dataset of ../shared/data: data_dir/train.jsonl and data_dir/validation.jsonl."""
    import random

    src = SHARED / dataset
    train_rows = (src / "train.jsonl").read_text().splitlines()
    val_file = src / "validation.jsonl" if (src / "validation.jsonl").exists() else src / "test.jsonl"
    val_rows = val_file.read_text().splitlines()
    rng = random.Random(seed)
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "train.jsonl").write_text("\n".join(rng.sample(train_rows, min(n_train, len(train_rows)))) + "\n")
    (data_dir / "validation.jsonl").write_text("\n".join(rng.sample(val_rows, min(n_eval, len(val_rows)))) + "\n")


def lora_base(
    model: str, data_dir: Path, max_steps: int, eval_every: int, max_length: int, seed: int, out: Path
) -> dict[str, Any]:
    """The base train config every system trains from: LoRA classification on data_dir's subset."""
    return {
        "model": model,
        "task": "classification",
        "data": {"train": str(data_dir / "train.jsonl"), "validation": str(data_dir / "validation.jsonl")},
        "peft": {"method": "lora", "r": 8, "alpha": 16, "dropout": 0.05},
        "train": {
            "learning_rate": 3e-4,
            "batch_size": 16,
            "max_steps": max_steps,
            "eval_every": eval_every,
            "max_length": max_length,
            "seed": seed,
        },
        "output_dir": str(out / "unused"),
    }


def make_task(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Write the data subset and the base train config; returns the task description."""

    data_dir = out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    if args.quick:
        import tiny

        model = str(tiny.make_model(out / "tiny-model", "bert"))
        tiny.write_jsonl(data_dir / "train.jsonl", tiny.sentiment_rows(400, seed=1))
        tiny.write_jsonl(data_dir / "validation.jsonl", tiny.sentiment_rows(100, seed=2))
    else:
        model = args.model
        write_subset(args.dataset, args.seed, args.train_samples, args.eval_samples, data_dir)
    base = lora_base(model, data_dir, args.max_steps, args.eval_every, args.max_length, args.seed, out)
    return {
        "base": base,
        "space": str(Path(args.space).resolve()),
        "n_trials": args.n_trials,
        "concurrency": args.concurrency,
        "seed": args.seed,
        "startup": args.startup,
        "metric": "accuracy",
        "max_steps": args.max_steps,
        "eval_every": args.eval_every,
        "cpus": os.cpu_count() or 1,
        "gpu": args.gpu_per_trial,
        "precision": precisions(args.baseline_fp32),
        # What the stored results of another run are checked against (--reuse): the data and space by content.
        "inputs": {
            "model": "tiny random bert" if args.quick else model,
            "train": _sha(data_dir / "train.jsonl"),
            "validation": _sha(data_dir / "validation.jsonl"),
            "space": _sha(Path(args.space)),
        },
        # sftune's variant (an ablation changes these only; the baselines never read them).
        "sftune": {
            "label": args.label or variant_label(args),
            "pruner": sftune_pruner(args),
            "eval": dict(args.eval_option),
        },
    }


def precisions(baseline_fp32: bool) -> dict[str, str]:
    """The arithmetic each system trains in: sftune's `train.precision: auto` (bf16 where the hardware does bf16
    natively, `trainer.job.resolve_precision`), and the baselines' the same unless --baseline-fp32."""
    from trainer.job import resolve_precision

    auto = resolve_precision("auto")[1]
    return {"sftune": auto, "baselines": "fp32" if baseline_fp32 else auto}


def sftune_pruner(args: argparse.Namespace) -> dict[str, Any]:
    """The study's pruner: successive halving on the evaluation steps (as the baselines'), or --pruner's."""
    default = {"name": "successive-halving", "min_resource": args.eval_every, "reduction_factor": 3}
    base = default if args.pruner in (None, default["name"]) else {"name": args.pruner}
    return {**base, **dict(args.pruner_option)}


def variant_label(args: argparse.Namespace) -> str:
    """`--label`'s default: what the variant changes (empty: sftune as it ships)."""
    parts = []
    if args.pruner not in (None, "successive-halving") or args.pruner_option:
        options = "".join(f" {k}={v}" for k, v in args.pruner_option)
        parts.append(f"pruner {args.pruner or 'successive-halving'}{options}")
    parts += [f"eval.{k}={v}" for k, v in args.eval_option]
    return ", ".join(parts)


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _key_value(text: str) -> tuple[str, Any]:
    """`key=value`, the value read as YAML (0.2, true, [a, b]; a plain word stays a string)."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key.strip(), yaml.safe_load(value)


# ------------------------------------------------------------------------------------------- workers


def run_sftune(task: dict[str, Any], out: Path, t0: float) -> dict[str, Any]:
    import optuna
    import yaml

    variant = task["sftune"]
    base = task["base"]
    if variant["eval"]:  # passed through as given (the train config checks the keys)
        base = {**base, "eval": {**base.get("eval", {}), **variant["eval"]}}
    study = {
        "name": "bench",
        "storage": f"sqlite:///{out / 'sftune.db'}",
        "objective": {"metric": task["metric"], "direction": "maximize"},
        "sampler": {"name": "tpe", "seed": task["seed"], "n_startup_trials": task["startup"]},
        "pruner": variant["pruner"],
        "budget": {"n_trials": task["n_trials"], "concurrency": task["concurrency"]},
        "resources": {"cpu": max(1, task["cpus"] // task["concurrency"]), "gpu": task["gpu"]},
        "base": base,
        "space": task["space"],
        "output_dir": str(out / "sftune-runs"),
    }
    path = out / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    cmd = [sys.executable, "-m", "search", "run", str(path)]
    with (out / "sftune.log").open("w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    s = optuna.load_study(study_name="bench", storage=study["storage"])
    trials, evals, first, starts = [], [], None, {}
    for t in s.trials:
        sec = t.user_attrs.get("seconds", {})
        if sec.get("first_step_at"):
            first = min(first or 1e18, sec["first_step_at"])
            starts[str(t.number)] = sec["first_step_at"] - t0
        for h in t.user_attrs.get("history", []):
            if "at" in h:
                evals.append((h["at"] - t0, h.get(task["metric"]), str(t.number), h.get("step", 0)))
        if t.datetime_start and t.datetime_complete:
            trials.append(
                {
                    "state": t.state.name,
                    "value": t.value if t.state.name == "COMPLETE" else None,
                    "wall": (t.datetime_complete - t.datetime_start).total_seconds(),
                    "busy": sec.get("train", 0.0) + sec.get("eval", 0.0),
                    "steps": max(t.intermediate_values) if t.intermediate_values else 0,
                }
            )
    return {"trials": trials, "evals": evals, "first_step_at": first, "starts": starts}


class _Probe:
    """A TrainerCallback measuring time inside training steps and evaluation, and each evaluation (its time,
    metric, trial and step), and when each trial took its first step."""

    def __init__(self, metric: str) -> None:
        from transformers import TrainerCallback

        probe = self

        class CB(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                probe.train = probe.eval = 0.0
                probe.trial += 1
                probe.trial_first = None

            def on_step_begin(self, args, state, control, **kw):
                probe.step_start = time.time()
                probe.first = probe.first or probe.step_start
                if probe.trial_first is None:
                    probe.trial_first = probe.step_start
                    probe.starts[str(probe.trial)] = probe.step_start

            def on_step_end(self, args, state, control, **kw):
                probe.train += time.time() - probe.step_start
                probe.eval_start = time.time()

            def on_evaluate(self, args, state, control, metrics=None, **kw):
                probe.eval += time.time() - probe.eval_start
                if metrics is not None:  # reaches Ray's report through the Trainer
                    metrics.update(
                        {
                            "probe_train": probe.train,
                            "probe_eval": probe.eval,
                            "probe_first": probe.first,
                            "probe_step": state.global_step,
                            "probe_trial_first": probe.trial_first,
                            "probe_at": time.time(),
                        }
                    )
                    probe.events.append(
                        (time.time(), metrics.get(f"eval_{metric}"), str(probe.trial), state.global_step)
                    )

        self.callback = CB()
        self.train = self.eval = 0.0
        self.first = self.trial_first = None
        self.trial = -1
        self.step_start = self.eval_start = time.time()
        self.events: list[tuple[float, float | None, str, int]] = []
        self.starts: dict[str, float] = {}


def _hf_trainer(task: dict[str, Any], out: Path, probe: _Probe, hp_names: dict[str, str]) -> Any:
    from transformers import Trainer, TrainingArguments

    from trainer import config_from_dict, prepare
    from trainer._model import build_model
    from trainer._tokenize import PadCollator
    from trainer.schema import set_dotted
    from trainer.tasks.classification import classification_metrics, tokenize_classification

    data = task["base"]
    if task["precision"]["baselines"] == "fp32":  # Hugging Face's default: fp32 weights too (sftune's model_dtype:
        data = {**data, "train": {**data["train"], "model_dtype": "fp32"}}  # auto holds LoRA's base in bf16)
    base = config_from_dict(data)
    prep = prepare(base)
    # What a user of these tools has: the validation set in file order (sftune sorts it by length).
    validation = tokenize_classification(prep.examples.validation, prep.tokenizer, base.train.max_length)
    t = base.train

    def model_init(trial: Any) -> Any:
        params = trial.params if hasattr(trial, "params") else (trial or {})
        data = base.to_dict()
        for dotted, hf in hp_names.items():
            if dotted.startswith("peft.") and hf in params:
                set_dotted(data, dotted, params[hf])
        return build_model(
            config_from_dict(data), prep.location, prep.tokenizer, prep.examples.num_labels, prep.examples.labels
        )

    args = TrainingArguments(
        output_dir=str(out / "hf-trainer"),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=max(t.batch_size, 32),
        learning_rate=t.learning_rate,
        max_steps=t.max_steps,
        eval_strategy="steps",
        eval_steps=t.eval_every,
        logging_steps=t.eval_every,
        save_strategy="no",
        report_to="none",
        seed=t.seed,
        data_seed=t.seed,
        disable_tqdm=True,
        # sftune's `train.precision: auto` (bf16 mixed precision where the GPU or CPU does bf16 natively); with
        # --baseline-fp32, Hugging Face's default fp32.
        use_cpu=not task["gpu"],
        bf16=task["precision"]["baselines"] == "bf16",
        remove_unused_columns=False,
        label_names=["labels"],
    )
    return Trainer(
        model_init=model_init,
        args=args,
        train_dataset=prep.train,
        eval_dataset=validation,
        data_collator=PadCollator(prep.tokenizer.pad_token_id or 0),
        compute_metrics=classification_metrics,
        callbacks=[probe.callback],
    )


def _hf_names(space_path: str) -> tuple[list[Any], dict[str, str]]:
    from search.space import parse_space
    from trainer import read_yaml

    problems: list = []
    space = parse_space(read_yaml(space_path), source=space_path, base_dir=Path(space_path).parent, problems=problems)
    arg = {
        "train.learning_rate": "learning_rate",
        "train.batch_size": "per_device_train_batch_size",
        "train.warmup_ratio": "warmup_steps",
        "train.weight_decay": "weight_decay",
        "train.lr_scheduler": "lr_scheduler_type",
        "train.gradient_accumulation": "gradient_accumulation_steps",
    }
    names = {p.name: arg.get(p.name, p.name.replace(".", "_")) for p in space.params}
    return space.params, names


class _DefineByRun:
    """The sftune space under Hugging Face argument names, as an Optuna define-by-run function (picklable)."""

    def __init__(self, params: list[Any], names: dict[str, str]) -> None:
        import copy

        self.params = []
        for p in params:
            q = copy.copy(p)
            q.name = names[p.name]
            q.when = {names[k]: v for k, v in p.when.items()}
            self.params.append(q)

    def __call__(self, trial: Any) -> dict[str, Any]:
        sampled: dict[str, Any] = {}
        for q in self.params:
            if q.active(sampled):
                sampled[q.name] = q.sample(trial)
        return sampled


def run_hf_optuna(task: dict[str, Any], out: Path, t0: float) -> dict[str, Any]:
    import optuna

    params, names = _hf_names(task["space"])
    probe = _Probe(task["metric"])
    per_trial: dict[int, dict[str, float]] = {}
    trainer = _hf_trainer(task, out, probe, names)
    storage = f"sqlite:///{out / 'hf-optuna.db'}"
    space = _DefineByRun(params, names)

    def hp_space(trial: Any) -> dict[str, Any]:
        values = space(trial)
        return {k: v for k, v in values.items() if not k.startswith("peft_")}

    class Record:
        def __call__(self, study: Any, trial: Any) -> None:
            per_trial[trial.number] = {"train": probe.train, "eval": probe.eval}

    # Trainer.hyperparameter_search has no callbacks argument for optuna; wrap optimize to record.
    original = optuna.Study.optimize

    def optimize(self, *a, **kw):
        kw.setdefault("callbacks", []).append(Record())
        return original(self, *a, **kw)

    optuna.Study.optimize = optimize
    trainer.hyperparameter_search(
        hp_space=hp_space,
        backend="optuna",
        n_trials=task["n_trials"],
        direction="maximize",
        compute_objective=lambda m: m[f"eval_{task['metric']}"],
        study_name="bench",
        storage=storage,
        sampler=optuna.samplers.TPESampler(seed=task["seed"], n_startup_trials=task["startup"]),
        pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=task["eval_every"], reduction_factor=3),
    )
    s = optuna.load_study(study_name="bench", storage=storage)
    trials = []
    for t in s.trials:
        if t.datetime_start and t.datetime_complete:
            busy = per_trial.get(t.number, {})
            trials.append(
                {
                    "state": t.state.name,
                    "value": t.value if t.state.name == "COMPLETE" else None,
                    "wall": (t.datetime_complete - t.datetime_start).total_seconds(),
                    "busy": busy.get("train", 0.0) + busy.get("eval", 0.0),
                    "steps": max(t.intermediate_values) if t.intermediate_values else 0,
                }
            )
    return {
        "trials": trials,
        "evals": [(at - t0, v, trial, step) for at, v, trial, step in probe.events if v is not None],
        "first_step_at": probe.first,
        "starts": {trial: at - t0 for trial, at in probe.starts.items()},
    }


def run_hf_ray(task: dict[str, Any], out: Path, t0: float) -> dict[str, Any]:
    import optuna
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    params, names = _hf_names(task["space"])
    probe = _Probe(task["metric"])
    trainer = _hf_trainer(task, out, probe, names)
    n_evals = task["max_steps"] // task["eval_every"]
    starts: dict[str, float] = {}
    ends: dict[str, float] = {}
    results: dict[str, dict[str, Any]] = {}
    evals: list[tuple[float, float, str, int]] = []
    trial_firsts: dict[str, float] = {}

    class Times(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            starts[trial.trial_id] = time.time()

        def on_trial_result(self, iteration, trials, trial, result, **info):
            results[trial.trial_id] = result
            if result.get("probe_trial_first"):
                trial_firsts.setdefault(trial.trial_id, result["probe_trial_first"] - t0)
            if f"eval_{task['metric']}" in result:
                step = int(result.get("probe_step", 0))
                evals.append((time.time() - t0, result[f"eval_{task['metric']}"], trial.trial_id, step))

        def on_trial_complete(self, iteration, trials, trial, **info):
            ends[trial.trial_id] = time.time()

        def on_trial_error(self, iteration, trials, trial, **info):
            ends[trial.trial_id] = time.time()

    ray.init(num_cpus=task["cpus"], include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        trainer.hyperparameter_search(
            hp_space=lambda trial: {},
            backend="ray",
            n_trials=task["n_trials"],
            direction="maximize",
            compute_objective=lambda m: m[f"eval_{task['metric']}"],
            search_alg=OptunaSearch(
                space=_DefineByRun(params, names),
                metric="objective",
                mode="max",
                sampler=optuna.samplers.TPESampler(seed=task["seed"], n_startup_trials=task["startup"]),
            ),
            scheduler=ASHAScheduler(
                metric="objective",
                mode="max",
                time_attr="training_iteration",
                max_t=n_evals,
                grace_period=1,
                reduction_factor=3,
            ),
            resources_per_trial={"cpu": max(1, task["cpus"] // task["concurrency"]), "gpu": task["gpu"]},
            max_concurrent_trials=task["concurrency"],
            storage_path=str(out / "hf-ray-results"),
            callbacks=[Times()],
            verbose=0,
        )
    finally:
        ray.shutdown()
    trials, first = [], None
    for tid, result in results.items():
        if tid not in starts or tid not in ends:
            continue
        first = min(first or 1e18, result.get("probe_first") or 1e18)
        steps = int(result.get("probe_step", 0))
        trials.append(
            {
                "state": "COMPLETE" if steps >= task["max_steps"] else "PRUNED",
                "value": result.get("objective") if steps >= task["max_steps"] else None,
                "wall": ends[tid] - starts[tid],
                "busy": result.get("probe_train", 0) + result.get("probe_eval", 0),
                "steps": steps,
            }
        )
    return {"trials": trials, "evals": evals, "first_step_at": first, "starts": trial_firsts}


def run_recipe(task: dict[str, Any], out: Path, t0: float) -> dict[str, Any]:
    """The model recipe alone: the base config trained once with sftune's recipe, once with plain peft LoRA.

    sftune's default: LoRA on the attention projections plus the classifier and the pooler trained in
    full. Plain: `LoraConfig(task_type=SEQ_CLS, r, lora_alpha, lora_dropout)` with peft's default
    targets, as a user of the baselines writes it (peft trains the classifier, the pooler stays
    frozen). Same training loop, data, steps and seed; only the model differs.
    """
    import trainer.job as job
    from trainer import config_from_dict

    base = config_from_dict({**task["base"], "output_dir": str(out / "recipe")})
    threads = max(1, task["cpus"])
    rows: dict[str, Any] = {}

    def plain(cfg: Any, location: str, tokenizer: Any, num_labels: int, labels: list[str], source: str = "") -> Any:
        from peft import LoraConfig, TaskType, get_peft_model
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(location, num_labels=num_labels)
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        return get_peft_model(
            model,
            LoraConfig(
                task_type=TaskType.SEQ_CLS, r=cfg.peft.r, lora_alpha=cfg.peft.alpha, lora_dropout=cfg.peft.dropout
            ),
        )

    own = job.build_model
    auto = job.resolve_precision("auto")[1]
    runs = [("sftune recipe", own, "auto"), ("plain peft LoRA", plain, "auto")]
    if auto != "fp32":  # the arithmetic alone: the same recipe in fp32, as Hugging Face's Trainer runs by default
        runs.append(("sftune recipe", own, "fp32"))
    for name, build, precision in runs:
        trainable: list[int] = []

        def counted(*args: Any, _build: Any = build, _trainable: list[int] = trainable, **kwargs: Any) -> Any:
            model = _build(*args, **kwargs)
            _trainable.append(sum(p.numel() for p in model.parameters() if p.requires_grad))
            return model

        job.build_model = counted
        base.train.precision = precision
        # fp32 as Hugging Face runs it: fp32 weights too (model_dtype auto holds LoRA's base in bf16 where the
        # device does bf16, and without autocast the fp32 head then meets bf16 activations)
        base.train.model_dtype = "fp32" if precision == "fp32" else "auto"
        started = time.time()
        result = job.run_job(base, threads=threads)
        rows[f"{name}, {result.precision}"] = {
            "best": result.metrics[task["metric"]],
            "wall": time.time() - started,
            "trainable": trainable[0],
        }
    job.build_model = own
    return {"recipe": rows}


RUNNERS = {"sftune": run_sftune, "hf-optuna": run_hf_optuna, "hf-ray": run_hf_ray, "recipe": run_recipe}


# ----------------------------------------------------------------------------------------- the table


def busy_cpu_seconds() -> float:
    """The machine's busy CPU seconds since boot, all cores: user + nice + system + irq + softirq (guest time is
    counted inside user; idle, iowait and steal, time the hypervisor gave to another machine, are not busy)."""
    import psutil

    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


class UsageSampler(threading.Thread):
    """Mean CPU utilisation (all cores), the machine's cumulative busy CPU seconds over time (a sample when it
    starts, every `every` seconds, and when it stops) and, where there is an NVIDIA GPU, mean GPU utilisation."""

    def __init__(self, gpu: bool, every: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.cpu: list[float] = []
        self.gpu: list[float] = []
        self.busy: list[tuple[float, float]] = []
        self.with_gpu = gpu
        self.every = every
        self.stop_event = threading.Event()

    def start(self) -> None:
        self.busy.append((time.time(), busy_cpu_seconds()))
        super().start()

    def run(self) -> None:
        import psutil

        handle = None
        if self.with_gpu:
            try:
                import pynvml

                pynvml.nvmlInit()
                handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            except Exception:  # noqa: BLE001 - no NVML: CPU only
                handle = None
        psutil.cpu_percent(None)
        ticks = 0
        while not self.stop_event.wait(self.every):
            self.busy.append((time.time(), busy_cpu_seconds()))
            ticks += 1
            if ticks * self.every >= len(self.cpu) + 1:  # utilisation once a second, as before
                self.cpu.append(psutil.cpu_percent(None))
                if handle is not None:
                    self.gpu.append(float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))

    def stop(self) -> tuple[float, float]:
        self.stop_event.set()
        self.join()
        self.busy.append((time.time(), busy_cpu_seconds()))
        mean = lambda xs: statistics.fmean(xs) if xs else float("nan")  # noqa: E731
        return mean(self.cpu), mean(self.gpu)

    def busy_since(self, t0: float) -> list[list[float]]:
        """[seconds since t0, busy CPU seconds since t0] per sample."""
        b0 = _interpolate(self.busy, t0)
        return [[round(t - t0, 3), round(b - b0, 3)] for t, b in self.busy]


def _interpolate(points: list[Any], x: float) -> float:
    """The piecewise-linear function through (x, y) points at `x`, held flat outside them (NaN: no points)."""
    points = sorted(points)
    if not points:
        return float("nan")
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y1
    return points[-1][1]


def steps_at(raw: dict[str, Any], at: float) -> float:
    """Optimizer steps all trials had trained `at` seconds after the start, pruned, finished or running.

    Each trial's steps are the piecewise-linear function of time through (its first step's start, 0) and
    (each of its evaluations, that evaluation's step): a trial running at `at` counts the steps between
    its last evaluation and its next one in proportion to the time gone; one done by then counts the step
    of its last evaluation (a pruned trial stops there); one not yet at its first step counts nothing.
    """
    marks: dict[str, list[tuple[float, float]]] = {}
    for e in raw["evals"]:
        if len(e) >= 4:
            marks.setdefault(str(e[2]), []).append((e[0], float(e[3])))
    total = 0.0
    for trial, points in marks.items():
        start = raw.get("starts", {}).get(trial)
        if start is not None:
            points = [(start, 0.0), *points]
        if min(p[0] for p in points) > at:
            continue
        total += _interpolate(points, at)
    return total


def summarize(name: str, label: str, raw: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    trials = raw["trials"]
    complete = [t["value"] for t in trials if t["value"] is not None]
    overheads = [t["wall"] - t["busy"] for t in trials if t["busy"] > 0]
    walls = [t["wall"] for t in trials if t["busy"] > 0]
    return {
        "system": name,
        "label": label,
        "best": max(complete) if complete else float("nan"),
        "wall": run["wall"],
        "steps": sum(t["steps"] for t in trials),
        "trials": f"{len(complete)}c/{sum(t['state'] == 'PRUNED' for t in trials)}p",
        "evals": raw["evals"],
        "raw": raw,
        "busy": run.get("busy", []),
        "overhead": statistics.fmean(overheads) if overheads else float("nan"),
        "overhead_pct": 100 * sum(overheads) / sum(walls) if walls else float("nan"),
        "first_step": (raw["first_step_at"] - run["t0"]) if raw.get("first_step_at") else float("nan"),
        "cpu": run["usage"][0],
        "gpu": run["usage"][1],
    }


def _shown(r: dict[str, Any]) -> str:
    return f"{r['system']} ({r['label']})" if r.get("label") else r["system"]


def time_to(evals: list[Any], target: float) -> float:
    """Seconds from the command's start to the first evaluation at or above `target` (inf: never)."""
    hits = sorted(e[0] for e in evals if e[1] is not None and e[1] >= target)
    return hits[0] if hits else float("inf")


def best_by(evals: list[Any], at: float) -> float:
    """The best metric found by `at` seconds (NaN: nothing evaluated yet)."""
    found = [e[1] for e in evals if e[1] is not None and e[0] <= at]
    return max(found) if found else float("nan")


ANYTIME = (0.25, 0.5, 1.0)
MEASURES = (("t99", "time"), ("steps99", "steps"), ("cpu99", "cpu-s"))


def score_seed(rows: list[dict[str, Any]]) -> None:
    """Per system: time, optimizer steps and busy CPU seconds to 99% of the best any system found with this seed,
    and the anytime view."""
    best_any = max((r["best"] for r in rows if r["best"] == r["best"]), default=float("nan"))
    horizon = max(r["wall"] for r in rows)
    for r in rows:
        r["target"] = 0.99 * best_any
        r["t99"] = time_to(r["evals"], r["target"])
        finite = r["t99"] != float("inf")
        r["steps99"] = steps_at(r["raw"], r["t99"]) if finite else float("inf")
        r["cpu99"] = _interpolate(r["busy"], r["t99"]) if finite else float("inf")
        r["anytime"] = [best_by(r["evals"], f * horizon) for f in ANYTIME]


def _s(x: float, fmt: str = ".0f") -> str:
    return "never" if x == float("inf") else ("-" if x != x else format(x, fmt))


def _x(ratio: float) -> str:
    return "inf" if ratio == float("inf") else ("-" if ratio != ratio else f"{ratio:.2f}x")


def _markdown(header: list[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    return [
        "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ] + ["| " + " | ".join(v.ljust(w) for v, w in zip(b, widths, strict=True)) + " |" for b in body]


def print_table(rows: list[dict[str, Any]], title: str) -> str:
    score_seed(rows)
    gpu = any(r["gpu"] == r["gpu"] for r in rows)  # not NaN: a GPU was sampled
    header = (
        [
            "system",
            "best acc",
            "wall s",
            "opt steps",
            "trials",
            "t->99% s",
            "steps->99%",
            "cpu s->99%",
            "overhead s/trial",
            "overhead %",
            "first step s",
            "cpu %",
        ]
        + (["gpu %"] if gpu else [])
        + [f"best eval@{int(f * 100)}%" for f in ANYTIME]
    )
    body = []
    for r in rows:
        body.append(
            [
                _shown(r),
                f"{r['best']:.4f}",
                f"{r['wall']:.0f}",
                str(r["steps"]),
                r["trials"],
                _s(r["t99"]),
                _s(r["steps99"]),
                _s(r["cpu99"]),
                f"{r['overhead']:.2f}",
                f"{r['overhead_pct']:.1f}",
                f"{r['first_step']:.1f}",
                f"{r['cpu']:.0f}",
            ]
            + ([f"{r['gpu']:.0f}"] if gpu else [])
            + [_s(v, ".4f") for v in r["anytime"]]
        )
    horizon = max(r["wall"] for r in rows)
    lines = [
        title,
        f"99% of the best accuracy any system found ({rows[0]['target'] / 0.99:.4f}) = "
        f"{rows[0]['target']:.4f}; steps->99% = optimizer steps of all its trials by then; cpu s->99% = the "
        f"machine's busy CPU seconds (all cores) from its start to then; best eval@N% = best evaluation (any "
        f"trial, pruned ones included) by N% of the slowest system's wall time ({horizon:.0f} s)",
    ]
    ours = next((r for r in rows if r["system"] == "sftune"), None)
    speedups = []
    for r in rows:
        if ours is not None and r is not ours:
            ratios = ", ".join(f"{word} {_x(_ratio(r[key], ours[key]))}" for key, word in MEASURES)
            speedups.append(f"{_shown(ours)} vs {r['system']}, to 99%: {ratios} (baseline's / sftune's)")
    text = "\n".join(lines + _markdown(header, body) + speedups)
    print(text, flush=True)
    return text


def _median(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def _ratio(baseline: float, ours: float) -> float:
    """How many times less sftune needed to reach 99% (inf: the baseline never did; 0: sftune never did)."""
    if ours == float("inf"):
        return float("nan") if baseline == float("inf") else 0.0
    return baseline / ours if ours > 0 else float("nan")


def print_summary(per_seed: dict[int, list[dict[str, Any]]]) -> str:
    """Medians over the seeds, and sftune's speedups to 99% (time, steps, CPU seconds) against each baseline,
    per seed and median."""
    seeds = list(per_seed)
    by = {s: {r["system"]: r for r in rows} for s, rows in per_seed.items()}
    names = [n for n in SYSTEMS if any(n in by[s] for s in seeds)]
    header = (
        ["system", "median best", "median wall s"]
        + [h for key, word in MEASURES for h in (f"{word}->99% per seed", f"median {word}->99%")]
        + [f"median best@{int(f * 100)}%" for f in ANYTIME]
    )
    body = []
    for name in names:
        got = [by[s][name] for s in seeds if name in by[s]]
        row = [_shown(got[0]), f"{_median([r['best'] for r in got]):.4f}", f"{_median([r['wall'] for r in got]):.0f}"]
        for key, _ in MEASURES:
            row += [" / ".join(_s(r[key]) for r in got), _s(_median([r[key] for r in got]))]
        body.append(row + [_s(_median([r["anytime"][k] for r in got]), ".4f") for k in range(len(ANYTIME))])
    speed_header = ["sftune vs"] + [h for _, word in MEASURES for h in (f"{word} speedup per seed", f"median {word}")]
    speed_body = []
    for name in names:
        if name == "sftune":
            continue
        pairs = [(by[s][name], by[s]["sftune"]) for s in seeds if name in by[s] and "sftune" in by[s]]
        row = [name]
        for key, _ in MEASURES:
            ratios = [_ratio(b[key], o[key]) for b, o in pairs]
            row += [" / ".join(_x(x) for x in ratios), _x(_median(ratios))]
        speed_body.append(row)
    lines = [
        f"over sampler seeds {', '.join(map(str, seeds))} (medians; per seed values in seed order; never = not "
        "reached 99%)",
        *_markdown(header, body),
    ]
    if speed_body and any("sftune" in by[s] for s in seeds):
        lines += [
            "",
            "sftune's speedup to 99% = the baseline's time, optimizer steps or busy CPU seconds to 99% / sftune's, "
            "each seed's own 99% target (inf = only sftune reached it, 0 = only the baseline did)",
            *_markdown(speed_header, speed_body),
        ]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def print_recipe(raw: dict[str, Any], task: dict[str, Any]) -> str:
    t = task["base"]["train"]
    p = task["base"]["peft"]
    lines = [
        f"recipe, one fixed config (lr {t['learning_rate']:g}, batch {t['batch_size']}, LoRA r {p['r']} "
        f"alpha {p['alpha']}, {t['max_steps']} steps, {task['cpus']} threads):"
    ]
    for name, r in raw["recipe"].items():
        lines.append(
            f"  {name:22s} accuracy {r['best']:.4f} in {r['wall']:.0f} s ({r['trainable']:,} trainable params)"
        )
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def _gpu_name() -> str:
    out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "GPU"


def _nvidia_gpu() -> bool:
    import shutil

    if not shutil.which("nvidia-smi"):
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


def settings(task: dict[str, Any]) -> dict[str, Any]:
    """What makes two runs' baselines comparable: the task less its paths and sftune's variant (--reuse)."""
    skip_base = ("data", "output_dir", "model")  # the data and model by content: task["inputs"]
    return {
        **{k: v for k, v in task.items() if k not in ("base", "space", "sftune")},
        "base": {k: v for k, v in task["base"].items() if k not in skip_base},
    }


def _differences(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str) for d in _differences(a.get(k), b.get(k), f"{where}.{k}")]
    return [] if a == b else [f"{where.lstrip('.')}: {b!r} there, {a!r} here"]


def header_lines(task: dict[str, Any]) -> list[str]:
    """Which precision each system trains in, and sftune's variant."""
    p = task["precision"]
    if p["baselines"] == p["sftune"]:
        baselines = f"baselines {p['baselines']} (as sftune's)"
    elif p["baselines"] == "fp32":
        baselines = "baselines in fp32 (Hugging Face's default), not like with like"
    else:
        baselines = f"baselines {p['baselines']}"
    v = task["sftune"]
    pruner = " ".join([v["pruner"]["name"], *(f"{k}={x}" for k, x in v["pruner"].items() if k != "name")])
    variant = f"pruner {pruner}" + "".join(f", eval.{k}={x}" for k, x in v["eval"].items())
    named = v["label"] and v["label"] not in variant  # a --label of its own, not the default description
    variant = f"sftune ({v['label']}): {variant}" if named else f"sftune: {variant}"
    return [f"precision: sftune {p['sftune']} (train.precision: auto), {baselines}", variant]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny random model and synthetic data (smoke run)")
    p.add_argument("--dataset", default="sst2", help="a folder of ../shared/data with train/validation jsonl")
    p.add_argument("--model", default="minilm-l6")
    p.add_argument("--space", default=str(REPO / "spaces" / "lora-classification.yaml"))
    p.add_argument("--n-trials", type=int, default=12)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="the data subset's and the training seed")
    p.add_argument("--seeds", default=None, help="sampler seeds, comma-separated (default: --seed)")
    p.add_argument("--no-recipe", action="store_true", help="skip the recipe line")
    p.add_argument("--startup", type=int, default=4, help="TPE startup (random) trials")
    p.add_argument("--train-samples", type=int, default=2000)
    p.add_argument("--eval-samples", type=int, default=500)
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--only", default=",".join(SYSTEMS), help="comma-separated subset of " + ", ".join(SYSTEMS))
    p.add_argument(
        "--gpu-per-trial",
        type=float,
        default=None,
        help="GPU share of each trial (default: 1/concurrency where an NVIDIA GPU is seen, else 0)",
    )
    p.add_argument(
        "--baseline-fp32",
        action="store_true",
        help="train the baselines in fp32, Hugging Face's default (default: the precision sftune's "
        "train.precision: auto picks, bf16 where the GPU or CPU does bf16 natively)",
    )
    p.add_argument(
        "--pruner",
        default=None,
        metavar="NAME",
        help="sftune's study pruner (default: successive-halving on the evaluation steps, as the baselines')",
    )
    p.add_argument(
        "--pruner-option",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of sftune's pruner (repeatable; the value is read as YAML)",
    )
    p.add_argument(
        "--eval-option",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a key of the eval: section of sftune's base train config (repeatable; e.g. early_sample=0.2)",
    )
    p.add_argument("--label", default="", help="the sftune variant's name in the tables (default: what it changes)")
    p.add_argument(
        "--reuse",
        default=None,
        metavar="DIR",
        help="the work folder of an earlier run: the systems --only leaves out are read from its results "
        "(seed<N>/<system>/result.json), not run; refused where its settings differ",
    )
    p.add_argument("--out", default=None, help="work folder (default: a new one under /tmp)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:  # a child: run one system, write its raw figures
        out = Path(args.out)
        task = json.loads((out / "task.json").read_text())
        t0 = float(os.environ["BENCH_T0"])
        raw = RUNNERS[args.worker](task, out / args.worker, t0)
        (out / args.worker / "raw.json").write_text(json.dumps(raw))
        return 0

    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in SYSTEMS]
    if unknown:
        p.error(f"--only: unknown system(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    reuse = Path(args.reuse).resolve() if args.reuse else None
    if reuse is not None and not reuse.is_dir():
        p.error(f"--reuse {args.reuse}: no such folder")
    if args.gpu_per_trial is None:
        args.gpu_per_trial = 1.0 / args.concurrency if _nvidia_gpu() else 0.0
    if args.quick:
        args.n_trials, args.max_steps, args.eval_every = min(args.n_trials, 6), 40, 10
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()] if args.seeds else [args.seed]
    import tempfile

    out = Path(args.out or tempfile.mkdtemp(prefix="sftune-bench-")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    task = make_task(args, out)
    (out / "task.json").write_text(json.dumps(task, indent=2))
    desc = (
        "quick: tiny random BERT, synthetic data"
        if args.quick
        else f"{args.model} + LoRA on {args.dataset} ({args.train_samples} train / {args.eval_samples} validation)"
    )
    title = "\n".join(
        [
            f"{desc}; {task['n_trials']} trials, {args.concurrency} at a time, {task['max_steps']} steps, eval "
            f"every {task['eval_every']}; {task['cpus']} CPUs"
            + (f", {task['gpu']:g} GPU per trial ({_gpu_name()})" if task["gpu"] else ""),
            *header_lines(task),
        ]
    )
    print(title, flush=True)

    # Stored results first: a run whose settings differ is refused before anything trains.
    stored: dict[tuple[int, str], dict[str, Any]] = {}
    if reuse is not None:
        for seed in seeds:
            for name in (s for s in SYSTEMS if s not in only):
                path = reuse / f"seed{seed}" / name / "result.json"
                if not path.exists():
                    print(f"seed {seed}: {name}: no stored result in {reuse} ({path.name} missing); left out")
                    continue
                old = json.loads(path.read_text())
                diffs = _differences(settings({**task, "seed": seed}), old.get("settings", {}))
                if diffs:
                    print(
                        f"--reuse {reuse}: {name}'s stored result for sampler seed {seed} was run with other "
                        "settings, so it does not compare with this run:\n  " + "\n  ".join(diffs),
                        file=sys.stderr,
                    )
                    return 2
                stored[seed, name] = old

    texts, per_seed = [], {}
    for seed in seeds:
        seed_dir = out / f"seed{seed}"
        seed_dir.mkdir(exist_ok=True)
        seed_task = {**task, "seed": seed}
        (seed_dir / "task.json").write_text(json.dumps(seed_task, indent=2))
        rows, records = [], {}
        for name in SYSTEMS:
            if (seed, name) in stored:
                old = stored[seed, name]
                origin = old.get("reused_from") or str(reuse / f"seed{seed}" / name)
                print(f"seed {seed}: {name}: stored result of an earlier run ({origin})", flush=True)
                raw, run, label = old["raw"], old["run"], old.get("label", "")
            elif name in only:
                print(f"seed {seed}: running {name} ...", flush=True)
                result = _run_child(name, seed_dir, bool(args.gpu_per_trial))
                if result is None:
                    continue
                (raw, run), origin = result, None
                label = task["sftune"]["label"] if name == "sftune" else ""
            else:
                continue
            rows.append(summarize(name, label, raw, run))
            records[name] = {
                "system": name,
                "label": label,
                "sampler_seed": seed,
                "settings": settings(seed_task),
                "variant": task["sftune"] if name == "sftune" else None,
                "reused_from": origin,
                "run": run,
                "raw": raw,
            }
            print(f"  {name}: best {rows[-1]['best']:.4f} in {run['wall']:.0f}s", flush=True)
        if rows:
            texts.append(print_table(rows, f"{title}\nsampler seed {seed}"))
            per_seed[seed] = rows
            for r in rows:  # each system's result, with the figures scored against this seed's rows
                scored = {k: r[k] for k in ("best", "wall", "steps", "trials", "t99", "steps99", "cpu99", "target")}
                (seed_dir / r["system"]).mkdir(exist_ok=True)
                path = seed_dir / r["system"] / "result.json"
                path.write_text(json.dumps({**records[r["system"]], "scored": scored}, indent=1))
    if any(r["system"] == "sftune" for rows in per_seed.values() for r in rows):
        texts.append(print_summary(per_seed))
    if reuse is not None and not args.no_recipe:
        print("recipe: skipped with --reuse (it measures the model recipe, which a variant does not change)")
    elif not args.no_recipe:
        print("recipe: one fixed config, sftune's model recipe vs plain peft LoRA ...", flush=True)
        result = _run_child("recipe", out, False)
        if result is not None:
            texts.append(print_recipe(result[0], task))
    (out / "table.md").write_text("\n\n".join(texts) + "\n")
    print(f"(work folder: {out})")
    return 0


def _run_child(name: str, folder: Path, gpu: bool) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Run one system in its own process (its figures in `folder/name/raw.json`, the parent's measurements
    in `run.json`: wall time, mean utilisation, its start t0 and busy CPU seconds since); None if it failed."""
    (folder / name).mkdir(exist_ok=True)
    sampler = UsageSampler(gpu=gpu)
    sampler.start()
    t0 = time.time()
    path = os.pathsep.join(x for x in (str(REPO), os.environ.get("PYTHONPATH", "")) if x)
    env = {**os.environ, "BENCH_T0": str(t0), "PYTHONPATH": path}
    with (folder / name / "worker.log").open("w") as log:
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", name, "--out", str(folder)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    wall = time.time() - t0
    usage = sampler.stop()
    if proc.returncode != 0:
        print(f"  {name} failed (exit {proc.returncode}); see {folder / name / 'worker.log'}", flush=True)
        return None
    run = {"wall": wall, "usage": list(usage), "t0": t0, "busy": sampler.busy_since(t0)}
    (folder / name / "run.json").write_text(json.dumps(run))
    return json.loads((folder / name / "raw.json").read_text()), run


if __name__ == "__main__":
    sys.exit(main())
