"""Length-prefixed framing: ``uint32 length || payload``, as agent sockets carry it.

:class:`FrameDecoder` is sans-I/O: feed it whatever ``recv`` returned, get complete
payloads back. It never buffers a message whose declared length is out of bounds:
the length is checked as soon as its four bytes arrive.
"""

from __future__ import annotations

import struct
from typing import Final

from .errors import FrameError
from .wire import MAX_MESSAGE_SIZE

__all__ = [
    "EXTENSION_FAILURE_FRAME",
    "FAILURE_FRAME",
    "SUCCESS_FRAME",
    "FrameDecoder",
    "frame",
]

_U32: Final = struct.Struct(">I")
_pack_u32 = _U32.pack
_unpack_u32 = _U32.unpack_from

FAILURE_FRAME: Final = b"\x00\x00\x00\x01\x05"
SUCCESS_FRAME: Final = b"\x00\x00\x00\x01\x06"
EXTENSION_FAILURE_FRAME: Final = b"\x00\x00\x00\x01\x1c"


def frame(payload: bytes) -> bytes:
    """Prefix ``payload`` with its length; refuse what no peer would accept."""
    size = len(payload)
    if not 0 < size <= MAX_MESSAGE_SIZE:
        raise FrameError(f"payload of {size} bytes is not in 1..{MAX_MESSAGE_SIZE}")
    return _pack_u32(size) + payload


class FrameDecoder:
    """Incremental framer over one byte stream.

    ``feed`` appends to one ``bytearray`` and cuts complete payloads out of it; the
    consumed prefix is dropped with ``del buf[:n]``, which CPython does in O(1), so
    byte-at-a-time and many-frames-per-read are both linear overall.

    A zero or oversized declared length raises :class:`FrameError`. If complete
    frames precede the bad header in the same feed they are returned first and the
    error is raised by the next ``feed`` (so a pipelined valid request is still
    answered, as OpenSSH does). Once raised, the decoder stays broken.
    """

    __slots__ = ("_broken", "_buf", "_max")

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE) -> None:
        if not 0 < max_size <= MAX_MESSAGE_SIZE:
            raise ValueError(f"max_size must be in 1..{MAX_MESSAGE_SIZE}")
        self._buf = bytearray()
        self._max = max_size
        self._broken = False

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet make a complete frame."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add received bytes; return the payloads (without length) now complete."""
        if self._broken:
            raise FrameError("stream already failed framing")
        buf = self._buf
        buf += data
        size = len(buf)
        limit = self._max
        out: list[bytes] = []
        pos = 0
        view: memoryview | None = None
        try:
            while size - pos >= 4:
                length = _unpack_u32(buf, pos)[0]
                if length == 0 or length > limit:
                    if out:
                        break  # deliver what came before; the next feed raises
                    self._broken = True
                    buf.clear()  # no view exists yet (no frame cut); drop the junk
                    raise FrameError(f"declared frame length {length} is not in 1..{limit}")
                end = pos + 4 + length
                if end > size:
                    break
                if view is None:
                    view = memoryview(buf)
                out.append(view[pos + 4 : end].tobytes())
                pos = end
        finally:
            if view is not None:
                view.release()
        if pos == size:
            self._buf = bytearray()  # drop the capacity a large frame left behind
        elif pos:
            del buf[:pos]
        return out
