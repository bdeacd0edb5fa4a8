"""`sftune run` in a pseudo-terminal shows the live view: rows with step bars, counts and the best so far."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import tiny

pytestmark = pytest.mark.integration


def _run_in_pty(args: list[str], cwd: Path, timeout: float = 300, columns: int = 160) -> tuple[int, str]:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["TERM"] = "xterm-256color"
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        os.close(master)
    return proc.returncode, b"".join(chunks).decode("utf-8", "replace")


def test_run_in_a_terminal_shows_live_bars(tmp_path: Path, bert_dir: Path) -> None:
    path = tiny.study_file(tmp_path, bert_dir, name="live", n_trials=2, concurrency=2, max_steps=30)
    rc, screen = _run_in_pty([sys.executable, "-m", "search", "run", str(path)], cwd=tmp_path)
    assert rc == 0, screen[-3000:]
    assert "\x1b[" in screen  # the view is redrawn with terminal control sequences
    assert "━" in screen  # a step bar
    assert "/30" in screen  # step of max_steps in a trial's row
    assert "finished 2/2" in screen


def test_run_in_an_80_column_terminal_shows_short_params(tmp_path: Path, bert_dir: Path) -> None:
    """At 80 columns a trial's row is its searched params in short form (`lr 1.23e-3 · r 4`), on one line."""
    path = tiny.study_file(tmp_path, bert_dir, name="live80", n_trials=2, concurrency=2, max_steps=30)
    rc, screen = _run_in_pty([sys.executable, "-m", "search", "run", str(path)], cwd=tmp_path, columns=80)
    assert rc == 0, screen[-3000:]
    assert re.search(r"\d+ lr \d(\.\d+)?e-\d · r \d ", screen), screen[-3000:]
    assert "finished 2/2" in screen
