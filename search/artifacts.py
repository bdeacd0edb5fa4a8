"""What a study keeps of its trials besides numbers: files in Optuna's artifact store, and a note per trial.

Each complete trial's adapter or model (one zip), its `metrics.json` and `config.yaml` go through
`optuna.artifacts` to the study's store (a folder, default `<output_dir>/artifacts`, or
`s3://bucket/prefix`), where optuna-dashboard lists and downloads them; `keep_best: K` keeps the
files of the K best trials only. Every finished trial also gets a dashboard note a person reads at
a glance. The driver calls `store_trial`, `apply_retention` and `write_note`; `sftune export` calls
`fetch_trial_files`.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.config import StudyConfig
from search.storage import StudyHandle, rdb_models, rdb_storage, trial_id_of
from trainer import ConfigError, Problem

ARTIFACTS_ATTR = "artifacts:"
"""Optuna's trial system-attribute prefix for artifact metadata."""
SAVED = ("adapter", "model")
STORED_FILES = ("metrics.json", "config.yaml")
_UNCOMPRESSED = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


class _Prefixed:
    """An artifact store whose artifact ids live under a key prefix (s3://bucket/prefix)."""

    def __init__(self, store: Any, prefix: str) -> None:
        self.store, self.prefix = store, prefix.strip("/") + "/"

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self.store.open_reader(self.prefix + artifact_id)

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.store.write(self.prefix + artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self.store.remove(self.prefix + artifact_id)


def artifact_store(cfg: StudyConfig, *, create: bool = True) -> Any:
    """The study's artifact store; with `create=False`, None where a local store does not exist yet."""
    location = cfg.artifacts
    if location.startswith("s3://"):
        bucket, _, prefix = location[len("s3://") :].partition("/")
        try:
            store: Any = optuna.artifacts.Boto3ArtifactStore(bucket)
        except ImportError:
            raise ConfigError(
                Problem(
                    str(cfg.path),
                    "artifacts",
                    f"{location} needs boto3 (pip install boto3) and AWS credentials in the environment",
                )
            ) from None
        return _Prefixed(store, prefix) if prefix else store
    if not create and not Path(location).is_dir():
        return None
    Path(location).mkdir(parents=True, exist_ok=True)
    return optuna.artifacts.FileSystemArtifactStore(location)


def _frozen(study: optuna.Study, number: int) -> FrozenTrial:
    """Trial `number` of the study, read from storage."""
    return StudyHandle.of(study).trial(number)


def stored_files(trial: FrozenTrial) -> dict[str, str]:
    """The trial's artifacts still in the store: {filename: artifact id}."""
    out = {}
    for key, value in trial.system_attrs.items():
        meta = json.loads(value) if key.startswith(ARTIFACTS_ATTR) and isinstance(value, str) else None
        if meta:
            out[meta["filename"]] = meta["artifact_id"]
    return out


def _zip_folder(folder: Path, archive: Path) -> None:
    """`folder` as a zip whose entries sit under its own name (weights stored, the rest deflated)."""
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            kind = zipfile.ZIP_STORED if path.suffix in _UNCOMPRESSED else zipfile.ZIP_DEFLATED
            zf.write(path, f"{folder.name}/{path.relative_to(folder)}", compress_type=kind)


def store_trial(study: optuna.Study, cfg: StudyConfig, number: int, folder: Path) -> None:
    """Upload trial `number`'s adapter or model (as `adapter.zip` / `model.zip`), `metrics.json` and
    `config.yaml` from its output `folder` to the study's artifact store.

    Call it while the trial is still RUNNING, before `study.tell`: Optuna keeps artifact metadata in
    the trial's system attributes, which a finished trial no longer accepts.

    The uploaded adapter/model folder is then removed from `folder` (the store holds it), so a long
    study does not keep every trial's weights twice.
    """
    folder = Path(folder)
    store = artifact_store(cfg)
    trial = _frozen(study, number)
    with tempfile.TemporaryDirectory(prefix="sftune-artifact-") as tmp:
        uploads = [folder / name for name in STORED_FILES if (folder / name).is_file()]
        saved = [folder / name for name in SAVED if (folder / name).is_dir()]
        for sub in saved:
            archive = Path(tmp) / f"{sub.name}.zip"
            _zip_folder(sub, archive)
            uploads.insert(0, archive)
        for path in uploads:
            optuna.artifacts.upload_artifact(
                artifact_store=store, file_path=str(path), study_or_trial=trial, storage=StudyHandle.of(study).storage
            )
    for sub in saved:
        shutil.rmtree(sub, ignore_errors=True)


def remove_files(study: optuna.Study, cfg: StudyConfig, trial: FrozenTrial, store: Any = None) -> int:
    """Remove a trial's stored files from the store and their metadata from the trial."""
    store = store or artifact_store(cfg)
    ids = list(stored_files(trial).values())
    for artifact_id in ids:
        try:
            store.remove(artifact_id)
        except Exception:  # noqa: BLE001 - already gone (another driver's retention): forget it all the same
            pass
    _forget(study, trial_id_of(trial), [ARTIFACTS_ATTR + i for i in ids])
    return len(ids)


def _forget(study: optuna.Study, trial_id: int, keys: list[str]) -> None:
    """Delete system attributes of a finished trial.

    Optuna has no API to delete an attribute, and a finished trial's attributes cannot be set, so
    the rows go directly from the RDB storage (through Optuna's table models, `rdb_models()`, and the
    trials its cache keeps, `StudyHandle.cached`: private names reached in search/storage/_optuna.py);
    Optuna and optuna-dashboard then list no removed file.
    """
    if not keys:
        return
    from sqlalchemy import delete

    models = rdb_models()
    storage = rdb_storage(study)
    with storage.scoped_session() as session:
        session.execute(
            delete(models.TrialSystemAttributeModel).where(
                models.TrialSystemAttributeModel.trial_id == trial_id, models.TrialSystemAttributeModel.key.in_(keys)
            )
        )
        session.commit()
    # Optuna's cache wrapper keeps finished trials in memory: drop the keys there too.
    for trial in StudyHandle.of(study).cached(trial_id):
        for key in keys:
            trial.system_attrs.pop(key, None)


def apply_retention(study: optuna.Study, cfg: StudyConfig) -> list[int]:
    """With `keep_best: K`, remove the stored files of every complete trial outside the K best.

    Returns the numbers of the trials whose files were removed.
    """
    if cfg.keep_best is None:
        return []
    from search.report import ranked

    done = ranked(study, cfg)
    losers = [t for t in done[cfg.keep_best :] if stored_files(t)]
    store = artifact_store(cfg) if losers else None
    for trial in losers:
        remove_files(study, cfg, trial, store)
    return [t.number for t in losers]


def fetch_trial_files(study: optuna.Study, cfg: StudyConfig, number: int, config_path: Path) -> Path | None:
    """Download trial `number`'s adapter or model beside an exported config: `<stem>-adapter/` or `<stem>-model/`.

    Returns the folder written, or None when the store holds no weights for the trial.
    """
    files = stored_files(_frozen(study, number))
    name = next((n for n in SAVED if f"{n}.zip" in files), None)
    if name is None:
        return None
    store = artifact_store(cfg, create=False)
    if store is None:
        return None
    target = config_path.parent / f"{config_path.stem}-{name}"
    with tempfile.TemporaryDirectory(prefix="sftune-fetch-") as tmp:
        archive = Path(tmp) / f"{name}.zip"
        optuna.artifacts.download_artifact(
            artifact_store=store, file_path=str(archive), artifact_id=files[f"{name}.zip"]
        )
        shutil.rmtree(target, ignore_errors=True)
        with zipfile.ZipFile(archive) as zf:
            for entry in zf.infolist():
                rel = Path(entry.filename)
                if entry.is_dir() or rel.is_absolute() or ".." in rel.parts:
                    continue
                dest = target.joinpath(*rel.parts[1:])
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(entry) as src, dest.open("wb") as out:
                    shutil.copyfileobj(src, out)
    return target


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def note_text(trial: FrozenTrial, cfg: StudyConfig, history: list[dict[str, float]] | None = None) -> str:
    """The Markdown note of a finished trial: outcome, params, metrics, where it ran, its evaluations."""
    attrs = trial.user_attrs
    lines = [f"## Trial {trial.number}: {trial.state.name.lower()}", ""]
    steps = sorted(trial.intermediate_values)
    if trial.state == TrialState.COMPLETE and trial.values:
        which = "best evaluation" if cfg.use == "best" else "final evaluation"
        at = attrs.get("best_step") if cfg.use == "best" else attrs.get("final_step")
        shown = ", ".join(f"**{m}** {_fmt(v)}" for m, v in zip(cfg.metrics, trial.values, strict=False))
        lines.append(f"{shown} ({which}{f', step {at}' if at is not None else ''})")
    elif trial.state == TrialState.PRUNED:
        where = (
            f" at step {steps[-1]} ({cfg.metrics[0]} {_fmt(trial.intermediate_values[steps[-1]])} there)"
            if steps
            else ""
        )
        lines.append(
            f"Pruned by the {cfg.pruner.get('name', '?')} pruner{where}: its learning curve fell behind "
            "the trials before it at the same step."
        )
    elif trial.state == TrialState.FAIL:
        from search.report import fail_reason

        lines += ["Failed:", "", "```", fail_reason(trial), "```"]
    lines.append("")
    if trial.params:
        lines += ["| param | value |", "|---|---|"]
        lines += [f"| `{k}` | {_fmt(v)} |" for k, v in trial.params.items()]
        lines.append("")
    places = [
        f"host `{attrs['host']}`" if attrs.get("host") else "",
        f"Ray node `{str(attrs['node'])[:12]}`" if attrs.get("node") else "",
    ]
    seconds = trial.duration.total_seconds() if trial.duration else None
    ran = " · ".join(w for w in places if w)
    if ran or seconds is not None:
        lines.append("Ran " + (f"on {ran}" if ran else "") + (f" for {seconds:.0f} s" if seconds is not None else ""))
        lines.append("")
    history = history if history is not None else attrs.get("history")
    if history:
        keys = list(dict.fromkeys(k for h in history for k in h if k not in ("step", "at")))
        lines += ["| step | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        lines += [f"| {h['step']} | " + " | ".join(_fmt(h.get(k)) for k in keys) + " |" for h in history]
    elif steps:
        lines += [f"| step | {cfg.metrics[0]} |", "|---|---|"]
        lines += [f"| {s} | {_fmt(trial.intermediate_values[s])} |" for s in steps]
    lines += _generations(attrs.get("generations"))
    files = stored_files(trial)
    if files:
        lines += ["", "Files (Artifacts below): " + ", ".join(f"`{f}`" for f in sorted(files))]
    return "\n".join(lines).rstrip() + "\n"


def _generations(kept: Any) -> list[str]:
    """The latest evaluation's sample generations (`eval:`), as a table: what the metrics mean in words."""
    if not isinstance(kept, dict) or not kept.get("samples"):
        return []

    def cell(text: Any) -> str:
        return " ".join(str(text).split()).replace("|", "\\|")[-200:] or " "

    lines = [
        "",
        f"Sample generations at step {kept.get('step')}:",
        "",
        "| prompt (its end) | output | reference |",
        "|---|---|---|",
    ]
    return lines + [
        f"| {cell(s.get('prompt'))} | {cell(s.get('output'))} | {cell(s.get('reference'))} |" for s in kept["samples"]
    ]


def write_note(
    study: optuna.Study, cfg: StudyConfig, number: int, history: list[dict[str, float]] | None = None
) -> None:
    """Save trial `number`'s note for optuna-dashboard (call it once the trial has ended and its files are stored).

    `history`: the trial's evaluations ({step, metric: value, ...}); default its user attribute
    `history` where present, else its intermediate values.
    """
    from optuna_dashboard import save_note

    trial = _frozen(study, number)
    # A Trial handle for the note API, on a study object whose sampler has no per-trial hook.
    handle = optuna.Study(
        study_name=study.study_name, storage=StudyHandle.of(study).storage, sampler=optuna.samplers.RandomSampler()
    )
    save_note(optuna.trial.Trial(handle, trial_id_of(trial)), note_text(trial, cfg, history))
