"""Ray's private names stay behind one door (search/_ray/_internals.py), and trainer/ never imports Ray.

Every .py under search/ and trainer/ is read: a private Ray name anywhere else (`ray._private`,
`ray._raylet`, `_system_config`, Tune's `DEFAULT_ENV_VARS`, the `RAY_gcs_server_port_wait_time_s`
knob, `from ray... import _x`, or an attribute `._x` on a Ray module) fails naming file:line.
The scanner is tested on planted examples first, so a scanner that finds nothing cannot pass.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOOR = REPO / "search" / "_ray" / "_internals.py"
SCANNED = ("search", "trainer")

PRIVATE_WORDS = re.compile(r"_system_config|DEFAULT_ENV_VARS|RAY_gcs_server_port_wait_time_s")
PRIVATE_PATH = re.compile(r"(?<![\w.])ray(?:\.[A-Za-z]\w*)*\._[A-Za-z]\w*")
"""`ray._private`, `ray._raylet`, `ray.tune.execution._x`: a dotted Ray path with a part that starts with `_`."""


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _ray_module(module: str | None) -> bool:
    return module is not None and (module == "ray" or module.startswith("ray."))


def private_ray_names(path: Path) -> list[str]:
    """`file:line: what` for every private Ray name in `path`."""
    text = path.read_text()
    found: set[tuple[int, str]] = set()
    for number, line in enumerate(text.splitlines(), 1):
        for match in (*PRIVATE_WORDS.finditer(line), *PRIVATE_PATH.finditer(line)):
            found.add((number, match.group(0)))
    tree = ast.parse(text, filename=str(path))
    ray_names: set[str] = set()  # local names bound to a Ray module or a name imported from one
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _ray_module(alias.name):
                    ray_names.add(alias.asname or alias.name.split(".")[0])
                    if any(_private(part) for part in alias.name.split(".")):
                        found.add((node.lineno, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom) and _ray_module(node.module):
            for alias in node.names:
                ray_names.add(alias.asname or alias.name)
                if _private(alias.name) or any(_private(part) for part in (node.module or "").split(".")):
                    found.add((getattr(alias, "lineno", node.lineno), f"from {node.module} import {alias.name}"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in ray_names:
                found.add((node.lineno, f"{ast.unparse(node)}"))
    return [f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}:{n}: {what}" for n, what in sorted(found)]


def ray_imports(path: Path) -> list[str]:
    """`file:line: import` for every import of Ray in `path` (at any depth: inside functions too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom) and node.level == 0
            else []
        )
        found += [f"{path.relative_to(REPO)}:{node.lineno}: imports {n}" for n in names if _ray_module(n)]
    return found


def _sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (REPO / folder).rglob("*.py"))


PLANTED = """
import ray._private.node
import ray.tune.execution.class_cache as cache
from ray import _raylet
from ray.tune.execution.class_cache import (
    DEFAULT_ENV_VARS as defaults,
    _ActorClassCache,
)
import ray
from ray import tune

cache.DEFAULT_ENV_VARS.pop("X")
ray.init(_system_config={})
tune.something._hidden
x = ray.__version__
y = self.started_ray._fine
"""


def test_the_scanner_catches_planted_private_names(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text(PLANTED)
    lines = {int(hit.split(":")[1]) for hit in private_ray_names(planted)}
    assert lines == {2, 4, 6, 7, 12, 13, 14}  # not `ray.__version__`, nor an attribute of our own
    assert private_ray_names(DOOR), "the door itself holds the reaches, so the scanner must see them there"


def test_the_ray_import_check_catches_a_planted_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    planted = tmp_path / "job.py"
    planted.write_text("import os\n\ndef f():\n    from ray import tune\n    import ray.train\n")
    assert ray_imports(planted) == ["job.py:4: imports ray", "job.py:5: imports ray.train"]


def test_private_ray_names_appear_only_in_the_door() -> None:
    hits = [hit for path in _sources(*SCANNED) if path != DOOR for hit in private_ray_names(path)]
    assert hits == [], "private Ray names outside search/_ray/_internals.py:\n" + "\n".join(hits)


def test_trainer_never_imports_ray() -> None:
    hits = [hit for path in _sources("trainer") for hit in ray_imports(path)]
    assert hits == [], "trainer/ knows nothing of Ray:\n" + "\n".join(hits)
