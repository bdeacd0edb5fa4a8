"""Canaries of the Ray door (search/_ray/_internals.py): each private reach still finds what it reaches
in the installed Ray, and does to it what the door says. A Ray release that moves one fails here, not in a
slow trial; the reach that needs a running cluster (preloaded workers) is in tests/integration/test_cluster.py.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import pytest

from search._ray import _internals


def test_tune_trial_actors_carry_no_runtime_env_of_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ray places an actor that has a runtime_env only on a worker started for it, never on the idle
    # workers warmed at cluster start; Tune's default one must be gone for those workers to be used.
    from ray.tune.execution.class_cache import _ActorClassCache
    from ray.tune.trainable import wrap_function

    from search._ray.cluster import warm_workers
    from search._ray.worker import trainable

    monkeypatch.setenv("SFTUNE_WARM", "")
    monkeypatch.setenv("PL_DISABLE_FORK", "1")
    warm_workers({})
    remote = _ActorClassCache().get(wrap_function(trainable))
    env = (remote._default_options.get("runtime_env") or {}).get("env_vars") or {}
    assert env == {}
    assert _internals.drop_tune_default_env_var("PL_DISABLE_FORK") is True  # the table is where the door looks


def test_ray_init_still_takes_a_system_config_and_the_door_passes_the_preload_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ray

    assert "_system_config" in inspect.getsource(inspect.unwrap(ray.init))
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    _internals.init_with_preload(["search._ray.preload"], address="local", num_cpus=1)
    _internals.init_with_preload([], address="local", num_cpus=1)
    assert calls == [
        {"address": "local", "num_cpus": 1, "_system_config": {"preload_python_modules": ["search._ray.preload"]}},
        {"address": "local", "num_cpus": 1, "_system_config": {}},
    ]


def test_joining_reads_the_gcs_wait_from_the_environment_and_the_door_sets_it_for_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ray._private.node

    assert _internals.JOIN_WAIT_ENV in inspect.getsource(ray._private.node)
    monkeypatch.delenv(_internals.JOIN_WAIT_ENV, raising=False)
    with _internals.few_join_tries(5):
        assert os.environ[_internals.JOIN_WAIT_ENV] == "5"
    assert _internals.JOIN_WAIT_ENV not in os.environ
    monkeypatch.setenv(_internals.JOIN_WAIT_ENV, "30")  # the user's own value is kept
    with _internals.few_join_tries(5):
        assert os.environ[_internals.JOIN_WAIT_ENV] == "30"
    assert os.environ[_internals.JOIN_WAIT_ENV] == "30"
