"""Tracking: a study's trials in MLflow and W&B, beside its database (`tracking:` in the study file).

    tracking: {mlflow: http://127.0.0.1:5000}                 # or {mlflow: {uri: URI, experiment: NAME}}
    tracking: {wandb: {project: sst2, mode: offline}}          # mode: online | offline

One parent run per study (its id kept on the study, so a resumed run or a second driver continues it), one
nested run per trial with its params, every evaluation's metrics by step, its final state (COMPLETE, PRUNED, or
FAIL with the reason), where it ran, and its metrics.json, config and saved adapter or model as artifacts.

The tracker hangs on the run's progress (`TrackedProgress`): the driver is untouched and calls go to the
tracking server from one background thread, in order. A failing tracking server never fails a trial: the first
failure is a warning, the rest are counted and said when the run ends. An MLflow server that cannot be reached
ends the run before any trial (exit 2); `sftune run --no-tracking` runs without tracking.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer import ConfigError, Problem
from trainer.schema import describe, did_you_mean

if TYPE_CHECKING:
    import optuna

    from search.config import StudyConfig

MODES = ("online", "offline")
PARENT_ATTR = "tracking_runs"
CLOSE_WAIT_S = 60.0
"""How long the end of a run waits for the tracking calls still queued."""


@dataclasses.dataclass(frozen=True)
class TrackingConfig:
    mlflow: str | None = None
    """The MLflow tracking URI."""
    experiment: str | None = None
    """The MLflow experiment (default: the study's name)."""
    wandb_project: str | None = None
    wandb_mode: str = "online"
    wandb_entity: str | None = None

    @property
    def any(self) -> bool:
        return bool(self.mlflow or self.wandb_project)


def _unknown_keys(spec: dict[str, Any], allowed: list[str], key: str, source: str, problems: list[Problem]) -> None:
    """One problem per key of `spec` that is not in `allowed`, with the nearest allowed one."""
    for option in spec:
        if option not in allowed:
            problems.append(
                Problem(
                    source,
                    f"{key}.{option}",
                    f"unknown key{did_you_mean(str(option), allowed)} (keys: {', '.join(allowed)})",
                )
            )


def parse_tracking(raw: Any, source: str, problems: list[Problem]) -> TrackingConfig:
    """The `tracking:` value: {mlflow: URI | {uri, experiment}, wandb: {project, mode, entity}}."""
    if raw is None:
        return TrackingConfig()
    if not isinstance(raw, dict):
        problems.append(
            Problem(
                source, "tracking", f"expected {{mlflow: URI}} or {{wandb: {{project, mode}}}}, found {describe(raw)}"
            )
        )
        return TrackingConfig()
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "mlflow":
            spec = {"uri": value} if isinstance(value, str) else value
            if not isinstance(spec, dict) or not isinstance(spec.get("uri"), str) or not spec["uri"]:
                problems.append(
                    Problem(
                        source,
                        "tracking.mlflow",
                        f"expected a tracking URI (http://host:5000) or {{uri, experiment}}, found {describe(value)}",
                    )
                )
                continue
            _unknown_keys(spec, ["uri", "experiment"], "tracking.mlflow", source, problems)
            out.update(mlflow=spec["uri"], experiment=spec.get("experiment"))
        elif key == "wandb":
            spec = {"project": value} if isinstance(value, str) else value
            if not isinstance(spec, dict) or not isinstance(spec.get("project"), str) or not spec["project"]:
                problems.append(
                    Problem(
                        source,
                        "tracking.wandb",
                        f"expected {{project: NAME, mode: online | offline}}, found {describe(value)}",
                    )
                )
                continue
            _unknown_keys(spec, ["project", "mode", "entity"], "tracking.wandb", source, problems)
            mode = spec.get("mode", "online")
            if mode not in MODES:
                problems.append(
                    Problem(source, "tracking.wandb.mode", f"expected online or offline, found {describe(mode)}")
                )
            out.update(wandb_project=spec["project"], wandb_mode=mode, wandb_entity=spec.get("entity"))
        else:
            problems.append(
                Problem(
                    source,
                    f"tracking.{key}",
                    f"unknown tracker{did_you_mean(str(key), ['mlflow', 'wandb'])} (trackers: mlflow, wandb)",
                )
            )
    return TrackingConfig(**out)


def check_tracking(cfg: StudyConfig) -> None:
    """Before any trial: each tracker's package is installed and an MLflow server answers (ConfigError, exit 2)."""
    t: TrackingConfig = cfg.tracking
    source = str(cfg.path)
    problems = []
    hint = "; or run without tracking: sftune run --no-tracking"
    if t.mlflow:
        try:
            import mlflow  # noqa: F401
        except ImportError as exc:
            problems.append(
                Problem(
                    source, "tracking.mlflow", f"MLflow is not installed ({exc}): pip install 'sftune[mlflow]'{hint}"
                )
            )
        else:
            reason = _unreachable(t.mlflow)
            if reason:
                problems.append(
                    Problem(
                        source,
                        "tracking.mlflow",
                        f"the MLflow tracking server {t.mlflow} cannot "
                        f"be reached ({reason}); start it or fix the URI{hint}",
                    )
                )
    if t.wandb_project:
        try:
            import wandb  # noqa: F401
        except ImportError as exc:
            problems.append(
                Problem(source, "tracking.wandb", f"W&B is not installed ({exc}): pip install 'sftune[wandb]'{hint}")
            )
    if problems:
        raise ConfigError(problems)


def _unreachable(uri: str) -> str | None:
    """Why an http(s) MLflow server does not answer its /health (None: it does, or the URI is not http)."""
    if not uri.startswith(("http://", "https://")):
        return None
    import http.client
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as response:
            return None if response.status == 200 else f"HTTP {response.status} from /health"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code} from /health"
    # refused, unknown host, timeout (URLError and socket errors are OSErrors), a malformed URL (ValueError), a
    # server that answers no HTTP (HTTPException): said to the user
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return str(getattr(exc, "reason", None) or exc)


# ---------------------------------------------------------------------------------------------------
# The sinks


class _MLflow:
    name = "mlflow"

    def __init__(self, cfg: StudyConfig, study: optuna.Study) -> None:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        from mlflow import MlflowClient

        t: TrackingConfig = cfg.tracking
        self.client = MlflowClient(tracking_uri=t.mlflow)
        name = t.experiment or cfg.name
        experiment = self.client.get_experiment_by_name(name)
        self.experiment = experiment.experiment_id if experiment else self.client.create_experiment(name)
        stored = (study.user_attrs.get(PARENT_ATTR) or {}).get("mlflow") or {}
        parent: str | None = None
        if stored.get("uri") == t.mlflow and stored.get("run_id"):
            try:
                self.client.get_run(stored["run_id"])
                parent = stored["run_id"]
                self.client.update_run(parent, status="RUNNING")
            except Exception:  # noqa: BLE001 - gone from the server (or unreadable): a new parent
                parent = None
        if parent is None:
            run = self.client.create_run(
                self.experiment,
                run_name=cfg.name,
                tags={"sftune.study": cfg.name, "sftune.objectives": ", ".join(cfg.metrics)},
            )
            parent = run.info.run_id
            self.client.log_batch(
                parent,
                params=_params(
                    {
                        "sampler": cfg.sampler.get("name"),
                        "pruner": cfg.pruner.get("name"),
                        "n_trials": cfg.budget.n_trials,
                        "model": cfg.base_config.model,
                        "task": cfg.base_config.task,
                    }
                ),
            )
        self.parent: str = parent
        self.record = {"uri": t.mlflow, "run_id": self.parent, "experiment_id": self.experiment}
        self.runs: dict[int, str] = {}

    def _run(self, number: int) -> str:
        if number not in self.runs:
            run = self.client.create_run(
                self.experiment,
                run_name=f"trial {number}",
                tags={"mlflow.parentRunId": self.parent, "sftune.trial": str(number)},
            )
            self.runs[number] = run.info.run_id
        return self.runs[number]

    def started(self, number: int, params: dict[str, Any]) -> None:
        self.client.log_batch(self._run(number), params=_params(params))

    def evaluated(self, number: int, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self._run(number), metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def finished(
        self, number: int, state: str, values: dict[str, float], tags: dict[str, str], files: list[Path]
    ) -> None:
        from mlflow.entities import Metric, RunTag

        run = self._run(number)
        now = int(time.time() * 1000)
        self.client.log_batch(
            run,
            metrics=[Metric(f"final_{k}", v, now, 0) for k, v in values.items()],
            tags=[RunTag(k, v[:5000]) for k, v in {"state": state, **tags}.items()],
        )
        for path in files:
            if path.is_dir():
                self.client.log_artifacts(run, str(path), artifact_path=path.name)
            else:
                self.client.log_artifact(run, str(path))
        self.client.set_terminated(run, status={"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(state, "FAILED"))

    def close(self) -> None:
        self.client.set_terminated(self.parent, status="FINISHED")


class _WandB:
    name = "wandb"

    def __init__(self, cfg: StudyConfig, study: optuna.Study) -> None:
        import wandb

        t: TrackingConfig = cfg.tracking
        self.wandb = wandb
        self.common: dict[str, Any] = {  # wandb.init's keyword arguments shared by the study's runs
            "project": t.wandb_project,
            "entity": t.wandb_entity,
            "mode": t.wandb_mode,
            "group": cfg.name,
            "dir": str(cfg.output_dir),
        }
        stored = (study.user_attrs.get(PARENT_ATTR) or {}).get("wandb") or {}
        run_id = stored.get("run_id") or f"{cfg.name}-study-{int(time.time())}"
        self.parent = wandb.init(
            **self.common,
            settings=self._settings(),
            id=run_id,
            resume="allow",
            name=cfg.name,
            job_type="study",
            reinit="create_new",
            config={
                "sampler": cfg.sampler.get("name"),
                "pruner": cfg.pruner.get("name"),
                "n_trials": cfg.budget.n_trials,
            },
        )
        self.record = {"run_id": run_id, "project": t.wandb_project}
        self.runs: dict[int, Any] = {}
        self.study = cfg.name

    def _settings(self) -> Any:
        """A new Settings for each run (W&B writes the run's id into the one it is given); the driver's console
        output is not a trial's."""
        return self.wandb.Settings(console="off", silent=True)

    def _run(self, number: int) -> Any:
        if number not in self.runs:
            self.runs[number] = self.wandb.init(
                **self.common,
                settings=self._settings(),
                name=f"trial {number}",
                job_type="trial",
                reinit="create_new",
                config={"trial": number},
            )
        return self.runs[number]

    def started(self, number: int, params: dict[str, Any]) -> None:
        self._run(number).config.update(params, allow_val_change=True)

    def evaluated(self, number: int, step: int, metrics: dict[str, float]) -> None:
        self._run(number).log(dict(metrics), step=step)

    def finished(
        self, number: int, state: str, values: dict[str, float], tags: dict[str, str], files: list[Path]
    ) -> None:
        run = self._run(number)
        run.summary.update({"state": state, **{f"final_{k}": v for k, v in values.items()}, **tags})
        for path in files:  # metrics.json (W&B keeps its own config.yaml in the same folder; run.config has params)
            if path.name == "metrics.json":
                run.save(str(path), base_path=str(path.parent), policy="now")
        run.finish(exit_code=0 if state == "COMPLETE" else 1)
        self.runs.pop(number, None)
        self.parent.log({"finished_trials": 1})

    def close(self) -> None:
        for run in list(self.runs.values()):
            run.finish(exit_code=1)
        self.parent.finish()


def _params(params: dict[str, Any]) -> list[Any]:
    from mlflow.entities import Param

    return [Param(str(k), str(v)[:6000]) for k, v in params.items()]


# ---------------------------------------------------------------------------------------------------
# The tracker, hung on the run's progress


class TrackedProgress:
    """A Progress that also sends each trial's events to the study's trackers (in one background thread)."""

    def __init__(self, inner: Any, cfg: StudyConfig, study: optuna.Study) -> None:
        self.inner = inner
        self.cfg = cfg
        self.study = study
        self.failures = 0
        self.first_failure = ""
        self.sinks: list[Any] = []
        self.calls: queue.Queue = queue.Queue()
        records = {}
        for kind in (_MLflow if cfg.tracking.mlflow else None, _WandB if cfg.tracking.wandb_project else None):
            if kind is None:
                continue
            try:
                sink = kind(cfg, study)
            except Exception as exc:  # noqa: BLE001 - never fails the run: a warning
                self._failed(kind.name, exc)
                continue
            self.sinks.append(sink)
            records[sink.name] = sink.record
        if records:
            try:
                study.set_user_attr(PARENT_ATTR, {**(study.user_attrs.get(PARENT_ATTR) or {}), **records})
            except Exception as exc:  # noqa: BLE001 - tracking never fails the run: counted
                self._failed("study", exc)
        self.thread = threading.Thread(target=self._work, name="sftune-tracking", daemon=True)
        self.thread.start()
        if self.sinks:
            inner.message("tracking: " + ", ".join(_where(s) for s in self.sinks))

    def __getattr__(self, name: str) -> Any:  # anything else a Progress has (slots, ...)
        if name == "inner" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its searcher and scheduler, which hold the progress: the trackers and their thread stay
        here (a copy tracks nothing)."""
        return {"inner": self.inner, "cfg": self.cfg, "failures": self.failures, "first_failure": self.first_failure}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, study=None, sinks=[], calls=queue.Queue(), thread=None)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "slots":
            setattr(self.inner, name, value)
        else:
            super().__setattr__(name, value)

    def _failed(self, sink: str, exc: BaseException) -> None:
        self.failures += 1
        if self.failures == 1:
            self.first_failure = f"{sink}: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
            self.inner.message(
                f"warning: tracking failed ({self.first_failure}); trials go on, and further "
                "tracking failures are counted"
            )

    def _work(self) -> None:
        while True:
            item = self.calls.get()
            if item is None:
                return
            method, args = item
            for sink in self.sinks:
                try:
                    getattr(sink, method)(*args)
                except Exception as exc:  # noqa: BLE001 - a tracking failure never fails a trial
                    self._failed(sink.name, exc)

    def _send(self, method: str, *args: Any) -> None:
        if self.sinks:
            self.calls.put((method, args))

    # ---- Progress --------------------------------------------------------------------------------
    def message(self, text: str) -> None:
        self.inner.message(text)

    def counts(self, **kw: Any) -> None:
        self.inner.counts(**kw)

    def trial_started(self, number: int, params: dict[str, Any]) -> None:
        self.inner.trial_started(number, params)
        self._send("started", number, dict(params))

    def trial_reported(self, number: int, step: int, max_steps: int | None, metrics: dict[str, float]) -> None:
        self.inner.trial_reported(number, step, max_steps, metrics)
        self._send("evaluated", number, step, dict(metrics))

    def trial_finished(self, number: int | None, state: str, values: Any, message: str) -> None:
        self.inner.trial_finished(number, state, values, message)
        if number is None:
            return
        names = self.cfg.metrics
        finals = dict(zip(names, values, strict=False)) if isinstance(values, (list, tuple)) else {}
        tags = {"reason": message} if message else {}
        try:
            from search.storage import StudyHandle

            attrs = StudyHandle.of(self.study).trial(number).user_attrs
            tags.update({k: str(attrs[k]) for k in ("host", "node") if k in attrs})
        except Exception:  # noqa: BLE001 - where it ran is a nicety
            pass
        folder = self.cfg.output_dir / "trials" / f"{number:04d}"
        files = [
            folder / name for name in ("metrics.json", "config.yaml", "adapter", "model") if (folder / name).exists()
        ]
        self._send("finished", number, state, finals, tags, files)

    def close(self) -> None:
        if self.thread is None:  # a copy Tune unpickled
            self.inner.close()
            return
        self.calls.put(None)
        self.thread.join(CLOSE_WAIT_S)
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001 - tracking never fails the run: counted
                self._failed(sink.name, exc)
        if self.thread.is_alive():
            self.inner.message(f"warning: tracking calls still queued after {CLOSE_WAIT_S:.0f} s were dropped")
        if self.failures:
            self.inner.message(
                f"warning: {self.failures} tracking call(s) failed (first: {self.first_failure}); "
                "the study's database holds every trial"
            )
        self.inner.close()


def _where(sink: Any) -> str:
    if sink.name == "mlflow":
        return f"MLflow {sink.client.tracking_uri} (experiment {sink.experiment}, parent run {sink.parent})"
    return f"W&B project {sink.common['project']} ({sink.common['mode']}, group {sink.common['group']})"


def track(progress: Any, cfg: StudyConfig, study: optuna.Study) -> Any:
    """The run's progress, tracked when the study asks for it."""
    return TrackedProgress(progress, cfg, study) if cfg.tracking.any else progress
