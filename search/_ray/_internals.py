"""The one door to Ray's private names: each reach is one function here, with a canary test beside it.

Nothing else in search/ (or trainer/) may name a private part of Ray (tests/unit/test_private_ray_names.py
fails naming the file and line). The reaches, all bounded by the Ray version in pyproject.toml and
checked by the canaries in tests/unit/test_ray_door.py:

- `init_with_preload`: `ray.init(_system_config={"preload_python_modules": [...]})`, a Ray system
  config "for testing purposes only": every worker Ray starts imports those modules before it takes work.
- `drop_tune_default_env_var`: Tune's module-level `ray.tune.execution.class_cache.DEFAULT_ENV_VARS`,
  the environment variables Tune gives each trial actor as a runtime_env of its own.
- `few_join_tries`: `RAY_gcs_server_port_wait_time_s`, read from the environment by `ray._private.node`
  (not a documented setting): how long `ray.init(address=...)` keeps trying a GCS that refuses it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

JOIN_WAIT_ENV = "RAY_gcs_server_port_wait_time_s"


def init_with_preload(preload: Sequence[str], **init: Any) -> Any:
    """`ray.init(**init)`; with `preload`, every worker Ray starts imports those modules before any work.

    Reach: `_system_config={"preload_python_modules": preload}` (empty without `preload`, as before).
    """
    import ray

    system = {"preload_python_modules": list(preload)} if preload else {}
    return ray.init(**init, _system_config=system)


def drop_tune_default_env_var(name: str) -> bool:
    """Remove `name` from the environment Tune gives every trial actor; False where this Ray has no such table.

    Reach: `ray.tune.execution.class_cache.DEFAULT_ENV_VARS` (module level, PL_DISABLE_FORK=1 in 2.60).
    Ray never places an actor with a runtime_env of its own on an idle worker started without one, so
    with it each first trial starts a fresh, cold process; the caller sets the variable in this
    process instead, before the cluster starts, and the workers inherit it.
    """
    try:
        from ray.tune.execution import class_cache

        class_cache.DEFAULT_ENV_VARS.pop(name, None)
    except (ImportError, AttributeError):  # another Ray layout: trials start fresh workers, as before
        return False
    return True


@contextmanager
def few_join_tries(seconds: int) -> Iterator[None]:
    """While it is open, `ray.init(address=...)` gives up on a GCS that refuses this driver after `seconds`.

    Reach: the environment variable `RAY_gcs_server_port_wait_time_s` (read by `ray._private.node`;
    Ray's default, 20 s, makes a missing or wrong token cost 20 s). A value set by the user is kept.
    """
    mine = JOIN_WAIT_ENV not in os.environ
    os.environ.setdefault(JOIN_WAIT_ENV, str(seconds))
    try:
        yield
    finally:
        if mine:
            os.environ.pop(JOIN_WAIT_ENV, None)
