"""JSON Schema of the config file, generated from the models.

``config/secretivex.schema.json`` is a copy of ``render_schema()``; regenerate it with
``secretivex config schema > config/secretivex.schema.json``. Editors use it for
completion (e.g. ``# yaml-language-server: $schema=...`` at the top of a file).
"""

from __future__ import annotations

import json
from typing import Any

from secretivex.config.models import SecretivexConfig

__all__ = ["SCHEMA_DIALECT", "config_json_schema", "render_schema"]

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def config_json_schema() -> dict[str, Any]:
    """The JSON Schema of one config file (every key optional at the top level).

    It describes shape and types; rules across keys (one of pin_env/pin_file, unique
    sockets, files that must exist) are checked by ``secretivex config validate``.
    """
    schema = SecretivexConfig.model_json_schema(mode="validation")
    return {
        "$schema": SCHEMA_DIALECT,
        **schema,
        "description": (
            "secretivex configuration file. Layers merge (mappings deeply, lists replace), "
            "so every key is optional; run `secretivex config validate` for the full checks."
        ),
    }


def render_schema() -> str:
    """The schema as the text ``secretivex config schema`` prints."""
    return json.dumps(config_json_schema(), indent=2, ensure_ascii=False) + "\n"
