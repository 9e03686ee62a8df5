"""Logging to stderr as text or JSON lines. Messages never carry key material or PINs:
stores and the dispatcher log fingerprints, paths and reasons only.

Text lines escape control characters in the message: key comments and paths come from
clients (ssh-add) and files, and a newline in one must not forge a log line (JSON
escapes them by construction)."""

from __future__ import annotations

import logging
import os
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

    def __init__(self, fmt: str = "%(asctime)s %(levelname)s %(name)s: %(message)s") -> None:
        super().__init__(fmt)

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


def stderr_is_journal() -> bool:
    """Whether stderr is systemd's journal stream (``$JOURNAL_STREAM`` names its device
    and inode, ``systemd.exec(5)``): then each line carries its syslog priority as a
    ``<N>`` prefix and no time of its own (the journal records both)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


#: ``logging`` levels as syslog priorities (``sd-daemon(3)``'s ``SD_ERR`` ...).
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def journal_prefix(levelno: int) -> str:
    """``<3>`` for ERROR...: what the journal reads as the line's priority."""
    for threshold, priority in _PRIORITIES:
        if levelno >= threshold:
            return f"<{priority}>"
    return "<7>"


class JournalFormatter(logging.Formatter):
    """Another formatter's lines, each (traceback lines too) with the record's priority
    prefix, so ``journalctl -p warning`` shows the agent's warnings and errors."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = journal_prefix(record.levelno)
        return "\n".join(prefix + line for line in self._inner.format(record).split("\n"))


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    if stderr_is_journal():
        if fmt != "json":  # the journal has the time
            formatter = TextFormatter("%(levelname)s %(name)s: %(message)s")
        formatter = JournalFormatter(formatter)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
