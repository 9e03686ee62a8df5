"""Schema compatibility checks behind the documented versioning policy.

Policy (metrics snapshots and bench reports alike): adding a field keeps
``meta.schema_version``; renaming, removing or retyping a field, making a required
field optional, or dropping an enum value bumps it. ``incompatibilities(old, new)``
lists every breaking difference between two JSON Schemas; the golden tests compare
the shipped schema with the committed one of the same version.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FieldShape", "flatten_schema", "incompatibilities", "schema_version_of"]


@dataclass(slots=True)
class FieldShape:
    types: frozenset[str]
    required: bool
    enum: frozenset[str] | None = None
    const: Any = None
    children: set[str] = field(default_factory=set)


def _resolve(root: Mapping[str, Any], node: Mapping[str, Any]) -> dict[str, Any]:
    """Inline a local ``$ref`` (``#/$defs/...``), letting sibling keywords extend it."""
    if "$ref" not in node:
        return dict(node)
    ref = str(node["$ref"])
    if not ref.startswith("#/"):
        raise ValueError(f"only local $ref is supported, got {ref}")
    target: Any = root
    for part in ref[2:].split("/"):
        target = target[part]
    merged = _resolve(root, target)
    for key, value in node.items():
        if key == "$ref":
            continue
        if key == "properties":
            merged["properties"] = {**merged.get("properties", {}), **value}
        elif key == "required":
            merged["required"] = sorted({*merged.get("required", []), *value})
        else:
            merged[key] = value
    return merged


def _types(node: Mapping[str, Any]) -> frozenset[str]:
    kind = node.get("type")
    if kind is None:
        return frozenset({"any"})
    kinds = {kind} if isinstance(kind, str) else set(kind)
    if "number" in kinds:
        kinds.discard("integer")  # integer is a subset of number
    return frozenset(kinds)


def flatten_schema(schema: Mapping[str, Any]) -> dict[str, FieldShape]:
    """Path -> shape for every field: ``a.b`` properties, ``a.*`` map values, ``a[]`` items."""
    out: dict[str, FieldShape] = {}

    def walk(node_in: Mapping[str, Any], path: str, required: bool) -> None:
        node = _resolve(schema, node_in)
        enum = node.get("enum")
        shape = FieldShape(
            types=_types(node),
            required=required,
            enum=frozenset(str(v) for v in enum) if isinstance(enum, list) else None,
            const=node.get("const"),
        )
        out[path] = shape
        needed = set(node.get("required", []))
        for name, child in (node.get("properties") or {}).items():
            child_path = f"{path}.{name}" if path else name
            shape.children.add(name)
            walk(child, child_path, name in needed)
        extra = node.get("additionalProperties")
        if isinstance(extra, Mapping):
            walk(extra, f"{path}.*" if path else "*", False)
        items = node.get("items")
        if isinstance(items, Mapping):
            walk(items, f"{path}[]", True)

    walk(schema, "", True)
    return out


def schema_version_of(schema: Mapping[str, Any]) -> int | None:
    """The ``const`` of ``meta.schema_version`` in a schema, if it pins one."""
    shape = flatten_schema(schema).get("meta.schema_version")
    if shape is None or not isinstance(shape.const, int):
        return None
    return int(shape.const)


def incompatibilities(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Breaking changes from ``old`` to ``new`` (empty when ``new`` only adds)."""
    before = flatten_schema(old)
    after = flatten_schema(new)
    problems: list[str] = []
    for path, was in sorted(before.items()):
        label = path or "<root>"
        if path == "meta.schema_version":
            continue
        now = after.get(path)
        if now is None:
            problems.append(f"{label}: removed or renamed")
            continue
        if now.types != was.types:
            problems.append(
                f"{label}: type changed from {sorted(was.types)} to {sorted(now.types)}"
            )
        if was.required and not now.required:
            problems.append(f"{label}: was required, now optional")
        if was.enum is not None:
            if now.enum is None:
                pass  # the value set only grew
            elif missing := was.enum - now.enum:
                problems.append(f"{label}: enum values removed: {sorted(missing)}")
        if was.const is not None and now.const != was.const:
            problems.append(f"{label}: constant changed from {was.const!r} to {now.const!r}")
    return problems
