"""Reading YAML configs safely: PyYAML's safe loader with limits.

``load_yaml`` refuses, with the line, what ``yaml.safe_load`` would accept and then regret:
a key given twice (YAML keeps the last silently), nesting past ``YAML_MAX_DEPTH`` (the
composer recurses until Python's stack runs out) and aliases that expand past
``YAML_MAX_VALUES`` values (a few hundred bytes can expand to billions: issue 14).
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["YAML_MAX_DEPTH", "YAML_MAX_VALUES", "YamlRefused", "load_yaml"]

# A config is a few dozen flat keys; these bounds are far above that and far below what
# exhausts memory: an alias "bomb" of a few hundred bytes expands to billions of values and
# used to run until killed, and deep nesting overflowed the parser's stack (issue 14).
YAML_MAX_VALUES = 100_000  # scalars + containers once every alias is expanded
YAML_MAX_DEPTH = 64


class YamlRefused(ValueError):
    """A YAML document that parses but is refused (duplicate key, too deep, alias bomb)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing duplicate keys, deep nesting and alias bombs."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        # Nodes compose recursively, so the depth is checked before Python's stack runs out.
        self._depth += 1
        try:
            if self._depth > YAML_MAX_DEPTH:
                raise YamlRefused(self.peek_event().start_mark.line + 1,
                                  f"nested deeper than {YAML_MAX_DEPTH} levels; a config is "
                                  "flat key: value pairs")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_mapping_node(self, anchor: Any) -> Any:
        # Checked on the composed node, before `<<:` merges are flattened into it: a merged
        # key that a mapping overrides is YAML's documented way to override, not a duplicate.
        node = super().compose_mapping_node(anchor)
        first: dict[Any, int] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            line = key.start_mark.line + 1
            if (key.tag, key.value) in first:
                raise YamlRefused(line, f"duplicate key '{key.value}' (first set on line "
                                  f"{first[key.tag, key.value]}); YAML would keep only the "
                                  "last one, so remove one of them")
            first[key.tag, key.value] = line
        return node

    def compose_document(self) -> Any:
        node = super().compose_document()
        _check_expansion(node)
        return node


def _check_expansion(root: Any) -> None:
    """Refuse a node graph whose aliases expand past ``YAML_MAX_VALUES`` values (or loop)."""
    size: dict[int, int] = {}  # id(node) -> values once expanded
    stack: list[tuple[Any, bool]] = [(root, False)]
    open_: set[int] = set()  # on the current path: meeting one again is a recursive alias
    while stack:
        node, done = stack.pop()
        if id(node) in size:
            continue
        kids = [x for pair in node.value for x in pair] if isinstance(
            node, yaml.MappingNode) else node.value if isinstance(node, yaml.SequenceNode) else []
        if done:
            open_.discard(id(node))
            size[id(node)] = 1 + sum(size[id(k)] for k in kids)
            if size[id(node)] > YAML_MAX_VALUES:
                raise YamlRefused(node.start_mark.line + 1,
                                  f"aliases expand to more than {YAML_MAX_VALUES} values (an "
                                  "alias bomb?); write the values out instead")
            continue
        if id(node) in open_:
            raise YamlRefused(node.start_mark.line + 1, "an alias refers to itself; a config "
                              "value must be finite")
        open_.add(id(node))
        stack.append((node, True))
        stack.extend((k, False) for k in kids if id(k) not in size)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` with ``_ConfigLoader``'s limits: raises YAMLError or YamlRefused."""
    loader = _ConfigLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
