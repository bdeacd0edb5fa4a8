from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

import tiny

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SFTUNE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.make_model(tmp_path_factory.mktemp("tiny-bert"), "bert")


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.make_model(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2")


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.make_model(tmp_path_factory.mktemp("tiny-llama"), "llama")


import _servers  # noqa: E402

STORAGE_MODES = ["sqlite", "postgres"]
"""Every storage contract test runs on each (like optuna/testing/storages.py)."""


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server (pgserver wheel, unix socket) for the whole session; skipped with the
    reason if it cannot start."""
    server = _servers.start_postgres()
    if isinstance(server, str):
        pytest.skip(server)
    yield server
    server.stop()


@pytest.fixture(params=STORAGE_MODES)
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLAlchemy URL of an empty study storage: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    return request.getfixturevalue("postgres_server").new_database()


@pytest.fixture(scope="module")
def ray_cluster():
    """A real local Ray cluster of 2 CPUs for one test module (started and shut down by the tests)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()
