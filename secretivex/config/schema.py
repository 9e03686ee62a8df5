"""JSON Schema of the config file, generated from the models.

``config/secretivex.schema.json`` is a copy of ``render_schema()``; regenerate it with
``secretivex config schema > config/secretivex.schema.json``. Editors use it for
completion (e.g. ``# yaml-language-server: $schema=...`` at the top of a file).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from secretivex.config.models import SecretivexConfig

__all__ = [
    "SCHEMA_DIALECT",
    "SCHEMA_ID",
    "config_json_schema",
    "render_schema",
    "shipped_schema_path",
]

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
#: A name, not a download location: editors get the file from a path
#: (``secretivex config schema --path``) or a copy next to the config.
SCHEMA_ID = "urn:secretivex:config-schema:v1"
#: The copy shipped inside the package (wheel), kept equal to ``render_schema()``.
SHIPPED_SCHEMA = "secretivex.schema.json"


def shipped_schema_path() -> Path:
    """Where the installed package keeps its copy of the schema."""
    return Path(__file__).with_name(SHIPPED_SCHEMA)


def config_json_schema() -> dict[str, Any]:
    """The JSON Schema of one config file (every key optional at the top level).

    It describes shape and types; rules across keys (one of pin_env/pin_file, unique
    sockets, files that must exist) are checked by ``secretivex config validate``.
    """
    schema = SecretivexConfig.model_json_schema(mode="validation")
    stores = schema.get("properties", {}).get("stores", {})
    if isinstance(stores.get("items"), dict) and "discriminator" in stores["items"]:
        stores["items"] = _stores_by_type(stores["items"])
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": SCHEMA_ID,
        **schema,
        "description": (
            "secretivex configuration file. Layers merge (mappings deeply, lists replace), "
            "so every key is optional; run `secretivex config validate` for the full checks."
        ),
    }


def _stores_by_type(union: dict[str, Any]) -> dict[str, Any]:
    """Pydantic's ``oneOf`` + ``discriminator`` becomes ``if type == X then X's schema``.

    Standard validators ignore ``discriminator``, so with ``oneOf`` every mistake in a
    store reads "is not valid under any of the given schemas"; with ``if/then`` they
    report the actual key (e.g. "'module' is a required property").
    """
    mapping: dict[str, str] = union["discriminator"]["mapping"]
    return {
        "type": "object",
        "required": ["type"],
        "properties": {
            "type": {"enum": list(mapping), "description": "Store kind: " + ", ".join(mapping)}
        },
        "allOf": [
            {
                "if": {"properties": {"type": {"const": kind}}, "required": ["type"]},
                "then": {"$ref": ref},
            }
            for kind, ref in mapping.items()
        ],
    }


def render_schema() -> str:
    """The schema as the text ``secretivex config schema`` prints."""
    return json.dumps(config_json_schema(), indent=2, ensure_ascii=False) + "\n"
