"""Side-by-side HPO benchmark: sftune vs Trainer.hyperparameter_search (optuna) vs (ray + OptunaSearch + ASHA).

Runs one task through the three, one after another, each in its own child process, once per sampler
seed (`--seeds 0,1,2`), and prints a table per seed: best validation metric, wall time, optimizer
steps trained, time to 99% of the best metric any of them found with that seed, mean per-trial
overhead (trial wall time minus time inside training and evaluation steps), time from command start
to the first training step, mean CPU utilisation, and the anytime view: the best metric each had
found at 25%, 50% and 100% of the slowest system's wall time. Then the medians over the seeds, with
sftune's speedup to 99% against each baseline (per seed, and their median), and one line that
measures the model recipe itself (sftune's default LoRA recipe against plain peft LoRA, one fixed
config), since the baselines here are given sftune's recipe.

    python tests/benchmarks/compare.py --seeds 0,1,2   # MiniLM + LoRA on SST-2, 12 trials, 2 at a time
    python tests/benchmarks/compare.py --quick --seeds 0,1,2   # tiny random model, smoke run
    python tests/benchmarks/compare.py --dataset trec6 --n-trials 8 --only sftune

Same space (a sftune space file), same sampler (TPE, same seed and startup trials; sftune's ranks a
running trial by its reports, where Optuna's counts it as bad: search/tpe.py), same pruning rule
(successive halving on the same evaluation steps; ASHA for stock Ray Tune), same data, model (built
with sftune's recipe), steps and evaluation schedule, and an explicit objective for the Hugging Face
runs. The seeds vary the samplers only: the data subset and the training seed stay those of `--seed`.
"Found" counts every evaluation, a pruned trial's included (the same events as time to 99%).
"""

from __future__ import annotations

import argparse
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


def make_task(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Write the data subset and the base train config; returns the task description."""
    import random

    data_dir = out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    if args.quick:
        import tiny

        model = str(tiny.make_model(out / "tiny-model", "bert"))
        tiny.write_jsonl(data_dir / "train.jsonl", tiny.sentiment_rows(400, seed=1))
        tiny.write_jsonl(data_dir / "validation.jsonl", tiny.sentiment_rows(100, seed=2))
    else:
        model = args.model
        src = SHARED / args.dataset
        train_rows = (src / "train.jsonl").read_text().splitlines()
        val_file = src / "validation.jsonl" if (src / "validation.jsonl").exists() else src / "test.jsonl"
        val_rows = val_file.read_text().splitlines()
        rng = random.Random(args.seed)
        (data_dir / "train.jsonl").write_text(
            "\n".join(rng.sample(train_rows, min(args.train_samples, len(train_rows)))) + "\n"
        )
        (data_dir / "validation.jsonl").write_text(
            "\n".join(rng.sample(val_rows, min(args.eval_samples, len(val_rows)))) + "\n"
        )
    base = {
        "model": model,
        "task": "classification",
        "data": {"train": str(data_dir / "train.jsonl"), "validation": str(data_dir / "validation.jsonl")},
        "peft": {"method": "lora", "r": 8, "alpha": 16, "dropout": 0.05},
        "train": {
            "learning_rate": 3e-4,
            "batch_size": 16,
            "max_steps": args.max_steps,
            "eval_every": args.eval_every,
            "max_length": args.max_length,
            "seed": args.seed,
        },
        "output_dir": str(out / "unused"),
    }
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
        "baseline_bf16": args.baseline_bf16,
    }


# ------------------------------------------------------------------------------------------- workers


def run_sftune(task: dict[str, Any], out: Path, t0: float) -> dict[str, Any]:
    import optuna
    import yaml

    study = {
        "name": "bench",
        "storage": f"sqlite:///{out / 'sftune.db'}",
        "objective": {"metric": task["metric"], "direction": "maximize"},
        "sampler": {"name": "tpe", "seed": task["seed"], "n_startup_trials": task["startup"]},
        "pruner": {"name": "successive-halving", "min_resource": task["eval_every"], "reduction_factor": 3},
        "budget": {"n_trials": task["n_trials"], "concurrency": task["concurrency"]},
        "resources": {"cpu": max(1, task["cpus"] // task["concurrency"]), "gpu": task["gpu"]},
        "base": task["base"],
        "space": task["space"],
        "output_dir": str(out / "sftune-runs"),
    }
    path = out / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    cmd = [sys.executable, "-m", "search", "run", str(path)]
    with (out / "sftune.log").open("w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    s = optuna.load_study(study_name="bench", storage=study["storage"])
    trials, evals, first = [], [], None
    for t in s.trials:
        sec = t.user_attrs.get("seconds", {})
        if sec.get("first_step_at"):
            first = min(first or 1e18, sec["first_step_at"])
        for h in t.user_attrs.get("history", []):
            if "at" in h:
                evals.append((h["at"] - t0, h[task["metric"]]))
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
    return {"trials": trials, "evals": evals, "first_step_at": first}


class _Probe:
    """A TrainerCallback measuring time inside training steps and evaluation, and each evaluation."""

    def __init__(self, metric: str) -> None:
        from transformers import TrainerCallback

        probe = self

        class CB(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                probe.train = probe.eval = 0.0

            def on_step_begin(self, args, state, control, **kw):
                probe.step_start = time.time()
                probe.first = probe.first or probe.step_start

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
                            "probe_at": time.time(),
                        }
                    )
                    probe.events.append((time.time(), metrics.get(f"eval_{metric}")))

        self.callback = CB()
        self.train = self.eval = 0.0
        self.first = None
        self.step_start = self.eval_start = time.time()
        self.events: list[tuple[float, float]] = []


def _hf_trainer(task: dict[str, Any], out: Path, probe: _Probe, hp_names: dict[str, str]) -> Any:
    from transformers import Trainer, TrainingArguments

    from trainer import config_from_dict, prepare
    from trainer._model import build_model
    from trainer._tokenize import PadCollator
    from trainer.schema import set_dotted
    from trainer.tasks.classification import classification_metrics, tokenize_classification

    base = config_from_dict(task["base"])
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
        # Hugging Face's default is fp32; the baselines get bf16 on a GPU (as users set it there) and, with
        # --baseline-bf16, on a CPU too (sftune's `train.precision: auto` uses bf16 where the CPU does it natively).
        use_cpu=not task["gpu"],
        bf16=bool(task["gpu"]) or bool(task.get("baseline_bf16")),
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
        "evals": [(at - t0, v) for at, v in probe.events if v is not None],
        "first_step_at": probe.first,
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
    evals: list[tuple[float, float]] = []

    class Times(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            starts[trial.trial_id] = time.time()

        def on_trial_result(self, iteration, trials, trial, result, **info):
            results[trial.trial_id] = result
            if f"eval_{task['metric']}" in result:
                evals.append((time.time() - t0, result[f"eval_{task['metric']}"]))

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
    return {"trials": trials, "evals": evals, "first_step_at": first}


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

        def counted(*args: Any, _build: Any = build, **kwargs: Any) -> Any:
            model = _build(*args, **kwargs)
            trainable.append(sum(p.numel() for p in model.parameters() if p.requires_grad))
            return model

        job.build_model = counted
        base.train.precision = precision
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


class UsageSampler(threading.Thread):
    """Mean CPU utilisation (all cores) and, where there is an NVIDIA GPU, mean GPU utilisation."""

    def __init__(self, gpu: bool) -> None:
        super().__init__(daemon=True)
        self.cpu: list[float] = []
        self.gpu: list[float] = []
        self.with_gpu = gpu
        self.stop_event = threading.Event()

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
        while not self.stop_event.wait(1.0):
            self.cpu.append(psutil.cpu_percent(None))
            if handle is not None:
                self.gpu.append(float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))

    def stop(self) -> tuple[float, float]:
        self.stop_event.set()
        self.join()
        mean = lambda xs: statistics.fmean(xs) if xs else float("nan")  # noqa: E731
        return mean(self.cpu), mean(self.gpu)


def summarize(name: str, raw: dict[str, Any], wall: float, usage: tuple[float, float], t0: float) -> dict[str, Any]:
    trials = raw["trials"]
    complete = [t["value"] for t in trials if t["value"] is not None]
    overheads = [t["wall"] - t["busy"] for t in trials if t["busy"] > 0]
    walls = [t["wall"] for t in trials if t["busy"] > 0]
    return {
        "system": name,
        "best": max(complete) if complete else float("nan"),
        "wall": wall,
        "steps": sum(t["steps"] for t in trials),
        "trials": f"{len(complete)}c/{sum(t['state'] == 'PRUNED' for t in trials)}p",
        "evals": raw["evals"],
        "overhead": statistics.fmean(overheads) if overheads else float("nan"),
        "overhead_pct": 100 * sum(overheads) / sum(walls) if walls else float("nan"),
        "first_step": (raw["first_step_at"] - t0) if raw.get("first_step_at") else float("nan"),
        "cpu": usage[0],
        "gpu": usage[1],
    }


def time_to(evals: list[tuple[float, float]], target: float) -> float:
    """Seconds from the command's start to the first evaluation at or above `target` (inf: never)."""
    hits = [at for at, v in sorted(evals) if v is not None and v >= target]
    return hits[0] if hits else float("inf")


def best_by(evals: list[tuple[float, float]], at: float) -> float:
    """The best metric found by `at` seconds (NaN: nothing evaluated yet)."""
    found = [v for t, v in evals if v is not None and t <= at]
    return max(found) if found else float("nan")


ANYTIME = (0.25, 0.5, 1.0)


def score_seed(rows: list[dict[str, Any]]) -> None:
    """Per system: time to 99% of the best any system found with this seed, and the anytime view."""
    best_any = max((r["best"] for r in rows if r["best"] == r["best"]), default=float("nan"))
    horizon = max(r["wall"] for r in rows)
    for r in rows:
        r["target"] = 0.99 * best_any
        r["t99"] = time_to(r["evals"], r["target"])
        r["anytime"] = [best_by(r["evals"], f * horizon) for f in ANYTIME]


def _s(x: float, fmt: str = ".0f") -> str:
    return "never" if x == float("inf") else ("-" if x != x else format(x, fmt))


def _x(ratio: float) -> str:
    return "inf" if ratio == float("inf") else ("-" if ratio != ratio else f"{ratio:.2f}x")


def _markdown(header: list[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    return [
        "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ] + ["| " + " | ".join(v.ljust(w) for v, w in zip(b, widths)) + " |" for b in body]


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
                r["system"],
                f"{r['best']:.4f}",
                f"{r['wall']:.0f}",
                str(r["steps"]),
                r["trials"],
                _s(r["t99"]),
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
        f"{rows[0]['target']:.4f}; best eval@N% = best evaluation (any trial, pruned ones included) by N% of "
        f"the slowest system's wall time ({horizon:.0f} s)",
    ]
    text = "\n".join(lines + _markdown(header, body))
    print(text, flush=True)
    return text


def _median(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def _ratio(baseline: float, ours: float) -> float:
    """How many times sooner sftune reached 99% (inf: the baseline never did; 0: sftune never did)."""
    if ours == float("inf"):
        return float("nan") if baseline == float("inf") else 0.0
    return baseline / ours if ours > 0 else float("nan")


def print_summary(per_seed: dict[int, list[dict[str, Any]]]) -> str:
    """Medians over the seeds, and sftune's speedup to 99% against each baseline, per seed and median."""
    seeds = list(per_seed)
    names = [r["system"] for r in per_seed[seeds[0]]]
    by = {s: {r["system"]: r for r in rows} for s, rows in per_seed.items()}
    header = [
        "system",
        "median best",
        "median wall s",
        "t->99% s per seed",
        "median t->99% s",
        "sftune speedup per seed",
        "median speedup",
    ] + [f"median best@{int(f * 100)}%" for f in ANYTIME]
    body = []
    for name in names:
        got = [by[s][name] for s in seeds if name in by[s]]
        t99 = [r["t99"] for r in got]
        ratios = (
            [_ratio(r["t99"], by[s]["sftune"]["t99"]) for s, r in zip(seeds, got) if "sftune" in by[s]]
            if name != "sftune"
            else []
        )
        body.append(
            [
                name,
                f"{_median([r['best'] for r in got]):.4f}",
                f"{_median([r['wall'] for r in got]):.0f}",
                " / ".join(_s(t) for t in t99),
                _s(statistics.median(t99)),
                " / ".join(_x(x) for x in ratios),
                _x(_median(ratios)) if ratios else "",
            ]
            + [_s(_median([r["anytime"][k] for r in got]), ".4f") for k in range(len(ANYTIME))]
        )
    lines = [
        f"over sampler seeds {', '.join(map(str, seeds))} (medians; speedup = baseline's time to 99% / "
        "sftune's, each seed's own 99% target; never = not reached, inf = only sftune reached it)"
    ]
    text = "\n".join(lines + _markdown(header, body))
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
        "--baseline-bf16",
        action="store_true",
        help="train the baselines in bf16 on a CPU too (default: Hugging Face's fp32; sftune's "
        "train.precision: auto uses bf16 where the CPU does bf16 natively)",
    )
    p.add_argument(
        "--reuse",
        default="",
        help="comma-separated systems whose figures an earlier run left in --out are used, not re-run "
        "(e.g. hf-optuna,hf-ray while sftune changes)",
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

    if args.gpu_per_trial is None:
        args.gpu_per_trial = 1.0 / args.concurrency if _nvidia_gpu() else 0.0
    if args.quick:
        args.n_trials, args.max_steps, args.eval_every = min(args.n_trials, 6), 40, 10
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()] if args.seeds else [args.seed]
    import tempfile

    out = Path(args.out or tempfile.mkdtemp(prefix="sftune-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    task = make_task(args, out)
    (out / "task.json").write_text(json.dumps(task, indent=2))
    desc = (
        "quick: tiny random BERT, synthetic data"
        if args.quick
        else f"{args.model} + LoRA on {args.dataset} ({args.train_samples} train / {args.eval_samples} validation)"
    )
    title = (
        f"{desc}; {task['n_trials']} trials, {args.concurrency} at a time, {task['max_steps']} steps, eval every "
        f"{task['eval_every']}; {task['cpus']} CPUs"
        + (f", {task['gpu']:g} GPU per trial ({_gpu_name()})" if task["gpu"] else "")
    )
    reuse = {x.strip() for x in args.reuse.split(",") if x.strip()}
    texts, per_seed = [], {}
    for seed in seeds:
        seed_dir = out / f"seed{seed}"
        seed_dir.mkdir(exist_ok=True)
        (seed_dir / "task.json").write_text(json.dumps({**task, "seed": seed}, indent=2))
        rows = []
        for name in [s.strip() for s in args.only.split(",") if s.strip()]:
            if name in reuse and (seed_dir / name / "run.json").exists():
                print(f"seed {seed}: {name}: figures of an earlier run ({seed_dir / name / 'run.json'})", flush=True)
                result = _load_child(name, seed_dir)
            else:
                print(f"seed {seed}: running {name} ...", flush=True)
                result = _run_child(name, seed_dir, bool(args.gpu_per_trial))
            if result is None:
                continue
            raw, wall, usage, t0 = result
            rows.append(summarize(name, raw, wall, usage, t0))
            print(f"  {name}: best {rows[-1]['best']:.4f} in {wall:.0f}s", flush=True)
        if rows:
            texts.append(print_table(rows, f"{title}; sampler seed {seed}"))
            per_seed[seed] = rows
    if per_seed and "sftune" in args.only:
        texts.append(print_summary(per_seed))
    if not args.no_recipe:
        print("recipe: one fixed config, sftune's model recipe vs plain peft LoRA ...", flush=True)
        result = _run_child("recipe", out, False)
        if result is not None:
            texts.append(print_recipe(result[0], task))
    (out / "table.md").write_text("\n\n".join(texts) + "\n")
    print(f"(work folder: {out})")
    return 0


def _run_child(name: str, folder: Path, gpu: bool) -> tuple[dict[str, Any], float, tuple[float, float], float] | None:
    """Run one system in its own process (its figures in `folder/name/raw.json`); None if it failed."""
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
    (folder / name / "run.json").write_text(json.dumps({"wall": wall, "usage": list(usage), "t0": t0}))
    return json.loads((folder / name / "raw.json").read_text()), wall, usage, t0


def _load_child(name: str, folder: Path) -> tuple[dict[str, Any], float, tuple[float, float], float]:
    """What `_run_child` measured in an earlier run (`--reuse`)."""
    run = json.loads((folder / name / "run.json").read_text())
    usage = (float(run["usage"][0]), float(run["usage"][1]))
    return json.loads((folder / name / "raw.json").read_text()), float(run["wall"]), usage, float(run["t0"])


if __name__ == "__main__":
    sys.exit(main())
