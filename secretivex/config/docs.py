"""Reference tables for ``docs/configuration.md``, generated from the models.

The doc keeps hand-written prose around generated blocks::

    <!-- BEGIN GENERATED: reference -->
    ...
    <!-- END GENERATED: reference -->

``ci/gen-config-docs.py`` rewrites the blocks; a unit test fails when they are stale.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from secretivex.config.loader import ENV_NESTED_DELIMITER, ENV_PREFIX
from secretivex.config.models import (
    AgentSection,
    AuditSection,
    FileStore,
    ListenerSection,
    LoggingSection,
    MetricsSection,
    Pkcs11Store,
    PolicySection,
    UpstreamStore,
)
from secretivex.config.profiles import PROFILE_NAMES, PROFILE_PURPOSE, PROFILES

__all__ = ["GENERATED_BLOCKS", "render_profiles", "render_reference", "update_document"]

_SPECIAL_DEFAULTS = {
    "agent.socket": "`$XDG_RUNTIME_DIR/secretivex/agent.sock`, else `~/.secretivex/agent.sock`",
}


@dataclass(frozen=True)
class _Table:
    title: str  # key prefix as users write it: agent, stores[] (type: file), ...
    prefix: str  # dotted prefix for keys in this table
    model: type[BaseModel]
    env: bool  # whether SECRETIVEX_<...> variables can set these keys one by one
    intro: str


def _tables() -> Iterator[_Table]:
    yield _Table("agent", "agent", AgentSection, True, _doc(AgentSection))
    for model, kind in ((FileStore, "file"), (Pkcs11Store, "pkcs11"), (UpstreamStore, "upstream")):
        yield _Table(
            f"stores[] with type: {kind}",
            "stores[]",
            model,
            False,
            _doc(model)
            + f" Lists replace whole: from the environment set {ENV_PREFIX}STORES to a YAML "
            "flow list.",
        )
    yield _Table("policy", "policy", PolicySection, True, _doc(PolicySection))
    yield from _nested("policy", PolicySection, True)
    yield _Table(
        "listeners[]",
        "listeners[]",
        ListenerSection,
        False,
        _doc(ListenerSection)
        + f" From the environment, set the whole list: {ENV_PREFIX}LISTENERS='[{{socket: ...}}]'.",
    )
    yield from _nested("listeners[]", ListenerSection, False)
    yield _Table("metrics", "metrics", MetricsSection, True, _doc(MetricsSection))
    yield _Table("audit", "audit", AuditSection, True, _doc(AuditSection))
    yield _Table("logging", "logging", LoggingSection, True, _doc(LoggingSection))


def _nested(prefix: str, model: type[BaseModel], env: bool) -> Iterator[_Table]:
    for name, info in model.model_fields.items():
        sub = _submodel(info)
        if sub is not None:
            yield _Table(f"{prefix}.{name}", f"{prefix}.{name}", sub, env, _doc(sub))


def _submodel(info: FieldInfo) -> type[BaseModel] | None:
    annotation = info.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _doc(model: type[BaseModel]) -> str:
    return " ".join((model.__doc__ or "").split())


# --------------------------------------------------------------------------- cells


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


_YAML_WORDS = frozenset({"null", "true", "false", "yes", "no", "on", "off", "~"})


def _flow(value: Any) -> str:
    """A value as YAML flow text (JSON is valid YAML flow; strings unquoted when safe)."""
    if isinstance(value, str):
        plain = re.fullmatch(r"[A-Za-z0-9_./~*@+-][A-Za-z0-9_./~*@+:=-]*", value)
        if plain and value not in _YAML_WORDS and not re.fullmatch(r"[0-9.+-]+", value):
            return value
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    return json.dumps(value)


def _type_text(schema: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in schema:
        return "mapping"
    if "anyOf" in schema:
        parts = [_type_text(s, defs) for s in schema["anyOf"]]
        return " or ".join(dict.fromkeys(parts))
    if "const" in schema:
        return f"`{schema['const']}`"
    if "enum" in schema:
        return " | ".join(f"`{v}`" for v in schema["enum"])
    kind = schema.get("type")
    fmt = schema.get("format")
    if kind == "string":
        if fmt == "socket-path":
            return f"socket path (≤ {schema.get('maxLength')} bytes)"
        if fmt == "path":
            return "path"
        if fmt == "key-matcher":
            return "matcher"
        if fmt == "env-var":
            return "env var name"
        if "pattern" in schema and schema["pattern"] == "^[0-7]{3,4}$":
            return "octal string"
        return "string"
    if kind == "integer":
        low = schema.get("minimum")
        return f"integer ≥ {low}" if low is not None else "integer"
    if kind == "boolean":
        return "bool"
    if kind == "null":
        return "null"
    if kind == "array":
        return "list of " + _type_text(schema.get("items", {}), defs)
    return str(kind or "any")


def _default_text(key: str, name: str, info: FieldInfo, table: _Table) -> str:
    if key in _SPECIAL_DEFAULTS:
        return _SPECIAL_DEFAULTS[key]
    if table.model is AgentSection and name in PROFILES["balanced"]:
        return "from `profile`"
    if _submodel(info) is not None:
        return "see below"
    if info.default is PydanticUndefined:
        return "required" if info.default_factory is None else "—"
    default = info.default
    if isinstance(default, list):
        default = [str(v) for v in default]
    if name == "name" and table.prefix == "stores[]":
        return "`<type>-<index>`"
    return f"`{_flow(default)}`"


def _env_text(key: str, table: _Table) -> str:
    if not table.env:
        return "—"
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(part.upper() for part in key.split("."))


def _example_text(name: str, info: FieldInfo) -> str:
    if not info.examples:
        return ""
    return f"`{name}: {_flow(info.examples[0])}`"


def render_reference() -> str:
    """Markdown tables: every key with type, default, env variable, example, meaning."""
    out: list[str] = []
    for table in _tables():
        schema = table.model.model_json_schema(mode="validation")
        props: dict[str, Any] = schema.get("properties", {})
        defs: dict[str, Any] = schema.get("$defs", {})
        out.append(f"### `{table.title}`\n")
        out.append(table.intro + "\n")
        out.append("| Key | Type | Default | Environment | Example | Meaning |")
        out.append("| --- | --- | --- | --- | --- | --- |")
        for name, info in table.model.model_fields.items():
            key = f"{table.prefix}.{name}"
            prop = props.get(name, {})
            row = [
                f"`{name}`",
                _type_text(prop, defs),
                _default_text(key, name, info, table),
                f"`{_env_text(key, table)}`" if table.env else "—",
                _example_text(name, info),
                info.description or "",
            ]
            out.append("| " + " | ".join(_cell(c) for c in row) + " |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def render_profiles() -> str:
    """Markdown table of the profile presets."""
    head = "| Key | " + " | ".join(f"`{name}`" for name in PROFILE_NAMES) + " |"
    out = [head, "| --- |" + " --- |" * len(PROFILE_NAMES)]
    keys = list(PROFILES[PROFILE_NAMES[0]])
    for key in keys:
        cells = [str(PROFILES[name][key]) for name in PROFILE_NAMES]
        out.append(f"| `agent.{key}` | " + " | ".join(cells) + " |")
    out.append(
        "| *for* | " + " | ".join(_cell(PROFILE_PURPOSE[name]) for name in PROFILE_NAMES) + " |"
    )
    return "\n".join(out) + "\n"


GENERATED_BLOCKS = {"reference": render_reference, "profiles": render_profiles}
_BLOCK = re.compile(
    r"(<!-- BEGIN GENERATED: (?P<name>[a-z-]+)[^>]*-->\n)"
    r"(?P<body>.*?)"
    r"(<!-- END GENERATED: (?P=name) -->)",
    re.DOTALL,
)


def update_document(text: str) -> str:
    """``text`` with every generated block re-rendered (unknown block names are an error)."""

    def replace(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in GENERATED_BLOCKS:
            raise ValueError(f"unknown generated block {name!r}")
        return match.group(1) + GENERATED_BLOCKS[name]() + match.group(4)

    return _BLOCK.sub(replace, text)
