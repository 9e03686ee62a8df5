"""secretivex: an SSH agent appliance."""

from typing import Any

__all__ = ["__version__"]

_DIST = "secretivex"


def _installed_version() -> str | None:
    """The ``Version:`` of the first ``secretivex-*.dist-info`` on ``sys.path``: what
    ``importlib.metadata.version`` answers for a wheel or editable install, without
    importing it (zipfile, email, csv: ~20 ms that ``--version`` and the agent's start
    would pay)."""
    import os
    import sys

    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue  # missing, a file, a zip archive: importlib.metadata decides
        for name in sorted(names):
            lowered = name.lower()
            if lowered.endswith(".egg-info") and lowered.startswith(_DIST):
                return None  # an older layout: importlib.metadata reads it
            if not (lowered.startswith(_DIST + "-") and lowered.endswith(".dist-info")):
                continue
            try:
                with open(os.path.join(entry or ".", name, "METADATA"), encoding="utf-8") as f:
                    for line in f:
                        if line.startswith("Version:"):
                            return line.partition(":")[2].strip()
                        if not line.strip():
                            break  # end of the headers
            except OSError:
                pass
            return None
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
