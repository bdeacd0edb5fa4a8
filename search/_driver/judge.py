"""The scheduler's half of the driver: each evaluation a trial reports is kept, then judged (go on, or stop it).

A trial is stopped when its pruner says so (Optuna's, through `trial.should_prune`, or the several-objective
rule of `search.pruners`), when an objective is not a finite number, or when the run has ended on a storage
failure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import optuna

from search._driver.book import TrialBook
from search._driver.ledger import Ledger
from search._driver.outcome import not_finite
from search._trial_result import error_of, is_done, is_ready, max_steps_of, memory_of, step_of, worker_attrs
from search.config import StudyConfig
from search.pruners import MOPruner, build_mo_pruner


@dataclass
class Judge:
    """Tune's scheduler calls `result` for every intermediate result of a trial this driver runs."""

    cfg: StudyConfig
    study: optuna.Study
    ledger: Ledger
    book: TrialBook
    metric_names: set[str] = field(init=False)
    mo_pruner: MOPruner | None = field(init=False)

    def __post_init__(self) -> None:
        self.metric_names = _metric_names(self.cfg)
        self.mo_pruner = build_mo_pruner(self.cfg)

    def result(self, tune_id: str, result: dict[str, Any]) -> bool:
        """An intermediate result of a trial; True means stop it (pruned, a non-finite metric, or the run ends)."""
        trial = self.book.trials.get(tune_id)
        if trial is None:
            return False
        if self.ledger.fatal:
            self.book.stopped[tune_id] = f"stopped: {self.ledger.fatal}"
            return True
        if is_ready(result):
            for key, value in worker_attrs(result).items():
                self.ledger.guard(trial.set_user_attr, key, value)
            return False
        if error_of(result) is not None or is_done(result):
            return False
        started = time.perf_counter()
        values, step = self._keep(tune_id, trial, result)
        if len(values) != len(self.cfg.metrics):
            return False
        stop = self._judge(tune_id, trial, values, step)
        self.ledger.timings["decide"].append(time.perf_counter() - started)
        return stop

    def _keep(self, tune_id: str, trial: optuna.Trial, result: dict[str, Any]) -> tuple[list[float], int]:
        """Keep one evaluation (history, progress, the first one's memory, precision, model dtype and template); its
        objective values."""
        guard = self.ledger.guard
        step = step_of(result)
        self.book.last_step[tune_id] = step
        metrics = {m: float(result[m]) for m in self.metric_names if m in result}
        history = self.book.history.setdefault(tune_id, [])
        history.append({"step": step, **metrics, "at": time.time()})
        self.ledger.progress.trial_reported(trial.number, step, max_steps_of(result), metrics)
        if len(history) == 1:  # the peak of the first steps, recorded and judged once (again at the end)
            self.ledger.note_memory(trial, memory_of(result))
            for key in ("precision", "model_dtype", "template"):  # arithmetic, weights, prompt format (sft)
                if result.get(key):
                    guard(trial.set_user_attr, key, str(result[key]))
        if result.get("generations"):  # a few generated samples: what the trial's numbers mean
            guard(trial.set_user_attr, "generations", {"step": step, "samples": result["generations"]})
        return [metrics[m] for m in self.cfg.metrics if m in metrics], step

    def _judge(self, tune_id: str, trial: optuna.Trial, values: list[float], step: int) -> bool:
        """Report an evaluation to Optuna; True when its pruner, or a non-finite metric, stops the trial."""
        guard = self.ledger.guard
        if not self.cfg.multi_objective:
            guard(trial.report, values[0], step)
            if guard(trial.should_prune):
                self.book.pruned.add(tune_id)
                why = getattr(self.study.pruner, "reasons", {}).pop(trial.number, None)  # search/curve_pruner.py
                if why:
                    self.book.prune_reasons[tune_id] = why
                    guard(trial.set_user_attr, "pruned_because", why)
                return True
        elif self.mo_pruner is not None and (
            tune_id in self.book.pruned or guard(self.mo_pruner.judge, self.study, trial, values, step)
        ):
            self.book.pruned.add(tune_id)  # several objectives: search/pruners.py's rule (judged once: it stops now)
            return True
        bad = not_finite(values)
        if bad:
            self.book.stopped[tune_id] = f"metric was {bad} at step {step}"
            return True
        return False


def _metric_names(cfg: StudyConfig) -> set[str]:
    """Every metric a trial of this study may report: its task's, its `eval:` section's, and the objectives; and what
    its task records beside them (multilabel's tuned `threshold`)."""
    from trainer import METRICS
    from trainer.tasks import get_task

    names = {m for metric_names in METRICS.values() for m in metric_names} | set(cfg.metrics)
    if cfg.base_config is not None:
        task = get_task(cfg.base_config.task)
        names |= set(task.reported_metrics(cfg.base_config)) | set(task.recorded)
    return names
