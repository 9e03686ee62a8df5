"""Metrics snapshot compatibility: the shipped schema vs the committed golden one.

Policy (docs/metrics.md): adding a field keeps ``meta.schema_version``; renaming,
removing or retyping one (or making it optional, or dropping an enum value) bumps it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from metrics_compat import incompatibilities, schema_version_of
from test_metrics_recorder import populated

from secretivex.metrics import SCHEMA_VERSION, snapshot_schema

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def golden(version: int) -> dict[str, Any]:
    path = GOLDEN / f"metrics-snapshot.v{version}.schema.json"
    if not path.exists():
        pytest.fail(
            f"schema_version is {version} but {path.name} is missing: copy "
            "secretivex/metrics/snapshot.schema.json there when you bump the version"
        )
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_version_constant_matches_the_schema() -> None:
    assert schema_version_of(snapshot_schema()) == SCHEMA_VERSION


def test_no_incompatible_change_without_a_version_bump() -> None:
    problems = incompatibilities(golden(SCHEMA_VERSION), snapshot_schema())
    assert not problems, (
        "incompatible metrics snapshot change without a schema_version bump:\n  "
        + "\n  ".join(problems)
        + "\nBump SCHEMA_VERSION (and the schema's const) and add a golden for the new version."
    )


def test_generated_snapshot_matches_the_golden_too() -> None:
    """What the recorder writes today is readable by a consumer of the golden schema."""
    validator = jsonschema.Draft202012Validator(golden(SCHEMA_VERSION))
    validator.validate(populated().snapshot("periodic"))


def test_generated_snapshot_has_no_undeclared_fields() -> None:
    # additionalProperties/unevaluatedProperties false: every field is in the schema, so
    # every field is covered by the golden comparison.
    jsonschema.Draft202012Validator(snapshot_schema()).validate(populated().snapshot())
    bad = populated().snapshot()
    bad["connections"]["surprise"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(snapshot_schema()).validate(bad)
    bad = populated().snapshot()
    bad["queue_wait"]["surprise"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(snapshot_schema()).validate(bad)


# -- the checker itself ---------------------------------------------------------------


def mutate(path: list[str], action: str, value: Any = None) -> dict[str, Any]:
    schema = copy.deepcopy(snapshot_schema())
    node = schema
    for part in path[:-1]:
        node = node[part]
    if action == "delete":
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return schema


def test_adding_a_field_is_compatible() -> None:
    new = mutate(["properties", "connections", "properties", "idle"], "set", {"type": "integer"})
    assert incompatibilities(snapshot_schema(), new) == []


def test_adding_an_enum_value_is_compatible() -> None:
    new = mutate(
        ["properties", "meta", "properties", "kind", "enum"],
        "set",
        ["interval", "periodic", "snapshot", "reset", "shutdown"],
    )
    assert incompatibilities(snapshot_schema(), new) == []


def test_removing_a_field_is_incompatible() -> None:
    new = mutate(["properties", "connections", "properties", "max_active"], "delete")
    assert incompatibilities(snapshot_schema(), new) == [
        "connections.max_active: removed or renamed"
    ]


def test_retyping_a_field_is_incompatible() -> None:
    new = mutate(["properties", "list_cache", "properties", "hits"], "set", {"type": "string"})
    problems = incompatibilities(snapshot_schema(), new)
    assert problems and "type changed" in problems[0]


def test_retyping_through_a_ref_is_caught() -> None:
    new = mutate(["$defs", "histogram", "properties", "max_ns"], "set", {"type": "number"})
    problems = incompatibilities(snapshot_schema(), new)
    assert any(p.startswith("queue_wait.max_ns") for p in problems)
    assert any(p.startswith("requests.latency.max_ns") for p in problems)


def test_making_a_field_optional_is_incompatible() -> None:
    schema = snapshot_schema()
    required = [r for r in schema["properties"]["meta"]["required"] if r != "profile"]
    new = mutate(["properties", "meta", "required"], "set", required)
    assert incompatibilities(schema, new) == ["meta.profile: was required, now optional"]


def test_dropping_an_enum_value_is_incompatible() -> None:
    new = mutate(
        ["properties", "stores", "items", "properties", "state", "enum"], "set", ["ok", "stopped"]
    )
    assert incompatibilities(snapshot_schema(), new) == [
        "stores[].state: enum values removed: ['degraded']"
    ]


def test_renaming_a_map_value_shape_is_caught() -> None:
    new = mutate(["$defs", "counts", "additionalProperties"], "set", {"type": "string"})
    problems = incompatibilities(snapshot_schema(), new)
    assert any(p.startswith("connections.rejected.*") for p in problems)
