"""Package namespaces that import their parts on first use (PEP 562).

A package ``__init__`` that imports every module makes ``import secretivex.keys.identity``
pay for private-key loading, and ``secretivex client list`` for the async client. The
packages keep their public names; each is imported from its home module when first
asked for, then cached in the package. Stdlib only, at the bottom of the layers.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["exports"]


def exports(
    package: str, namespace: dict[str, Any], homes: Mapping[str, str]
) -> Callable[[str], Any]:
    """The module ``__getattr__`` for ``package``: ``homes`` maps each public name to
    the module (relative to ``package`` when it starts with ``.``) that defines it."""

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home, package), name)
        namespace[name] = value
        return value

    return __getattr__
