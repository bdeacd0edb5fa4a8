"""The study file: one typed, validated StudyConfig, with every problem reported at once."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import tempfile
from pathlib import Path
from typing import Any

import yaml

from search.recipes import is_shipped, looks_like_name, shipped_spaces, shipped_studies
from search.space import Space, check_space_with_base, parse_space
from trainer import FIELDS, ConfigError, Problem, TrainConfig, config_from_dict, read_yaml
from trainer.config import apply_overrides, parse_overrides
from trainer.schema import build, describe, did_you_mean, set_dotted
from trainer.tasks import get_task

SAMPLERS = {
    "tpe": "TPESampler",
    "random": "RandomSampler",
    "grid": "GridSampler",
    "cmaes": "CmaEsSampler",
    "gp": "GPSampler",
    "qmc": "QMCSampler",
    "nsga2": "NSGAIISampler",
}
PRUNERS = {
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "successive-halving": "SuccessiveHalvingPruner",
    "hyperband": "HyperbandPruner",
    "wilcoxon": "WilcoxonPruner",
    "threshold": "ThresholdPruner",
    "none": "NopPruner",
    "learning-curve": "LearningCurvePruner",
    "mo-successive-halving": "MOSuccessiveHalving",
}


@dataclasses.dataclass
class Objective:
    metric: str
    direction: str | None = None
    """maximize | minimize; default: the metric's natural direction."""
    use: str = "final"
    """final | best: a trial's value is its last evaluation, or its best one (whose weights are kept)."""


@dataclasses.dataclass
class Budget:
    n_trials: int = 12
    """Finished trials (COMPLETE or PRUNED) the study should hold in total."""
    timeout: float | None = None
    """Seconds for this run; trials still running then are stopped."""
    concurrency: int = 2
    max_failures: int | None = None
    """Failed trials tolerated in one run before it stops; default max(3, n_trials // 2)."""


@dataclasses.dataclass
class Resources:
    cpu: float = 1
    gpu: float = 0
    workers: int = 1
    """Ranks per trial: above 1 a trial trains data-parallel through Ray Train, each rank with `cpu` and `gpu`
    (`search._ray.ranks`); 1 runs the trial in its Tune worker."""
    batch: str = "per_worker"
    """per_worker | effective: what `train.batch_size` (base, fixed and searched) means. `effective`: rows per
    optimizer step, whatever `workers` is; each rank then takes batch_size / (workers x gradient_accumulation)."""
    fsdp: str | None = None
    """The HF Trainer's `fsdp` option for a full fine-tune sharded over the ranks (`full_shard auto_wrap`); needs
    workers > 1 and a GPU per rank. Unchecked without GPUs (docs/clusters.md)."""


@dataclasses.dataclass
class StudyFile:
    name: str
    base: dict | str
    space: dict | str
    storage: str | None = None
    objective: Any = None
    """{metric, direction}, or a list of them for a multi-objective study."""
    sampler: dict = dataclasses.field(default_factory=lambda: {"name": "tpe"})
    pruner: dict = dataclasses.field(default_factory=lambda: {"name": "median"})
    budget: Budget = dataclasses.field(default_factory=Budget)
    resources: Resources = dataclasses.field(default_factory=Resources)
    output_dir: str | None = None
    """Trial outputs and Ray's files; default runs/<name> where sftune runs."""
    artifacts: str | None = None
    """Where complete trials' files go (with save: adapter | model): a folder, or s3://bucket/prefix;
    default <output_dir>/artifacts."""
    keep_best: int | None = None
    """Keep the stored files of only this many best trials (default: every complete trial's)."""
    warm_start: Any = None
    """Earlier studies whose best trials run first: [{study, storage, top}] (search/warm_start.py)."""
    tracking: Any = None
    """{mlflow: URI} and/or {wandb: {project, mode}}: trials in MLflow / W&B as well (search/tracking.py)."""


@dataclasses.dataclass
class StudyConfig:
    """A checked study: everything `sftune run` needs before Ray starts."""

    name: str
    path: Path
    storage: str
    objectives: list[Objective]
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    budget: Budget
    resources: Resources
    base: dict[str, Any]
    """The base train config as a mapping (paths resolved) with the space's `fixed:` values applied, to which
    sampled values are applied; what the study fingerprints (a fixed value changed is a base change)."""
    base_config: TrainConfig
    space: Space
    output_dir: Path
    artifacts: str = ""
    """The artifact store: an s3:// URL or an absolute folder (see `search.artifacts`)."""
    keep_best: int | None = None
    unfixed_base: dict[str, Any] | None = None
    """The base train config before the space's `fixed:` values (None: the space fixes nothing)."""
    notes: list[str] = dataclasses.field(default_factory=list)
    """Lines `sftune run` prints before it starts: what the study does with a key the user set elsewhere."""
    warm_start: list[Any] = dataclasses.field(default_factory=list)
    """Earlier studies to start from (`search.warm_start.WarmStart`)."""
    tracking: Any = None
    """Where trials are tracked as well (`search.tracking.TrackingConfig`)."""

    def as_stored_by(self, stored: dict[str, list[Any]]) -> StudyConfig:
        """This config as a study made before `fixed:` recorded it, given each param name's stored distributions.

        The shipped spaces once fixed a value as a one-choice categorical (`peft.target_modules: {choices:
        [all-linear]}`), a param of every trial and not part of the base. A fixed key that the stored trials
        sampled only from that one choice, equal to the fixed value, was that: it is compared as the base had it,
        so such a study resumes with the new space as no base change."""
        if self.unfixed_base is None:
            return self
        legacy = [
            key
            for key, value in self.space.fixed.items()
            if stored.get(key) and all(list(getattr(d, "choices", ())) == [value] for d in stored[key])
        ]
        if not legacy:
            return self
        base = copy.deepcopy(self.base)
        for key in legacy:
            set_dotted(base, key, _dotted(self.unfixed_base, key))
        return dataclasses.replace(self, base=base)

    @property
    def directions(self) -> list[str]:
        return [o.direction or "maximize" for o in self.objectives]

    @property
    def metrics(self) -> list[str]:
        return [o.metric for o in self.objectives]

    @property
    def use(self) -> str:
        """final | best: which evaluation is a trial's value (one objective; `best` needs a single one)."""
        return self.objectives[0].use

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def cache_dir(self) -> Path:
        """Tokenized data shared by all trials, keyed by a fingerprint of data, tokenizer and max_length."""
        return self.output_dir / "cache"

    @property
    def max_failures(self) -> int:
        b = self.budget
        return b.max_failures if b.max_failures is not None else max(3, b.n_trials // 2)

    def trial_config(self, sampled: dict[str, Any], number: int) -> dict[str, Any]:
        """The complete train config of one trial: base plus sampled values, its own output_dir."""
        data = apply_overrides(self.base, sampled)
        data["output_dir"] = str(self.output_dir / "trials" / f"{number:04d}")
        if self.resources.batch == "effective":  # each rank's share of the effective batch (checked on load)
            from search._ray.ranks import per_worker_batch

            train = data.setdefault("train", {})
            train["batch_size"] = per_worker_batch(
                train.get("batch_size", 16), self.resources.workers, train.get("gradient_accumulation", 1)
            )
        return data


def default_storage(path: Path, name: str) -> str:
    """A SQLite file beside the study file; for a shipped study, in the folder sftune runs from."""
    folder = Path.cwd() if is_shipped(path) else path.resolve().parent
    return f"sqlite:///{folder / f'{name}.db'}"


def in_memory_sqlite(url: str) -> bool:
    """A SQLite URL whose database lives in one process's memory (`sqlite://`, `sqlite:///:memory:`,
    `sqlite:///file::memory:?uri=true`, `...?mode=memory`): gone when the process ends."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+")[0].lower() != "sqlite":
        return False
    name, _, query = rest[1:].partition("?") if rest.startswith("/") else rest.partition("?")
    return name in ("", ":memory:") or name.startswith("file::memory:") or "mode=memory" in query.split("&")


def _storage_problems(url: str, source: str, default: str) -> list[Problem]:
    """An in-memory SQLite URL is refused: a study must outlive the command that runs it."""
    if not in_memory_sqlite(url):
        return []
    return [
        Problem(
            source,
            "storage",
            f"expected a database that outlives one command, such as a SQLite file "
            f"({default}) or a server (postgresql://...), found {url!r}, an in-memory SQLite database: it "
            "lives inside one process and is gone when it ends, so a rerun could not resume the study, "
            "`sftune status`, `export`, `report`, `plot`, `test` and the dashboard would find no study in "
            "it, and the driver's own threads would each see an empty one",
        )
    ]


def find_study_file(value: str | Path) -> Path:
    """A study file path, or the name of a shipped study (`quickstart`) when no such file exists."""
    path = Path(value)
    if path.exists() or not looks_like_name(str(value)):
        return path
    shipped = shipped_studies()
    if str(value) in shipped:
        return shipped[str(value)]
    raise ConfigError(
        Problem(
            str(value),
            "",
            f"no such study file, nor a shipped study{did_you_mean(str(value), shipped)}"
            f" (shipped: {', '.join(shipped) or 'none'})",
        )
    )


STUDY_FIELDS = {f.name for f in dataclasses.fields(StudyFile)}
STUDY_KEYS = {
    "name",
    "storage",
    "output_dir",
    "sampler",
    "pruner",
    "base",
    "space",
    "objective",
    "objective.metric",
    "objective.direction",
    "objective.use",
    "artifacts",
    "keep_best",
    "budget.n_trials",
    "budget.timeout",
    "budget.concurrency",
    "budget.max_failures",
    "resources.cpu",
    "resources.gpu",
    "resources.workers",
    "resources.batch",
    "resources.fsdp",
    "warm_start",
    "tracking",
}


def _options(
    kind: str, spec: Any, table: dict[str, str], key: str, source: str, problems: list[Problem]
) -> dict[str, Any] | None:
    """Check `{name: x, **options}` against the Optuna class's constructor."""

    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        problems.append(Problem(source, key, f"expected {{name: ..., options...}}, found {describe(spec)}"))
        return None
    name = spec["name"]
    if name not in table:
        problems.append(
            Problem(
                source,
                f"{key}.name",
                f"unknown {kind} {name!r}{did_you_mean(str(name), table)} (known: {', '.join(table)})",
            )
        )
        return None
    cls = sampler_class(name) if kind == "sampler" else pruner_class(name)
    allowed = init_options(cls)
    allowed = [p for p in allowed if not (kind == "sampler" and name == "grid" and p == "search_space")]
    ok = True
    for option in spec:
        if option != "name" and option not in allowed:
            problems.append(
                Problem(
                    source,
                    f"{key}.{option}",
                    f"unknown option for {kind} {name!r}"
                    f"{did_you_mean(str(option), allowed)} (options: {', '.join(allowed) or 'none'})",
                )
            )
            ok = False
    if kind == "sampler" and name == "tpe":  # sftune's own option (search/tpe.py): its value is checked here too
        from search.tpe import RUNNING_TRIALS

        running = spec.get("running_trials", "reported")
        if running not in RUNNING_TRIALS:
            problems.append(
                Problem(
                    source,
                    f"{key}.running_trials",
                    f"expected one of {', '.join(RUNNING_TRIALS)}, found {describe(running)}",
                )
            )
            ok = False
    return dict(spec) if ok else None


def sampler_class(name: str) -> type:
    """The class a sampler name builds: Optuna's, except tpe (`search.tpe.TPESampler`, running trials ranked
    by what they reported)."""
    import optuna

    from search.tpe import TPESampler

    return TPESampler if name == "tpe" else getattr(optuna.samplers, SAMPLERS[name])


def pruner_class(name: str) -> type:
    """The class a pruner name builds (whose signature lists its options): Optuna's, except sftune's own: the
    learning-curve pruner (`search.curve_pruner`) and the pruner of multi-objective studies (`search.pruners`)."""
    import optuna

    from search.curve_pruner import LearningCurvePruner
    from search.pruners import MO_PRUNERS, MOSuccessiveHalving

    if name == "learning-curve":
        return LearningCurvePruner
    return MOSuccessiveHalving if name in MO_PRUNERS else getattr(optuna.pruners, PRUNERS[name])


def init_options(cls: type) -> list[str]:
    """The keyword options a sampler or pruner class takes (a subclass's own and, through **kwargs, its base's)."""
    out: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(vars(klass)["__init__"]).parameters
        out += [
            p
            for p in params
            if p != "self"
            and p not in out
            and params[p].kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
        ]
        if not any(v.kind == inspect.Parameter.VAR_KEYWORD for v in params.values()):
            break
    return out


def _objectives(raw: Any, task: str, source: str, problems: list[Problem], base_cfg: Any = None) -> list[Objective]:
    spec = get_task(task)
    reported = spec.reported_metrics(base_cfg)
    if raw is None:
        raw = {"metric": spec.default_objective}
    items = raw if isinstance(raw, list) else [raw]
    out: list[Objective] = []
    for i, item in enumerate(items):
        key = f"objective[{i}]" if isinstance(raw, list) else "objective"
        if isinstance(item, str):
            item = {"metric": item}
        sub: list[Problem] = []
        obj = build(Objective, item, source=source, prefix=key, problems=sub) if isinstance(item, dict) else None
        if obj is None or sub:
            problems.extend(sub or [Problem(source, key, f"expected {{metric, direction}}, found {describe(item)}")])
            continue
        if obj.metric not in reported:
            more = (
                ""
                if spec.generates is False or reported.keys() - set(spec.metrics)
                else (" (generation metrics such as exact_match are asked for in the base config's eval.metrics)")
            )
            problems.append(
                Problem(
                    source,
                    f"{key}.metric",
                    f"task {task} reports {', '.join(reported)}; "
                    f"found {obj.metric!r}{did_you_mean(obj.metric, reported)}{more}",
                )
            )
            continue
        if obj.use not in ("final", "best"):
            problems.append(
                Problem(
                    source,
                    f"{key}.use",
                    f"expected final or best, found {obj.use!r}{did_you_mean(str(obj.use), ['final', 'best'])}",
                )
            )
            continue
        if obj.use == "best" and isinstance(raw, list):
            problems.append(
                Problem(
                    source,
                    f"{key}.use",
                    "best needs a single objective (a multi-objective study has no one best evaluation); use final",
                )
            )
            continue
        if obj.use == "best" and base_cfg is not None and base_cfg.eval.early_sample is not None:
            problems.append(
                Problem(
                    source,
                    f"{key}.use",
                    f"best compares every evaluation's value, but the base config's eval.early_sample "
                    f"({base_cfg.eval.early_sample}) scores early evaluations on a sample; use final, or drop "
                    "eval.early_sample",
                )
            )
            continue
        if obj.direction is None:
            obj.direction = reported[obj.metric]
        elif obj.direction not in ("maximize", "minimize"):
            problems.append(
                Problem(
                    source,
                    f"{key}.direction",
                    f"expected maximize or minimize, found "
                    f"{obj.direction!r}{did_you_mean(obj.direction, ['maximize', 'minimize'])}",
                )
            )
            continue
        out.append(obj)
    if not items:
        problems.append(Problem(source, "objective", "expected at least one objective"))
    metrics = [o.metric for o in out]
    if len(set(metrics)) != len(metrics):
        problems.append(Problem(source, "objective", f"a metric appears twice: {metrics}"))
    return out


def _check_space_values(
    space: Space, base: dict[str, Any], base_dir: Path, prefix: str, problems: list[Problem]
) -> None:
    """Each choice and bound must be a valid value of its train-config field."""
    for param in space.params:
        values = param.choices if param.type == "categorical" else [param.low, param.high]
        for value in values:
            if value is None and param.type != "categorical":
                continue
            sub: list[Problem] = []
            data = apply_overrides(base, {param.name: value})
            config_from_dict(data, source="", base_dir=base_dir, problems=sub)
            mine = [p for p in sub if p.key == param.name or p.key.startswith(param.name + ".")]
            if mine:
                problems.append(Problem(space.source, prefix + param.name, f"value {value!r}: {mine[0].message}"))
                break


def _inline_or_file(
    value: Any, key: str, what: str, base_dir: Path, source: str, problems: list[Problem]
) -> tuple[Any, str, Path]:
    """A mapping given inline, or read from the file a string names (relative to the study file)."""
    if not isinstance(value, str):
        return value, source, base_dir
    path = Path(value) if Path(value).is_absolute() else base_dir / value
    if what == "space" and not path.exists() and looks_like_name(value) and value in shipped_spaces():
        path = shipped_spaces()[value]  # a shipped space by name
    try:
        return read_yaml(path, what), str(path), path.resolve().parent
    except ConfigError as exc:
        hint = ""
        if what == "space" and looks_like_name(value):
            hint = (
                f" (no such file, nor a shipped space{did_you_mean(value, shipped_spaces())}; "
                f"shipped: {', '.join(shipped_spaces())})"
            )
        # A problem inside the file (a duplicated key) keeps its file and key; one with the file itself is `key`'s.
        problems.extend(p if p.key else Problem(source, key, p.message + hint) for p in exc.problems)
        return None, source, base_dir


def load_study(
    path: str | Path, overrides: list[str] | None = None, *, n_trials: int | None = None, storage: str | None = None
) -> StudyConfig:
    """Read and check a study file, its base config and its space; raise ConfigError listing every problem."""
    path = find_study_file(path)
    source = str(path)
    problems: list[Problem] = []
    parsed = _parse_study_overrides(overrides, problems)
    study = _read_study_file(path, parsed, n_trials, storage, problems)
    base_dir = path.resolve().parent
    notes: list[str] = []
    base_cfg, base, base_root = _load_base(study, parsed, base_dir, source, problems, notes)
    space, prefix = _load_space(study, base_dir, source, problems)
    base_cfg, base, unfixed_base = _fix_and_check_space(space, base_cfg, base, base_root, prefix, problems)
    task = base_cfg.task if base_cfg is not None else "classification"
    objectives = _objectives(study.objective, task, source, problems, base_cfg)
    sampler = _options("sampler", study.sampler, SAMPLERS, "sampler", source, problems)
    pruner = _options("pruner", study.pruner, PRUNERS, "pruner", source, problems)
    _check_sampler(sampler, space, objectives, source, problems)
    if pruner:
        _check_pruner(pruner, objectives, source, problems)
    _check_budget(study.budget, source, problems)
    _check_resources(study.resources, base_cfg, space, source, problems)
    _check_outputs(study, source, problems)
    warm_start, tracking = _warm_start_and_tracking(study, source, problems)
    if problems:
        raise ConfigError(problems)
    assert base_cfg is not None  # a base that was not built is a problem raised above
    return StudyConfig(
        name=study.name,
        path=path,
        storage=study.storage or default_storage(path, study.name),
        objectives=objectives,
        sampler=sampler or {"name": "tpe"},
        pruner=pruner or {"name": "none"},
        budget=study.budget,
        resources=study.resources,
        base=base,
        base_config=base_cfg,
        space=space,
        output_dir=(output_dir := Path(study.output_dir or f"runs/{study.name}").resolve()),
        artifacts=_artifact_location(study.artifacts, output_dir),
        keep_best=study.keep_best,
        unfixed_base=unfixed_base,
        notes=notes,
        warm_start=warm_start,
        tracking=tracking,
    )


def _parse_study_overrides(overrides: list[str] | None, problems: list[Problem]) -> dict[str, Any]:
    """The `--set KEY=VALUE` overrides, parsed against the study's keys and the base config's fields."""
    known = {**{k: None for k in STUDY_KEYS}, **{f"base.{k}": v for k, v in FIELDS.items()}}
    # Sampler and pruner options and space entries are free-form here; they are checked below.
    known.update(
        {
            item.split("=", 1)[0].strip(): None
            for item in overrides or []
            if item.startswith(("sampler.", "pruner.", "space.", "tracking."))
        }
    )
    return parse_overrides(overrides, known, problems)


def _read_study_file(
    path: Path, parsed: dict[str, Any], n_trials: int | None, storage: str | None, problems: list[Problem]
) -> StudyFile:
    """The study file with the study-level overrides, `n_trials` and `storage` applied, and its storage checked;
    raise ConfigError when it does not build."""
    source = str(path)
    raw = read_yaml(path, "study")
    raw = apply_overrides(raw, {k: v for k, v in parsed.items() if not k.startswith("base.")})
    if n_trials is not None:
        set_dotted(raw, "budget.n_trials", n_trials)
    if storage is not None:
        raw["storage"] = storage
    study: StudyFile | None = build(StudyFile, raw, source=source, problems=problems)
    if study is None:
        raise ConfigError(problems)
    problems.extend(
        _storage_problems(
            study.storage or "",
            "--storage" if storage is not None else source,
            default_storage(path, study.name or "study"),
        )
    )
    return study


def _load_base(
    study: StudyFile,
    parsed: dict[str, Any],
    base_dir: Path,
    source: str,
    problems: list[Problem],
    notes: list[str],
) -> tuple[TrainConfig | None, dict[str, Any], Path]:
    """The base train config (inline, or a path to its own file) with the `base.` overrides applied: the checked
    config (None when it was not built), it as a mapping, and the folder its relative paths start from."""
    base_raw, base_source, base_root = _inline_or_file(
        study.base, "base", "base train config", base_dir, source, problems
    )
    if isinstance(study.base, dict):
        base_source = f"{source} (base)"
    _study_set_keys(study.base, base_raw, base_source, parsed, source, problems, notes)
    base_raw = apply_overrides(base_raw or {}, {k[5:]: v for k, v in parsed.items() if k.startswith("base.")})
    base_cfg = None
    if base_raw or not problems:  # an empty base (`base: {}`) is checked too; one that did not load was said
        base_cfg = config_from_dict(base_raw, source=base_source, base_dir=base_root, problems=problems)
    base = base_cfg.to_dict() if base_cfg is not None else {}
    return base_cfg, base, base_root


def _load_space(study: StudyFile, base_dir: Path, source: str, problems: list[Problem]) -> tuple[Space, str]:
    """The search space (inline, or a path to its own file), and the prefix its problems' keys take."""
    space_raw, space_source, space_dir = _inline_or_file(study.space, "space", "space", base_dir, source, problems)
    prefix = "" if space_source != source else "space."
    space = (
        parse_space(space_raw, source=space_source, base_dir=space_dir, problems=problems, prefix=prefix)
        if space_raw is not None
        else Space([])
    )
    return space, prefix


def _fix_and_check_space(
    space: Space,
    base_cfg: TrainConfig | None,
    base: dict[str, Any],
    base_root: Path,
    prefix: str,
    problems: list[Problem],
) -> tuple[TrainConfig | None, dict[str, Any], dict[str, Any] | None]:
    """The base with the space's `fixed:` values applied (config, mapping, and the mapping before them, or None),
    and the space's values checked against it."""
    unfixed_base = None
    if base and space.fixed and not problems:
        unfixed_base = base
        base_cfg = _apply_fixed(space, base, base_root, prefix, problems) or base_cfg
        assert base_cfg is not None  # `base` is non-empty only when base_cfg was built
        # Only the fixed keys change (as the checked config holds them): the rest stays as a study made
        # before them fingerprinted it.
        checked = base_cfg.to_dict()
        base = apply_overrides(base, {key: _dotted(checked, key) for key in space.fixed})
    if base and space.params and not problems:
        _check_space_values(space, base, base_root, prefix, problems)
        check_space_with_base(space, base_cfg, prefix, problems)
    return base_cfg, base, unfixed_base


def _check_sampler(
    sampler: dict[str, Any] | None, space: Space, objectives: list[Objective], source: str, problems: list[Problem]
) -> None:
    """The sampler fits the study: grid needs a finite space, and cmaes and qmc one objective."""
    if sampler and sampler["name"] == "grid":
        for p in space.params:
            if p.grid_values() is None:
                problems.append(
                    Problem(
                        source,
                        "sampler.name",
                        f"grid needs a finite space, but {p.name} is a "
                        "continuous float; give it a `step` or use categorical choices",
                    )
                )
    if sampler and sampler["name"] in ("cmaes", "gp", "qmc") and len(objectives) > 1 and sampler["name"] != "gp":
        problems.append(
            Problem(
                source,
                "sampler.name",
                f"{sampler['name']} handles one objective; use tpe, nsga2, gp or random for a multi-objective study",
            )
        )


def _check_budget(b: Budget, source: str, problems: list[Problem]) -> None:
    """The budget's counts and timeout are in range."""
    if b.n_trials < 1:
        problems.append(Problem(source, "budget.n_trials", f"must be >= 1, found {b.n_trials}"))
    if b.concurrency < 1:
        problems.append(Problem(source, "budget.concurrency", f"must be >= 1, found {b.concurrency}"))
    if b.timeout is not None and b.timeout <= 0:
        problems.append(Problem(source, "budget.timeout", f"must be > 0 seconds, found {b.timeout}"))
    if b.max_failures is not None and b.max_failures < 0:
        problems.append(Problem(source, "budget.max_failures", f"must be >= 0, found {b.max_failures}"))


def _check_resources(
    r: Resources, base_cfg: TrainConfig | None, space: Space, source: str, problems: list[Problem]
) -> None:
    """Each trial's resources are in range, and a trial of several ranks can run them."""
    if r.cpu <= 0:
        problems.append(Problem(source, "resources.cpu", f"must be > 0, found {r.cpu}"))
    if r.gpu < 0:
        problems.append(Problem(source, "resources.gpu", f"must be >= 0, found {r.gpu}"))
    if r.workers != 1 or r.batch != "per_worker" or r.fsdp:
        from search._ray.ranks import ranks_problems

        problems.extend(ranks_problems(r, base_cfg, space, source))


def _check_outputs(study: StudyFile, source: str, problems: list[Problem]) -> None:
    """The artifact location, `keep_best` and the study's name are valid."""
    if study.artifacts and "://" in study.artifacts and not study.artifacts.startswith("s3://"):
        problems.append(
            Problem(source, "artifacts", f"expected a folder or s3://bucket/prefix, found {study.artifacts!r}")
        )
    if study.keep_best is not None and study.keep_best < 1:
        problems.append(
            Problem(source, "keep_best", f"must be >= 1 (or null to keep every trial's files), found {study.keep_best}")
        )
    if not study.name or not isinstance(study.name, str):
        problems.append(Problem(source, "name", "expected a non-empty study name"))


def _warm_start_and_tracking(study: StudyFile, source: str, problems: list[Problem]) -> tuple[list[Any], Any]:
    """The parsed `warm_start:` and `tracking:` values."""
    from search.warm_start import parse_warm_start

    warm_start = parse_warm_start(study.warm_start, source, problems)
    from search.tracking import parse_tracking

    tracking = parse_tracking(study.tracking, source, problems)
    return warm_start, tracking


def _check_pruner(pruner: dict[str, Any], objectives: list[Objective], source: str, problems: list[Problem]) -> None:
    """The pruner takes its options' values (it is built here once, so a bad value stops the run before the study
    is opened); a pruner of multi-objective studies needs several objectives."""
    from search.pruners import MO_PRUNERS, MOSuccessiveHalving

    if pruner["name"] not in MO_PRUNERS:
        if len(objectives) == 1:
            try:
                pruner_class(pruner["name"])(**{k: v for k, v in pruner.items() if k != "name"})
            except (TypeError, ValueError) as exc:
                problems.append(Problem(source, "pruner", f"{pruner['name']}: {exc}"))
        return
    if len(objectives) == 1:
        problems.append(
            Problem(
                source,
                "pruner.name",
                f"{pruner['name']} prunes multi-objective studies, but this "
                f"study has one objective ({objectives[0].metric}); use successive-halving (or "
                "another single-objective pruner), or add an objective",
            )
        )
        return
    try:
        MOSuccessiveHalving(**{k: v for k, v in pruner.items() if k != "name"})
    except ValueError as exc:
        problems.append(Problem(source, "pruner", f"{pruner['name']}: {exc}"))


def _study_set_keys(
    base: Any,
    base_raw: Any,
    base_source: str,
    parsed: dict[str, Any],
    source: str,
    problems: list[Problem],
    notes: list[str],
) -> None:
    """`output_dir` in the base config: the study sets each trial's own (<output_dir>/trials/NNNN). Given on the
    command line (`--set base.output_dir`) it is refused; in the base (a `sftune train` config, inline or a file,
    where it means something) it gets a note that the study's trials go elsewhere. Refusing that would break every
    study whose base is a copied train config (test fixtures included)."""
    if "base.output_dir" in parsed:
        problems.append(
            Problem(
                "--set",
                "base.output_dir",
                "the study sets each trial's output_dir "
                "(<output_dir>/trials/NNNN), so this one would be ignored; set the study's "
                "instead (--set output_dir=...)",
            )
        )
    raw = base if isinstance(base, dict) else base_raw
    if isinstance(raw, dict) and "output_dir" in raw:
        where = f"{source}: base.output_dir" if isinstance(base, dict) else f"{base_source}: output_dir"
        notes.append(
            f"note: {where} ({raw['output_dir']}) is for `sftune train` and not used by this study, which "
            "puts each trial in <output_dir>/trials/ (set output_dir at the top of the study file to move "
            "them)"
        )


def writable_problems(cfg: StudyConfig) -> list[Problem]:
    """The folders a run writes (output_dir with its data cache, and a local artifact folder when trials save
    files), each created if need be and written once; every one that cannot be, with the reason. Checked before
    Ray starts and before the study is created."""
    folders = [("output_dir", cfg.output_dir)]
    if cfg.base_config.save != "none" and "://" not in cfg.artifacts:
        folders.append(("artifacts", Path(cfg.artifacts)))
    problems = []
    for key, folder in folders:
        reason = _write_problem(folder)
        if reason:
            problems.append(
                Problem(
                    str(cfg.path),
                    key,
                    f"cannot write to {folder}: {reason}; choose a folder sftune can create and write",
                )
            )
    return problems


def _write_problem(folder: Path) -> str | None:
    if folder.exists() and not folder.is_dir():
        return "it is a file, not a folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".sftune-write-check-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if exc.filename and Path(exc.filename) != folder:
            reason += f" ({exc.filename})"
        return reason
    return None


def _apply_fixed(
    space: Space, base: dict[str, Any], base_dir: Path, prefix: str, problems: list[Problem]
) -> TrainConfig | None:
    """The base train config with the space's `fixed:` values applied; a value the config refuses is the space's
    problem, under `fixed.<key>`."""
    sub: list[Problem] = []
    cfg = config_from_dict(apply_overrides(base, space.fixed), source="", base_dir=base_dir, problems=sub)
    for p in sub:
        key = next((k for k in space.fixed if p.key == k or p.key.startswith(k + ".")), None)
        if key is not None:
            problems.append(Problem(space.source, f"{prefix}fixed.{key}", f"value {space.fixed[key]!r}: {p.message}"))
        else:
            problems.append(Problem(space.source, f"{prefix}fixed", f"with the fixed values, {p.key}: {p.message}"))
    return None if sub else cfg


def _dotted(data: dict[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _artifact_location(value: str | None, output_dir: Path) -> str:
    if not value:
        return str(output_dir / "artifacts")
    if "://" in value:
        return value
    return str(Path(value).expanduser().resolve())


def dump_yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False)
