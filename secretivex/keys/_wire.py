"""The few SSH wire primitives the key code needs (RFC 4251 section 5).

Kept private to ``keys`` so this package does not depend on ``protocol`` (which is
written against it) and stays importable on its own.
"""

from __future__ import annotations

import struct

from secretivex.keys.errors import KeyFormatError

U32 = struct.Struct(">I")

#: OpenSSH refuses bignums longer than this (SSHBUF_MAX_BIGNUM, 16384 bits + sign byte).
MAX_MPINT_BYTES = 16384 // 8 + 1


class WireError(KeyFormatError):
    """Malformed SSH wire data."""


def string(value: bytes) -> bytes:
    """``uint32 length || bytes``."""
    return U32.pack(len(value)) + value


def mpint(value: int) -> bytes:
    """A non-negative integer as an SSH mpint (minimal two's complement, length-prefixed)."""
    if value < 0:
        raise WireError("negative mpint")
    if value == 0:
        return b"\x00\x00\x00\x00"
    raw = value.to_bytes(value.bit_length() // 8 + 1, "big")
    return U32.pack(len(raw)) + raw


def mpint_value(raw: bytes) -> int:
    """Decode an mpint body, rejecting negatives as OpenSSH does."""
    if len(raw) > MAX_MPINT_BYTES:
        raise WireError("mpint too long")
    if raw and raw[0] & 0x80:
        raise WireError("negative mpint")
    return int.from_bytes(raw, "big")


class Reader:
    """A bounds-checked cursor over a byte string; every failure is a ``WireError``."""

    __slots__ = ("_buf", "_pos")

    def __init__(self, buf: bytes) -> None:
        self._buf = buf
        self._pos = 0

    def u32(self) -> int:
        end = self._pos + 4
        if end > len(self._buf):
            raise WireError("truncated uint32")
        (value,) = U32.unpack_from(self._buf, self._pos)
        self._pos = end
        return int(value)

    def string(self) -> bytes:
        length = self.u32()
        end = self._pos + length
        if end > len(self._buf):
            raise WireError("truncated string")
        value = self._buf[self._pos : end]
        self._pos = end
        return value

    def mpint(self) -> int:
        return mpint_value(self.string())

    @property
    def position(self) -> int:
        """Bytes read so far."""
        return self._pos

    def slice_from(self, start: int) -> bytes:
        """The bytes read since ``start`` (an earlier ``position``)."""
        return self._buf[start : self._pos]

    def at_end(self) -> bool:
        return self._pos >= len(self._buf)

    def expect_end(self) -> None:
        if self._pos != len(self._buf):
            raise WireError("trailing data")
