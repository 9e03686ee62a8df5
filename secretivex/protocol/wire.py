"""SSH wire primitives (RFC 4251 section 5): a bounds-checked reader and writer helpers.

The reader walks one immutable ``bytes`` object with an integer cursor and an end
bound, so nested structures (a string that itself holds fields) are read through
:meth:`Reader.read_sub` without copying. Every length is checked against the bound
before it is used; any shortfall raises :class:`ProtocolError`, never ``IndexError``
or ``struct.error``.

Choices RFC 4251 leaves open, made as OpenSSH's ``sshbuf`` makes them:

* ``mpint`` values are never negative (agent key material is non-negative) and at
  most 16384 bits, so a hostile key cannot make later key maths arbitrarily slow.
  Redundant leading zero bytes are accepted on read, as OpenSSH does, and never
  written: :func:`mpint` always produces the minimal RFC 4251 encoding.
* ``boolean`` reads any non-zero byte as true (RFC 4251) and always writes 0 or 1.

Text: :meth:`Reader.read_text` decodes strict UTF-8 (names, hostnames, PINs);
:meth:`Reader.read_text_lossless` uses ``surrogateescape`` for free-form text that
real clients send in arbitrary bytes (key comments, file paths), matching
``os.fsdecode``; :func:`text_lossless` encodes it back byte for byte.
"""

from __future__ import annotations

import struct
from typing import Final

from .errors import ProtocolError

__all__ = [
    "MAX_MESSAGE_SIZE",
    "MAX_MPINT_BITS",
    "Reader",
    "boolean",
    "mpint",
    "string",
    "text",
    "text_lossless",
    "u8",
    "u32",
    "u64",
]

MAX_MESSAGE_SIZE: Final = 256 * 1024
"""Largest payload accepted or produced (OpenSSH's ``AGENT_MAX_LEN``)."""

MAX_MPINT_BITS: Final = 16384
"""Largest mpint accepted (OpenSSH's ``SSHBUF_MAX_BIGNUM``): caps the cost of key maths."""
_MAX_MPINT_BYTES: Final = MAX_MPINT_BITS // 8

_U32: Final = struct.Struct(">I")
_U64: Final = struct.Struct(">Q")
_unpack_u32 = _U32.unpack_from
_unpack_u64 = _U64.unpack_from


class Reader:
    """A cursor over ``data[pos:end]``; every read checks the bound first."""

    __slots__ = ("_buf", "_end", "_pos")

    def __init__(
        self, data: bytes | bytearray | memoryview, pos: int = 0, end: int | None = None
    ) -> None:
        # One copy for mutable buffers: the fields we hand out must be immutable bytes.
        buf = data if type(data) is bytes else bytes(data)
        size = len(buf)
        if end is None:
            end = size
        if not 0 <= pos <= end <= size:
            raise ProtocolError("reader bounds outside the buffer")
        self._buf: bytes = buf
        self._pos = pos
        self._end = end

    @property
    def remaining(self) -> int:
        """Bytes left before the bound."""
        return self._end - self._pos

    @property
    def offset(self) -> int:
        """Position of the cursor in the underlying buffer (for error messages)."""
        return self._pos

    def at_end(self) -> bool:
        return self._pos >= self._end

    def expect_end(self) -> None:
        """Refuse trailing bytes: a message with extra data is malformed, not extended."""
        if self._pos != self._end:
            raise ProtocolError(f"{self._end - self._pos} unexpected trailing byte(s)")

    def read_u8(self) -> int:
        pos = self._pos
        if pos >= self._end:
            raise ProtocolError("truncated byte")
        self._pos = pos + 1
        return self._buf[pos]

    def read_bool(self) -> bool:
        return self.read_u8() != 0

    def read_u32(self) -> int:
        pos = self._pos
        if pos + 4 > self._end:
            raise ProtocolError("truncated uint32")
        self._pos = pos + 4
        value: int = _unpack_u32(self._buf, pos)[0]
        return value

    def read_u64(self) -> int:
        pos = self._pos
        if pos + 8 > self._end:
            raise ProtocolError("truncated uint64")
        self._pos = pos + 8
        value: int = _unpack_u64(self._buf, pos)[0]
        return value

    def _string_bounds(self) -> tuple[int, int]:
        pos = self._pos
        end = self._end
        if pos + 4 > end:
            raise ProtocolError("truncated string length")
        start = pos + 4
        stop = start + _unpack_u32(self._buf, pos)[0]
        if stop > end:
            raise ProtocolError(f"string length exceeds the {end - start} byte(s) left")
        self._pos = stop
        return start, stop

    def read_string(self) -> bytes:
        start, stop = self._string_bounds()
        return self._buf[start:stop]

    def read_sub(self) -> Reader:
        """Read a string and return a reader confined to its contents (no copy)."""
        start, stop = self._string_bounds()
        sub = Reader.__new__(Reader)
        sub._buf = self._buf
        sub._pos = start
        sub._end = stop
        return sub

    def read_text(self) -> str:
        """A string that must be UTF-8 (names, hostnames, PINs)."""
        start, stop = self._string_bounds()
        try:
            return self._buf[start:stop].decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("string is not valid UTF-8") from None

    def read_text_lossless(self) -> str:
        """A string kept byte for byte (comments, paths): undecodable bytes are escaped."""
        start, stop = self._string_bounds()
        return self._buf[start:stop].decode("utf-8", "surrogateescape")

    def read_mpint(self) -> int:
        """A non-negative mpint of at most ``MAX_MPINT_BITS`` bits."""
        start, stop = self._string_bounds()
        if start == stop:
            return 0
        buf = self._buf
        if buf[start] & 0x80:
            raise ProtocolError("negative mpint")
        if stop - start > _MAX_MPINT_BYTES and any(buf[start : stop - _MAX_MPINT_BYTES]):
            raise ProtocolError(f"mpint longer than {MAX_MPINT_BITS} bits")
        return int.from_bytes(buf[start:stop], "big")

    def read_rest(self) -> bytes:
        """Everything up to the bound (the generic body of an extension)."""
        pos = self._pos
        self._pos = self._end
        return self._buf[pos : self._end]


def u8(value: int) -> bytes:
    try:
        return bytes((value,))
    except ValueError:
        raise ProtocolError("byte value out of range") from None


def boolean(value: bool) -> bytes:
    return b"\x01" if value else b"\x00"


def u32(value: int) -> bytes:
    try:
        return _U32.pack(value)
    except struct.error:
        raise ProtocolError("uint32 value out of range") from None


def u64(value: int) -> bytes:
    try:
        return _U64.pack(value)
    except struct.error:
        raise ProtocolError("uint64 value out of range") from None


def string(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


def text(value: str) -> bytes:
    """Strict UTF-8 string (the inverse of :meth:`Reader.read_text`)."""
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError("text cannot be encoded as UTF-8") from None
    return _U32.pack(len(data)) + data


def text_lossless(value: str) -> bytes:
    """Inverse of :meth:`Reader.read_text_lossless`."""
    try:
        data = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise ProtocolError("text holds unencodable surrogates") from None
    return _U32.pack(len(data)) + data


def mpint(value: int) -> bytes:
    """Minimal mpint; a leading zero byte only when the top bit would read as a sign."""
    if value < 0:
        raise ProtocolError("negative mpint")
    if value == 0:
        return b"\x00\x00\x00\x00"
    bits = value.bit_length()
    if bits > MAX_MPINT_BITS:
        raise ProtocolError(f"mpint longer than {MAX_MPINT_BITS} bits")
    size = (bits >> 3) + 1
    return _U32.pack(size) + value.to_bytes(size, "big")
