"""The audit log: one JSON line per request saying who asked for what and what happened.

Never key material, signed data, passphrases or PINs: only fingerprints, sizes and
outcomes.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import IO, Any

import orjson


class AuditLog:
    def __init__(self, path: str | None) -> None:
        self.path = path
        self._fh: IO[bytes] | None = None
        if path == "-":
            self._fh = sys.stderr.buffer
        elif path:
            fd = os.open(os.path.expanduser(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._fh = os.fdopen(fd, "ab", buffering=0)

    @property
    def enabled(self) -> bool:
        return self._fh is not None

    def record(self, **fields: Any) -> None:
        if self._fh is None:
            return
        fields["time"] = time.time()
        with contextlib.suppress(OSError):  # a full disk must never take signing down
            self._fh.write(orjson.dumps(fields) + b"\n")

    def close(self) -> None:
        if self._fh is not None and self._fh is not sys.stderr.buffer:
            self._fh.close()
        self._fh = None
