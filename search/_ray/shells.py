"""Tune's side of the adapter: a Searcher that asks Optuna, a scheduler that prunes, a heartbeat callback.

Each is a thin shell over one `search._driver.Driver`, which holds the map of Tune trial id to Optuna
trial; Ray's stock OptunaSearch ignores Optuna's pruners and can store a stopped trial as COMPLETE,
these tell Optuna the exact state of every trial.
"""

from __future__ import annotations

from typing import Any

from ray.tune import Callback
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from search._driver import FINISHED, Driver
from search._ray.ranks import GROUP_KEY, release_group


class OptunaSearcher(Searcher):
    """Asks the Optuna study for each trial Tune can start, and tells it how each one ended."""

    def __init__(self, driver: Driver) -> None:
        super().__init__()
        self.driver = driver

    def set_search_properties(self, metric: Any, mode: Any, config: Any, **spec: Any) -> bool:
        return True

    # Ray's Searcher.suggest says dict | None, but its own Searcher.FINISHED (a str) is a documented answer
    def suggest(self, trial_id: str) -> dict | str | None:  # type: ignore[override]
        with self.driver.lock:
            out = self.driver.suggest(trial_id)
        return Searcher.FINISHED if out == FINISHED else out

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        with self.driver.lock:
            self.driver.complete(trial_id, result, error)


class OptunaPruningScheduler(FIFOScheduler):
    """Reports each evaluation to its Optuna trial and stops the trial when the pruner says so."""

    def __init__(self, driver: Driver) -> None:
        super().__init__()
        self.driver = driver
        self.groups: dict[str, str] = {}
        """A multi-worker trial's ranks' placement group (`search._ray.ranks`), removed when the trial ends."""

    def set_search_properties(self, metric: Any, mode: Any, **spec: Any) -> bool:
        return True

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if result.get(GROUP_KEY):
            self.groups[trial.trial_id] = str(result[GROUP_KEY])
        with self.driver.lock:
            stop = self.driver.result(trial.trial_id, result)
        return TrialScheduler.STOP if stop else TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        release_group(self.groups.pop(trial.trial_id, None))

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        release_group(self.groups.pop(trial.trial_id, None))

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        release_group(self.groups.pop(trial.trial_id, None))
        try:
            error = trial.get_error()
        except Exception:  # noqa: BLE001 - the error file may be gone with its node
            error = None
        with self.driver.lock:
            self.driver.worker_error(trial.trial_id, error)


class DriverTick(Callback):
    """Runs the driver's periodic work (heartbeats, stale trials of dead drivers) inside Tune's loop."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        with self.driver.lock:
            self.driver.tick()
