"""Optuna's private names are reached from search/storage/_optuna.py alone (its canaries:
tests/unit/test_optuna_door.py). Every other module of search/ and trainer/ is scanned (its syntax tree)
for them; a hit names the file, the line and the name."""

from __future__ import annotations

import ast
import os
import textwrap
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial

REPO = Path(__file__).resolve().parents[2]
DOOR = "search/storage/_optuna.py"
SCANNED = ("search", "trainer")

ALWAYS = frozenset(
    {
        "_storage",
        "_study_id",
        "_trial_id",
        "_backend",
        "_studies",
        "_thread_local",
        "_get_trials",
        "_sample",
        "_sample_relative",
        "_CachedStorage",
        "_get_stale_trial_ids",
        "_read_trials_from_remote_storage",
        "_create_new_trial",
        "_set_trial_param",
        "_get_best_trial_id",
        "_rdb",
        "_cached_storage",
        "_heartbeat",
        "_constant_liar",
        "_add_trials_to_cache",
        "_get_cached_trial",
    }
)
"""Private Optuna names that are flagged wherever they appear, even where a file defines the same name."""


def _optuna_modules() -> set[str]:
    """The names of Optuna's private modules and packages (`_rdb`, `_cached_storage`, `_tpe`, ...)."""
    root = Path(optuna.__file__).parent
    names = set()
    for _folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in dirs + [f[:-3] for f in files if f.endswith(".py")]:
            if name.startswith("_") and not name.startswith("__"):
                names.add(name)
    return names


def _optuna_attributes() -> set[str]:
    """Private names of Optuna's objects: what its public modules hold, the attributes and methods of their
    classes, and the instance attributes of a study, a trial, storages and samplers."""
    names: set[str] = set(ALWAYS)
    modules = [
        optuna,
        optuna.storages,
        optuna.samplers,
        optuna.pruners,
        optuna.trial,
        optuna.study,
        optuna.distributions,
        optuna.artifacts,
        optuna.exceptions,
    ]
    classes = [optuna.storages._CachedStorage]
    for module in modules:
        for name, value in vars(module).items():
            if name.startswith("_") and not name.startswith("__") and callable(value):
                names.add(name)
            if isinstance(value, type) and value.__module__.startswith("optuna"):
                classes.append(value)
    for cls in classes:
        names |= {n for n in dir(cls) if n.startswith("_") and not n.startswith("__")}
    study = optuna.create_study(sampler=optuna.samplers.TPESampler())
    trial = study.ask()
    study.tell(trial, 1.0)
    for obj in (study, trial, study.trials[0], study.sampler, study.pruner, optuna.storages.InMemoryStorage()):
        names |= {n for n in vars(obj) if n.startswith("_") and not n.startswith("__")}
    return names


OPTUNA_MODULES = _optuna_modules()
OPTUNA_NAMES = _optuna_attributes()


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _own_names(tree: ast.AST) -> set[str]:
    """Names a file defines itself (functions, classes, variables, `self.x = ...`): its own `_lock` is not
    Optuna's (except the names in ALWAYS)."""
    own = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            own.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            own.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            own.add(node.attr)
        elif isinstance(node, ast.arg):
            own.add(node.arg)
    return own - ALWAYS


def _dotted(node: ast.AST) -> list[str]:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return parts[::-1]


def private_reaches(source: str, filename: str = "<source>") -> list[str]:
    """Each use of a private Optuna name in `source`, as "file:line: what"."""
    tree = ast.parse(source, filename)
    own = _own_names(tree)
    optuna_aliases = {"optuna"}
    hits: list[tuple[int, str]] = []

    def flag(node: ast.AST, what: str) -> None:
        hits.append((getattr(node, "lineno", 0), what))

    def optunas(name: str) -> bool:
        return name in ALWAYS or (name in OPTUNA_NAMES and name not in own)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "optuna":
                    optuna_aliases.add((alias.asname or alias.name).split(".")[0])
                    if any(_private(p) for p in alias.name.split(".")):
                        flag(node, f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "optuna":
            if any(_private(p) for p in node.module.split(".")):
                flag(node, f"from {node.module} import ...")
            for alias in node.names:
                if _private(alias.name):
                    flag(node, f"from {node.module} import {alias.name}")
        elif isinstance(node, ast.Attribute):
            chain = _dotted(node)
            if (
                chain
                and chain[0] in optuna_aliases
                and any(_private(p) for p in chain[1:])
                and node.attr == chain[-1]
                and _private(node.attr)
            ):
                flag(node, ".".join(chain))
            elif optunas(node.attr) or (chain and node.attr in OPTUNA_MODULES and chain[0] in optuna_aliases):
                flag(node, f".{node.attr}")
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
                    item.name in ALWAYS or item.name in OPTUNA_NAMES
                ):
                    flag(item, f"def {item.name} (overrides Optuna's private method)")
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and optunas(node.id):
            flag(node, node.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and optunas(node.value):
            flag(node, repr(node.value))
    return [f"{filename}:{line}: {what}" for line, what in sorted(set(hits))]


def _scanned_files() -> list[Path]:
    files = [p for top in SCANNED for p in sorted((REPO / top).rglob("*.py"))]
    return [p for p in files if p.relative_to(REPO).as_posix() != DOOR and "__pycache__" not in p.parts]


def test_no_private_optuna_name_outside_the_door() -> None:
    files = _scanned_files()
    assert len(files) > 20, files  # the scan really sees the code base
    hits = [h for path in files for h in private_reaches(path.read_text(), path.relative_to(REPO).as_posix())]
    assert not hits, (
        "Optuna's private names outside " + DOOR + " (add a named function there, with a canary "
        "in tests/unit/test_optuna_door.py, and call it):\n" + "\n".join(hits)
    )


PLANTED = {
    "study._storage": "def f(study):\n    return study._storage\n",
    "study._study_id": "def f(study):\n    return study._study_id\n",
    "trial._trial_id": "def f(trial):\n    return {t._trial_id for t in trial}\n",
    "cache._backend": "def f(s):\n    return s._backend.url\n",
    "cache._studies": "def f(s):\n    return getattr(s, '_studies', {})\n",
    "private module import": "from optuna.storages._rdb import models\n",
    "private module import inside a function": "def f():\n    from optuna.storages._rdb import models\n",
    "private class import": "from optuna.storages import _CachedStorage\n",
    "private class through the package": "import optuna\nX = optuna.storages._CachedStorage\n",
    "aliased optuna": "import optuna as o\nX = o.storages._rdb.models\n",
    "import of a private module": "import optuna.storages._heartbeat\n",
    "override of _sample": "import optuna\nclass T(optuna.samplers.TPESampler):\n"
    "    def _sample(self, study, trial, space):\n        return {}\n",
    "override of _get_stale_trial_ids": "class S(Base):\n    def _get_stale_trial_ids(self, study_id):\n        "
    "return []\n",
    "study._get_trials": "def f(study):\n    return study._get_trials(deepcopy=False)\n",
    "getattr by name": "def f(study):\n    return getattr(study, '_storage')\n",
    "own class with the same attribute": "class Mine:\n    def __init__(self):\n        self._storage = 1\n"
    "def f(study):\n    return study._storage\n",
    "another private method of a study": "def f(study):\n    return study._is_multi_objective()\n",
    "a private method of a trial": "def f(trial):\n    return trial._suggest('x', None)\n",
}


@pytest.mark.parametrize("source", PLANTED.values(), ids=PLANTED.keys())
def test_the_scan_catches_a_planted_reach(source: str) -> None:
    assert private_reaches(source), f"the scan missed:\n{source}"


def test_the_scan_leaves_a_files_own_private_names_alone() -> None:
    source = textwrap.dedent("""
        import threading
        import optuna

        class Progress:
            def __init__(self):
                self._lock = threading.Lock()

            def tick(self):
                with self._lock:
                    return getattr(self, "_lock")

        def _number(x):
            return _number(x - 1) if x else 0

        def f(study: optuna.Study):
            return study.trials, optuna.storages.RDBStorage, study.study_name
    """)
    assert private_reaches(source) == []


def test_the_door_itself_is_what_the_scan_would_flag() -> None:
    """The door holds the reaches (so a scan that found none there would be blind)."""
    hits = private_reaches((REPO / DOOR).read_text(), DOOR)
    for name in (
        "_storage",
        "_study_id",
        "_trial_id",
        "_CachedStorage",
        "_rdb",
        "_sample",
        "_get_trials",
        "_get_stale_trial_ids",
        "_read_trials_from_remote_storage",
    ):
        assert any(name in h for h in hits), (name, hits)
    assert FrozenTrial.__name__ and len(OPTUNA_NAMES) > 100 and "_rdb" in OPTUNA_MODULES
