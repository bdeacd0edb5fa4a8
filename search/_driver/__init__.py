"""The driver's side of a running study, without Ray: ask Optuna, judge each evaluation, tell the end.

Tune's searcher and scheduler (`search._ray.shells`) are thin shells over one `Driver` (`driver`); contract
tests drive it against an in-memory study without a cluster. The driver is the study's one writer: workers
only send results back (`search._trial_result` defines them), and every write goes through its `ledger`.
`book` keeps its running trials, `judge` decides on each evaluation, `upkeep` keeps a shared study's
RUNNING trials true, `outcome` says how a trial ended and `outputs` writes what it leaves for people.
"""

from search._driver.driver import FINISHED, Driver

__all__ = ["FINISHED", "Driver"]
