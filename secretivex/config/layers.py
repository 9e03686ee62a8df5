"""Config layers: nested data plus where each key came from.

A layer is what one source contributes: a YAML file, one ``SECRETIVEX_*`` variable,
a CLI flag, a profile, the built-in defaults. Every key path in a layer has an
``Origin`` (source and, for files, line and column), so the merged result can say
where each effective value was set and where each problem is.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = [
    "KeyPath",
    "Layer",
    "LayerReadError",
    "Origin",
    "format_key_path",
    "layer_from_value",
    "merge_layers",
    "parse_yaml_layer",
]

KeyPath = tuple[str | int, ...]

_MAX_DEPTH = 32
_MERGE_TAG = "tag:yaml.org,2002:merge"
_PLAIN_TAGS = frozenset({"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"})


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a value was set. ``source`` is a file path as given, ``env:NAME``,
    ``cli:--flag``, ``profile:NAME`` or ``default``."""

    source: str
    line: int | None = None
    column: int | None = None

    def label(self) -> str:
        return self.source if self.line is None else f"{self.source}:{self.line}"


@dataclass(slots=True)
class Layer:
    """One source's contribution: a mapping of sections, and origins by key path."""

    source: str
    data: dict[str, Any]
    origins: dict[KeyPath, Origin] = field(default_factory=dict)


class LayerReadError(Exception):
    """A source could not be turned into a layer; carries a location for the message."""

    def __init__(
        self, message: str, line: int | None = None, column: int | None = None, key_path: str = ""
    ) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column
        self.key_path = key_path


def format_key_path(path: KeyPath) -> str:
    """``("stores", 1, "pin_env")`` -> ``stores[1].pin_env``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


# --------------------------------------------------------------------------- YAML


def parse_yaml_layer(text: str, source: str) -> Layer:
    """Parse one YAML document into a layer, recording the line of every key and item.

    Raises ``LayerReadError`` for syntax errors (with line and column), duplicate keys
    and a top level that is not a mapping.
    """
    loader = yaml.SafeLoader(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            raise _yaml_error(exc) from None
        except yaml.YAMLError as exc:  # pragma: no cover - PyYAML marks nearly everything
            raise LayerReadError(f"YAML error: {exc}") from None
        layer = Layer(source=source, data={})
        if root is None:
            return layer
        if not isinstance(root, MappingNode):
            raise LayerReadError(
                "the top level must be a mapping of sections (agent:, stores:, policy:, ...)",
                line=root.start_mark.line + 1,
                column=root.start_mark.column + 1,
            )
        builder = _Builder(loader, source, layer.origins)
        try:
            data = builder.build(root, (), 0)
        except yaml.MarkedYAMLError as exc:
            raise _yaml_error(exc) from None
        assert isinstance(data, dict)
        layer.data = data
        return layer
    finally:
        loader.dispose()


def _yaml_error(exc: yaml.MarkedYAMLError) -> LayerReadError:
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or "invalid YAML"
    if exc.context and exc.context.startswith("expected"):
        text = f"{exc.context}, {problem}"  # "expected a single document ..., but found ..."
    elif exc.context:
        text = f"{problem} ({exc.context})"
    else:
        text = problem
    return LayerReadError(
        f"YAML syntax error: {text}",
        line=mark.line + 1 if mark else None,
        column=mark.column + 1 if mark else None,
    )


class _Builder:
    def __init__(
        self, loader: yaml.SafeLoader, source: str, origins: dict[KeyPath, Origin]
    ) -> None:
        self.loader = loader
        self.source = source
        self.origins = origins

    def _origin(self, node: Node) -> Origin:
        return Origin(self.source, node.start_mark.line + 1, node.start_mark.column + 1)

    def build(self, node: Node, path: KeyPath, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise LayerReadError(
                "nesting is too deep (a recursive YAML alias?)",
                line=node.start_mark.line + 1,
                column=node.start_mark.column + 1,
            )
        if isinstance(node, MappingNode | SequenceNode) and node.tag not in _PLAIN_TAGS:
            raise LayerReadError(
                f"unsupported YAML tag {node.tag!r}: config files hold plain mappings, "
                "lists and scalars",
                line=node.start_mark.line + 1,
                column=node.start_mark.column + 1,
                key_path=format_key_path(path),
            )
        if isinstance(node, MappingNode):
            return self._mapping(node, path, depth)
        if isinstance(node, SequenceNode):
            items = []
            for index, item in enumerate(node.value):
                self.origins[(*path, index)] = self._origin(item)
                items.append(self.build(item, (*path, index), depth + 1))
            return items
        assert isinstance(node, ScalarNode)
        return self.loader.construct_object(node, deep=True)

    def _mapping(self, node: MappingNode, path: KeyPath, depth: int) -> dict[str, Any]:
        own: dict[str, Node] = {}
        for key_node, _value in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            if not isinstance(key_node, ScalarNode):
                raise LayerReadError(
                    "keys must be plain names, not lists or mappings",
                    line=key_node.start_mark.line + 1,
                    column=key_node.start_mark.column + 1,
                    key_path=format_key_path(path),
                )
            key = str(key_node.value)
            if key in own:
                first = own[key].start_mark.line + 1
                raise LayerReadError(
                    f"duplicate key {key!r} (first set on line {first}); YAML would silently "
                    "keep only the last one",
                    line=key_node.start_mark.line + 1,
                    column=key_node.start_mark.column + 1,
                    key_path=format_key_path((*path, key)),
                )
            own[key] = key_node
        # Resolve "<<: *anchor" merge keys; merged entries come first, own keys override.
        self.loader.flatten_mapping(node)
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            child = (*path, key)
            self._forget(child)
            self.origins[child] = self._origin(key_node)
            out[key] = self.build(value_node, child, depth + 1)
        return out

    def _forget(self, path: KeyPath) -> None:
        for key in [k for k in self.origins if k[: len(path)] == path]:
            del self.origins[key]


# --------------------------------------------------------------------------- values


def layer_from_value(path: KeyPath, value: Any, origin: Origin) -> Layer:
    """A layer setting one key path (``("agent", "socket")``) to ``value``.

    Every key inside ``value`` (if it is a mapping or list) gets the same origin.
    """
    if not path or not isinstance(path[0], str):
        raise ValueError("a layer path starts with a section name")
    data: dict[str, Any] = {}
    node = data
    for part in path[:-1]:
        child: dict[str, Any] = {}
        node[str(part)] = child
        node = child
    plain = _plain(value)
    node[str(path[-1])] = plain
    layer = Layer(source=origin.source, data=data)
    for index in range(1, len(path) + 1):
        layer.origins[path[:index]] = origin
    for sub in _walk_paths(plain, path):
        layer.origins[sub] = origin
    return layer


def _plain(value: Any) -> Any:
    """Paths to strings, tuples to lists: the shapes YAML would give."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _walk_paths(value: Any, path: KeyPath) -> Iterator[KeyPath]:
    if isinstance(value, dict):
        for key, child in value.items():
            yield (*path, key)
            yield from _walk_paths(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield (*path, index)
            yield from _walk_paths(child, (*path, index))


# --------------------------------------------------------------------------- merging


def merge_layers(layers: list[Layer]) -> tuple[dict[str, Any], dict[KeyPath, Origin]]:
    """Merge layers, lowest first: mappings merge deeply, lists and scalars replace.

    An empty section (``agent:`` with nothing under it, i.e. null over a mapping)
    changes nothing. Returns the merged data and the origin of every key path in it.
    """
    data: dict[str, Any] = {}
    origins: dict[KeyPath, Origin] = {}
    for layer in layers:
        _overlay(data, layer.data, (), origins, layer.origins)
    return data, origins


def _overlay(
    dst: dict[str, Any],
    src: Mapping[str, Any],
    path: KeyPath,
    dst_origins: dict[KeyPath, Origin],
    src_origins: Mapping[KeyPath, Origin],
) -> None:
    for key, value in src.items():
        here = (*path, key)
        current = dst.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            if here in src_origins:
                dst_origins[here] = src_origins[here]
            _overlay(current, value, here, dst_origins, src_origins)
            continue
        if value is None and isinstance(current, dict):
            continue
        for old in [k for k in dst_origins if k[: len(here)] == here]:
            del dst_origins[old]
        dst[key] = copy.deepcopy(value)
        for sub, origin in src_origins.items():
            if sub[: len(here)] == here:
                dst_origins[sub] = origin
