"""Logging to stderr as text or JSON lines. Messages never carry key material or PINs:
stores and the dispatcher log fingerprints, paths and reasons only.

Text lines escape control characters in the message: key comments and paths come from
clients (ssh-add) and files, and a newline in one must not forge a log line (JSON
escapes them by construction)."""

from __future__ import annotations

import logging
import re
import sys
import time

#: C0 controls, DEL, C1 controls and the Unicode line/paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """``"a\\nb"`` -> ``"a\\\\nb"``: one log record stays one line."""
    return _CONTROL.sub(_escape_char, text)


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        import orjson  # for JSON logs only

        self._dumps = orjson.dumps

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return self._dumps(doc).decode()


class TextFormatter(logging.Formatter):
    """``TIME LEVEL logger: message`` in UTC, with control characters in the message
    escaped (tracebacks keep their lines)."""

    converter = staticmethod(time.gmtime)

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
