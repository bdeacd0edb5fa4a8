"""The base config a study was created with: its record (with data and local models by content) and
what differs from it now."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import optuna

from search.config import StudyConfig
from trainer import ADDED_DEFAULTS

BASE_ATTR = "base_config"
"""Study user attribute: {"config": resolved base, "compared": what is compared, "fingerprint": sha256}."""
_EXCLUDED = ("train.threads", "output_dir")
_hash_cache: dict[tuple[str, int, int], str] = {}


def _file_hash(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _hash_cache:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _hash_cache[key] = h.hexdigest()
    return _hash_cache[key]


def _content_id(value: str, *, model: bool = False) -> str:
    """A data file (or folder) by its content; a local model folder by its config and file sizes."""
    p = Path(value)
    if not p.exists():
        return value
    h = hashlib.sha256()
    files = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]
    for f in files:
        rel = f.relative_to(p).as_posix() if p.is_dir() else ""
        if model and f.name != "config.json":
            h.update(f"{rel}:{f.stat().st_size}\n".encode())
        else:
            h.update(f"{rel}:{_file_hash(f)}\n".encode())
    return ("model" if model else "content") + ":sha256:" + h.hexdigest()[:16]


def _compared(base: dict[str, Any]) -> dict[str, Any]:
    """The base config as compared between runs: data and local models by content, threads and
    output_dir left out, so another machine or folder with the same files matches."""
    data = copy.deepcopy(base)
    for key in _EXCLUDED:
        parts = key.split(".")
        node = data
        for part in parts[:-1]:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(parts[-1], None)
    for key in ("train", "validation"):
        value = (data.get("data") or {}).get(key)
        if isinstance(value, str):
            data["data"][key] = _content_id(value)
    if isinstance(data.get("model"), str) and Path(data["model"]).is_dir():
        data["model"] = _content_id(data["model"], model=True)
    return data


def base_record(cfg: StudyConfig) -> dict[str, Any]:
    """What a study stores as `BASE_ATTR`: the resolved base config, what of it is compared, its fingerprint."""
    compared = _compared(cfg.base)
    text = json.dumps(compared, sort_keys=True, default=str)
    return {"config": cfg.base, "compared": compared, "fingerprint": hashlib.sha256(text.encode()).hexdigest()}


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: data}


def base_changes(study: optuna.Study, cfg: StudyConfig) -> list[str]:
    """What differs between the base config stored on the study and this run's (empty: none, or none stored)."""
    stored = study.user_attrs.get(BASE_ATTR)
    if not isinstance(stored, dict) or "fingerprint" not in stored:
        return []
    if cfg.space.fixed:  # compare as a study made before `fixed:` recorded it (one-choice params, then)
        from search.study import stored_distributions  # search.study imports this package: import on use

        cfg = cfg.as_stored_by(stored_distributions(study))
    now = base_record(cfg)
    if now["fingerprint"] == stored["fingerprint"]:
        return []
    old, new = _flat(stored.get("compared", {})), _flat(now["compared"])
    was, becomes = _flat(stored.get("config", {})), _flat(cfg.base)
    changes, skipped = [], 0
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key):
            continue
        if key not in old and key in ADDED_DEFAULTS and new.get(key) == ADDED_DEFAULTS[key]:
            skipped += 1  # a field a newer sftune added, at its default: no change by the user
            continue
        by_content = str(old.get(key, "")).startswith(("content:", "model:"))
        if key in ("data.train", "data.validation", "model") and by_content:
            changes.append(
                f"{key} ({becomes.get(key)}): its content differs from the file the study was created "
                f"with ({was.get(key)})"
            )
        else:
            changes.append(f"{key}: {was.get(key, old.get(key))!r} -> {becomes.get(key, new.get(key))!r}")
    return changes or ([] if skipped else ["the base config differs (fingerprint)"])
