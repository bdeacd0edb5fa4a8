"""The spaces and studies that ship with sftune, found by name (`space: lora-classification`, `sftune run quickstart`).

In a wheel they are package data under `search/_recipes/{spaces,studies}`; in a source checkout
(or an editable install) they are the repository's `spaces/` and `studies/` folders.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def recipes_root() -> Path:
    """The folder holding `spaces/` and `studies/`: installed package data, else the source checkout."""
    installed = _HERE / "_recipes"
    return installed if installed.is_dir() else _HERE.parent


def _named(kind: str) -> dict[str, Path]:
    folder = recipes_root() / kind
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))} if folder.is_dir() else {}


def shipped_spaces() -> dict[str, Path]:
    """Shipped search spaces by name."""
    return _named("spaces")


def shipped_studies() -> dict[str, Path]:
    """Shipped study files by name (the train configs beside them, `*-train.yaml`, are not studies)."""
    return {k: v for k, v in _named("studies").items() if not k.endswith("-train")}


def looks_like_name(value: str) -> bool:
    """`quickstart` or `lora-classification`, not `studies/x.yaml` or `./x`."""
    return bool(value) and "/" not in value and "\\" not in value and not value.endswith((".yaml", ".yml"))


def is_shipped(path: Path) -> bool:
    """True for a file inside the shipped recipes (whose outputs must go where the user runs)."""
    root = recipes_root().resolve()
    try:
        rel = path.resolve().relative_to(root)
    except ValueError:
        return False
    return rel.parts[:1] in (("spaces",), ("studies",))


def description(path: Path) -> str:
    """A recipe's first comment line, which says what it is for."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""
