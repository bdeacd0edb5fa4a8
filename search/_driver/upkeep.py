"""The driver's upkeep beside Tune's calls: heartbeats for its running trials, the trials of drivers that died, and
the trials it abandons when the run ends early."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import optuna

from search._driver.book import TrialBook
from search._driver.ledger import Ledger
from search.storage import fail_stale, heartbeat_settings, record_heartbeats


@dataclass
class Upkeep:
    """What keeps a shared study's RUNNING trials true: this driver's are stamped alive, dead drivers' failed."""

    study: optuna.Study
    ledger: Ledger
    book: TrialBook
    last_beat: float = 0.0

    def heartbeats(self) -> threading.Event:
        """Stamp this driver's running trials every heartbeat interval from a thread of their own, so a busy
        Tune loop never lets another driver take a live trial for stale; set the returned event to stop."""
        stop = threading.Event()
        interval = heartbeat_settings()[0]

        def beat() -> None:
            while not stop.wait(interval):
                try:
                    record_heartbeats(self.study, [t.number for t in list(self.book.trials.values())])
                except Exception:  # noqa: BLE001 - a storage failure is met (and reported) by the loop
                    pass

        threading.Thread(target=beat, name="sftune-heartbeat", daemon=True).start()
        return stop

    def tick(self) -> None:
        """Every heartbeat interval, in Tune's loop: recover the trials of drivers that died."""
        now = time.time()
        if now - self.last_beat < heartbeat_settings()[0]:
            return
        self.last_beat = now
        for frozen in self.ledger.guard(fail_stale, self.study) or []:
            self.ledger.progress.message(
                f"trial {frozen.number} was left RUNNING by a driver that died: marked FAIL, its params queued again"
            )

    def abandon(self, reason: str) -> None:
        """The run ends with trials still running (timeout, interrupt): FAIL them and queue their params."""
        for tune_id, trial in list(self.book.trials.items()):
            self.book.trials.pop(tune_id, None)
            self.ledger.fail(trial, f"{reason}; its params are queued for the next run", retry=True)
