"""YAML read strictly: a key given twice in one mapping is an error naming the key and both lines."""

from __future__ import annotations

from typing import Any

import yaml

from trainer.schema import ConfigError, Problem


class _Loader(yaml.SafeLoader):
    """PyYAML's SafeLoader; duplicates are found on the composed node tree before constructing."""


def _key_text(node: yaml.Node) -> str:
    return str(node.value) if isinstance(node, yaml.ScalarNode) else f"<{node.tag}>"


def _duplicates(node: yaml.Node, path: str, found: list[tuple[str, int, int]], seen_nodes: set[int]) -> None:
    if id(node) in seen_nodes:  # an alias to a node already walked
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = _key_text(key_node)
            dotted = f"{path}.{key}" if path else key
            line = key_node.start_mark.line + 1
            if key != "<<" and key in first_line:
                found.append((dotted, first_line[key], line))
            else:
                first_line.setdefault(key, line)
            _duplicates(value_node, dotted, found, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _duplicates(item, f"{path}[{i}]", found, seen_nodes)


def load_yaml(text: str, source: str) -> Any:
    """Parse one YAML document; raise ConfigError for invalid YAML and for every duplicated key."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        found: list[tuple[str, int, int]] = []
        _duplicates(node, "", found, set())
        if found:
            raise ConfigError(
                [
                    Problem(
                        source,
                        key,
                        f"given twice, on lines {a} and {b}: YAML would keep only the last one silently; keep one",
                    )
                    for key, a, b in found
                ]
            )
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError(Problem(source, "", f"not valid YAML: {exc}")) from None
    finally:
        loader.dispose()
