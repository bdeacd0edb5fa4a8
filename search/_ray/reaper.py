"""A watcher process that ends the Ray processes a driver started once the driver is gone, even after SIGKILL.

Ray ends its GCS and raylet with the driver that started them (Linux's parent-death signal), but
the agents the raylet starts (dashboard agent, runtime-env agent) outlive a SIGKILLed driver by
about a minute, and anything Ray leaves behind after an unclean exit holds ports, memory and the
driver's output pipes. The watcher notes the driver's descendants every `SNAPSHOT_EVERY_S`; when
its stdin (a pipe only the driver holds) reaches end of file, because the driver died or closed it
after `ray.shutdown()`, it ends every noted process that is no longer the driver's descendant:
SIGTERM, then SIGKILL after a grace period. A process is matched by pid and start time, so a
reused pid is never hit. Linux only (it reads /proc); elsewhere `start_reaper` starts nothing.
Stdlib only: it starts in a fraction of a second.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

SNAPSHOT_EVERY_S = 0.5
GRACE_S = 3.0
PROC = Path("/proc")


def process_table() -> dict[int, tuple[int, int]]:
    """Every visible process: pid -> (parent pid, start time in clock ticks since boot)."""
    table: dict[int, tuple[int, int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it just ended
            continue
        # "pid (comm) state ppid ... starttime ...": comm may hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] == "Z":  # a zombie is already dead; its parent reaps it
            continue
        table[int(entry.name)] = (int(fields[1]), int(fields[19]))
    return table


def descendants(root: int, table: dict[int, tuple[int, int]]) -> dict[int, int]:
    """The processes below `root` in `table`: pid -> start time."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, int] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid not in found:
            found[pid] = table[pid][1]
            todo.extend(children.get(pid, []))
    return found


def orphans(driver: tuple[int, int], known: dict[int, int], table: dict[int, tuple[int, int]]) -> list[int]:
    """The noted processes still running that the driver no longer holds (all of them once it is dead)."""
    pid, started = driver
    alive = table.get(pid, (0, -1))[1] == started
    held = descendants(pid, table) if alive else {}
    return [p for p, t in known.items() if table.get(p, (0, -1))[1] == t and p not in held]


def end(pids: list[int], grace: float = GRACE_S) -> None:
    """SIGTERM `pids`, then SIGKILL whichever still run after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.time() + (grace if sig == signal.SIGTERM else 0)
        while time.time() < deadline:
            table = process_table()
            if not any(p in table for p in pids):
                return
            time.sleep(0.1)


def watch(driver_pid: int) -> None:
    """Note the driver's descendants until stdin closes, then end the ones it no longer holds."""
    table = process_table()
    driver = (driver_pid, table.get(driver_pid, (0, -1))[1])
    me = os.getpid()
    known: dict[int, int] = {}
    while True:
        known.update({p: t for p, t in descendants(driver_pid, table).items() if p != me})
        ready, _, _ = select.select([sys.stdin.fileno()], [], [], SNAPSHOT_EVERY_S)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            break
        table = process_table()
    end(orphans(driver, known, process_table()))


def start_reaper() -> subprocess.Popen | None:
    """In the driver, before it starts Ray: start the watcher (None where there is no /proc).

    Close its stdin (`stop_reaper`) after `ray.shutdown()`; a dead driver closes it by dying.
    """
    if not (PROC / "self" / "stat").exists():
        return None
    return subprocess.Popen(
        [sys.executable, "-I", __file__, str(os.getpid())],  # -I: stdlib only, whatever the driver's path
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C in the terminal reaches the driver's group, not the watcher
    )


def stop_reaper(reaper: subprocess.Popen | None, timeout: float = GRACE_S + 2) -> None:
    """After `ray.shutdown()`: let the watcher end whatever Ray left, and wait for it briefly."""
    if reaper is None:
        return
    try:
        if reaper.stdin:
            reaper.stdin.close()
        reaper.wait(timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        pass


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watch(int(sys.argv[1]))
