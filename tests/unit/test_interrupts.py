"""Ctrl-C while the driver starts Ray: held until the start ends, then raised once (`search._ray.interrupts`).

Every test here puts SIGINT where a terminal's Ctrl-C finds it (Python's handler in this process, the default
disposition in a process it starts): a test run started as a script's background job or under `nohup`
inherits SIGINT as ignored, and a held Ctrl-C is then rightly dropped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from search._ray.interrupts import interrupts_held


@pytest.fixture(autouse=True)
def python_handles_sigint() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt in this process for the test, as in a terminal; restored after."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_a_ctrl_c_inside_is_raised_at_the_end_and_the_handler_is_restored() -> None:
    before = signal.getsignal(signal.SIGINT)
    reached_the_end = False
    with pytest.raises(KeyboardInterrupt), interrupts_held():
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(100_000):  # Python runs the handler at the next bytecode: it must not raise
            pass
        reached_the_end = True
    assert reached_the_end
    assert signal.getsignal(signal.SIGINT) is before


def test_without_a_ctrl_c_nothing_is_raised() -> None:
    before = signal.getsignal(signal.SIGINT)
    with interrupts_held():
        pass
    assert signal.getsignal(signal.SIGINT) is before


def test_an_error_inside_wins_over_a_held_ctrl_c() -> None:
    with pytest.raises(ValueError), interrupts_held():
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(100_000):
            pass
        raise ValueError("the start failed")


SCRIPT = textwrap.dedent("""
    import ctypes, functools, os, signal, subprocess, sys, threading
    # A Ctrl-C comes as the parent runs its at-fork handlers: sent through libc (no Python frame, no
    # check of signals), it lands in the next handler, logging's, which interrupted leaves its lock held.
    libc_kill = ctypes.CDLL(None).kill
    os.register_at_fork(after_in_parent=functools.partial(libc_kill, os.getpid(), signal.SIGINT))
    import logging
    from search._ray.interrupts import interrupts_held

    def start():  # what Ray does: a child process started with a preexec_fn
        subprocess.Popen([sys.executable, "-c", "pass"], preexec_fn=lambda: None).wait()

    try:
        if sys.argv[1] == "held":
            with interrupts_held():
                start()
        else:
            start()
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    logger = threading.Thread(target=lambda: logging.getLogger("after"), daemon=True)
    logger.start()
    logger.join(timeout=4)
    print("logging works" if not logger.is_alive() else "logging is stuck", flush=True)
""")


@pytest.mark.parametrize("held", [True, False], ids=["held", "bare"])
def test_a_ctrl_c_during_a_fork_no_longer_leaves_loggings_lock_held(held: bool) -> None:
    """The deadlock CI met: without holding, the interrupt is lost and logging's lock stays held."""
    from _servers import sigint_default  # tests/ (conftest.py puts it on the path)

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run(
        sigint_default([sys.executable, "-c", SCRIPT, "held" if held else "bare"]),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
        env={**os.environ, "PYTHONPATH": root},
    )
    if held:
        assert done.stdout.split("\n")[:2] == ["interrupted", "logging works"], done.stdout + done.stderr
    else:  # what the product did before: the Ctrl-C is lost and logging is stuck
        assert "interrupted" not in done.stdout, done.stdout + done.stderr
        assert "logging is stuck" in done.stdout, done.stdout + done.stderr
