"""Ctrl-C while this process starts Ray is held until the start is over, then raised.

Ray starts its processes with a `preexec_fn`, so Python runs the at-fork handlers in the driver's
main thread. A KeyboardInterrupt raised inside one of them is printed as "Exception ignored" and lost,
and when that handler is logging's `_releaseLock`, logging's module lock stays held: the tokenizing
thread, and every later log call, then waits for ever. Holding SIGINT for the length of the start
turns a Ctrl-C at any moment of it into one KeyboardInterrupt, raised where the caller can end the
run cleanly.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def interrupts_held() -> Iterator[None]:
    """While open, SIGINT is only noted; at the end, one that came is handed to the handler it replaced.

    Outside the main thread (where Python cannot set handlers) it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []

    def note(signum: int, frame: Any) -> None:
        came.append(signum)

    previous = signal.signal(signal.SIGINT, note)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if not came:
        return
    if callable(previous):  # Python's default raises KeyboardInterrupt here
        previous(signal.SIGINT, None)
    elif previous == signal.SIG_DFL:
        raise KeyboardInterrupt
