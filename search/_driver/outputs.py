"""What a trial leaves for people (a remote trial's files, artifacts, notes, retention), kept off Tune's loop."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import optuna

from search._trial_result import take_files, unpack
from search.artifacts import store_trial
from search.config import StudyConfig


class TrialOutputs:
    """One driver's writer of trial outputs: a failure here is said, never fatal to the run.

    `guard` runs a storage call (a storage failure ends the run, as the driver decides); `say` tells the user.
    """

    def __init__(
        self,
        cfg: StudyConfig,
        study: optuna.Study,
        *,
        guard: Callable[..., Any],
        say: Callable[[str], None],
        job: str | None,
    ) -> None:
        self.cfg = cfg
        self.study = study
        self.guard = guard
        self.say = say
        self.job = job
        self._later = ThreadPoolExecutor(1, thread_name_prefix="sftune-notes")

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its searcher (and so this) for its checkpoints
        return {k: v for k, v in self.__dict__.items() if k != "_later"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._later = ThreadPoolExecutor(1, thread_name_prefix="sftune-notes")

    def folder(self, number: int) -> Path:
        """Where the driver keeps trial `number`'s output files."""
        return Path(self.cfg.output_dir) / "trials" / f"{number:04d}"

    def now(self, fn: Any, *args: Any) -> None:
        """Write an output now (artifacts, notes): a failure there is said, never fatal to the run."""
        try:
            self.guard(fn, *args)
        except Exception as exc:  # noqa: BLE001 - the trial's result is already safe in storage
            self.say(f"note: {getattr(fn, '__name__', 'saving outputs')} failed: {type(exc).__name__}: {exc}")

    def later(self, fn: Any, *args: Any) -> None:
        """`now` for what needs the trial ended (notes, retention): off Tune's loop, in order, on one thread,
        so no trial's report waits behind another trial's note (`finish` waits for them)."""
        self._later.submit(self.now, fn, *args)

    def finish(self) -> None:
        """Wait for what is written after a trial ended; call it once the run ends."""
        self._later.shutdown(wait=True)

    def keep_files(self, trial: optuna.Trial, result: dict[str, Any]) -> None:
        """A trial that ran on another node sent its output files: write them where the driver keeps them."""
        data = take_files(result)
        if data:
            unpack(data, self.folder(trial.number))

    def store(self, trial: optuna.Trial) -> None:
        """A complete trial's saved adapter or model, metrics.json and config.yaml to the artifact store
        (before `tell`: Optuna keeps artifact records on a running trial)."""
        config = self.guard(lambda: trial.user_attrs.get("config")) or {}
        if config.get("save", "none") != "none" and self.job is None:
            self.now(store_trial, self.study, self.cfg, trial.number, self.folder(trial.number))
