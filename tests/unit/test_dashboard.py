"""`sftune dashboard` serves optuna-dashboard on the study's own storage, on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import tiny


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_answers_with_the_study(tmp_path: Path, bert_dir: Path) -> None:
    path = tiny.study_file(tmp_path, bert_dir, name="dash")
    study = optuna.create_study(study_name="dash", storage=f"sqlite:///{tmp_path / 'dash.db'}", direction="maximize")
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.5))
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "search", "dashboard", str(path), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        body = None
        for _ in range(60):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as resp:
                    body = json.loads(resp.read())
                break
            except OSError:
                time.sleep(0.5)
        assert body is not None, proc.stdout.read() if proc.poll() is not None else "no answer"
        studies = body["studies"] if isinstance(body, dict) and "studies" in body else body
        assert "dash" in json.dumps(studies)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
