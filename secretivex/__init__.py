"""secretivex: an SSH agent appliance."""

from typing import Any

__all__ = ["__version__"]

_DIST = "secretivex"


def _installed_version() -> str | None:
    """The ``Version:`` of the first ``secretivex-*.dist-info`` (or ``secretivex.egg-info``,
    as a source checkout has) on ``sys.path``: what ``importlib.metadata.version``
    answers, without importing it (zipfile, email, csv: ~20 ms that ``--version`` and the
    agent's start would pay, and ~0.5 MiB the agent would keep)."""
    import os
    import sys

    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue  # missing, a file, a zip archive: importlib.metadata decides
        for name in sorted(names):
            lowered = name.lower()
            if lowered.startswith(_DIST + "-") and lowered.endswith(".dist-info"):
                headers = os.path.join(entry or ".", name, "METADATA")
            elif lowered == _DIST + ".egg-info" or (
                lowered.startswith(_DIST + "-") and lowered.endswith(".egg-info")
            ):
                headers = os.path.join(entry or ".", name)
                if os.path.isdir(headers):
                    headers = os.path.join(headers, "PKG-INFO")
            else:
                continue
            return _version_header(headers)
    return None


def _version_header(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("Version:"):
                    return line.partition(":")[2].strip()
                if not line.strip():
                    break  # end of the headers
    except OSError:
        pass
    return None


def __getattr__(name: str) -> Any:
    # Read on first use: every command would pay for it at start-up.
    if name == "__version__":
        value = _installed_version()
        if value is None:
            from importlib.metadata import PackageNotFoundError, version

            try:
                value = version("secretivex")
            except PackageNotFoundError:  # running from a source tree without an install
                value = "0.0.0+unknown"
        globals()["__version__"] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
