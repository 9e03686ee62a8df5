"""NixOS unit definitions (as the module's evaluation returns them) rendered as unit
files, the way nixos/lib/systemd-lib.nix writes them — for `systemd-analyze verify`
(tests/nix) and for the real systemd in a container (tests/systemd)."""

from __future__ import annotations

from typing import Any

_DEPENDENCIES = [
    ("requires", "Requires"),
    ("wants", "Wants"),
    ("after", "After"),
    ("before", "Before"),
    ("bindsTo", "BindsTo"),
    ("partOf", "PartOf"),
    ("conflicts", "Conflicts"),
]


def _value(value: Any) -> list[str]:
    """Booleans as NixOS writes them; lists as repeated lines."""
    items = value if isinstance(value, list) else [value]
    return ["true" if v is True else "false" if v is False else str(v) for v in items]


def render_unit(kind: str, unit: dict[str, Any]) -> str:
    """[Unit] with dependencies and unitConfig, then the type's section (the parts the
    secretivex units use)."""
    lines = ["[Unit]"]
    if unit.get("description"):
        lines.append(f"Description={unit['description']}")
    for option, key in _DEPENDENCIES:
        if unit.get(option):
            lines.append(f"{key}={' '.join(unit[option])}")
    for key, value in unit.get("unitConfig", {}).items():
        lines += [f"{key}={v}" for v in _value(value)]
    if kind == "service":
        lines.append("\n[Service]")
        for name, value in unit.get("environment", {}).items():
            lines.append(f'Environment="{name}={value}"')
        for key, value in unit["serviceConfig"].items():
            lines += [f"{key}={v}" for v in _value(value)]
    else:
        lines.append("\n[Socket]")
        lines += [f"ListenStream={s}" for s in unit.get("listenStreams", [])]
        for key, value in unit["socketConfig"].items():
            lines += [f"{key}={v}" for v in _value(value)]
    return "\n".join(lines) + "\n"
