"""Give freed heap memory back to the OS.

glibc keeps memory freed by large, short-lived buffers (frames held by many slow
connections) in its arenas, so RSS stays at its peak long after they closed.
``malloc_trim(0)`` returns the free pages. Elsewhere (musl, macOS) this is a no-op."""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        # The running process's own symbols (libc is linked in): no `ldconfig -p`
        # subprocess as ctypes.util.find_library runs, which cost start-up time.
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    fn: Callable[[int], int] = trim
    return fn


_malloc_trim = _load_malloc_trim()


def trim_heap() -> bool:
    """Return free heap pages to the OS; False where the C library cannot."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True
