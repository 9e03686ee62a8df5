"""Generated artifacts are fresh: the JSON Schema copy and the docs reference tables."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

from secretivex.config.docs import GENERATED_BLOCKS, render_reference, update_document
from secretivex.config.models import SecretivexConfig
from secretivex.config.schema import render_schema

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "config" / "secretivex.schema.json"
DOC_FILE = ROOT / "docs" / "configuration.md"


def test_schema_copy_is_fresh() -> None:
    assert SCHEMA_FILE.read_text() == render_schema(), (
        "config/secretivex.schema.json is stale; regenerate it with:\n"
        "    secretivex config schema > config/secretivex.schema.json"
    )


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    schema = json.loads(render_schema())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is False
    validator = jsonschema.Draft202012Validator(schema)
    assert list(validator.iter_errors({"agent": {"max_conections": 1}}))
    assert not list(validator.iter_errors({"agent": {"max_connections": 1}}))


def test_schema_is_host_independent() -> None:
    # default_factory values (socket from $XDG_RUNTIME_DIR, CPU-scaled limits) stay out.
    text = render_schema()
    assert str(Path.home()) not in text
    agent = json.loads(text)["$defs"]["AgentSection"]["properties"]
    assert "default" not in agent["socket"] and "default" not in agent["max_signers"]


def test_docs_reference_is_fresh() -> None:
    text = DOC_FILE.read_text()
    for name in GENERATED_BLOCKS:
        assert f"<!-- BEGIN GENERATED: {name}" in text, name
    assert update_document(text) == text, (
        "docs/configuration.md is stale; regenerate it with:\n    python ci/gen-config-docs.py"
    )


def test_docs_cover_every_key() -> None:
    reference = render_reference()
    for section, info in SecretivexConfig.model_fields.items():
        assert f"`{section}" in reference, section
        annotation = info.annotation
        fields = getattr(annotation, "model_fields", {})
        for key in fields:
            assert f"| `{key}` |" in reference, f"{section}.{key}"
    assert "`SECRETIVEX_AGENT__MAX_CONNECTIONS`" in reference
    assert "`SECRETIVEX_POLICY__CONFIRM__TIMEOUT_MS`" in reference
