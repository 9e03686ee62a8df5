"""Wire primitives: RFC 4251 vectors, bounds, and the writer/reader inverse."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secretivex.protocol import MAX_MPINT_BITS, ProtocolError, Reader
from secretivex.protocol.wire import (
    boolean,
    mpint,
    string,
    text,
    text_lossless,
    u8,
    u32,
    u64,
)

SETTINGS = settings(max_examples=300, deadline=None)

# RFC 4251 section 5, mpint examples (non-negative ones; agents never send negatives).
RFC4251_MPINTS = [
    (0, "00000000"),
    (0x9A378F9B2E332A7, "0000000809a378f9b2e332a7"),
    (0x80, "000000020080"),
]


@pytest.mark.parametrize(("value", "hexwire"), RFC4251_MPINTS)
def test_mpint_rfc4251_vectors(value: int, hexwire: str) -> None:
    wire = bytes.fromhex(hexwire)
    assert mpint(value) == wire
    r = Reader(wire)
    assert r.read_mpint() == value
    r.expect_end()


@pytest.mark.parametrize("hexwire", ["00000002edcc", "00000005ff21524111"])
def test_negative_mpints_refused(hexwire: str) -> None:
    with pytest.raises(ProtocolError, match="negative"):
        Reader(bytes.fromhex(hexwire)).read_mpint()
    with pytest.raises(ProtocolError):
        mpint(-1)


def test_mpint_redundant_zeros_accepted_like_openssh() -> None:
    assert Reader(bytes.fromhex("00000003000001")).read_mpint() == 1
    assert Reader(bytes.fromhex("0000000100")).read_mpint() == 0


def test_mpint_size_cap() -> None:
    biggest = (1 << MAX_MPINT_BITS) - 1
    assert Reader(mpint(biggest)).read_mpint() == biggest
    with pytest.raises(ProtocolError, match="bits"):
        mpint(1 << MAX_MPINT_BITS)
    too_big = string(b"\x01" + b"\x00" * (MAX_MPINT_BITS // 8))
    with pytest.raises(ProtocolError, match="bits"):
        Reader(too_big).read_mpint()
    padded = string(b"\x00" * 10 + b"\x7f" * (MAX_MPINT_BITS // 8))
    assert Reader(padded).read_mpint() > 0


def test_scalars() -> None:
    assert u8(255) == b"\xff"
    assert u32(0x01020304) == b"\x01\x02\x03\x04"
    assert u64(1) == b"\x00" * 7 + b"\x01"
    assert boolean(True) == b"\x01"
    assert boolean(False) == b"\x00"
    with pytest.raises(ProtocolError):
        u8(256)
    with pytest.raises(ProtocolError):
        u32(-1)
    with pytest.raises(ProtocolError):
        u32(1 << 32)
    with pytest.raises(ProtocolError):
        u64(1 << 64)
    r = Reader(b"\x07\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x02\x00\x05")
    assert r.read_u8() == 7
    assert r.read_u32() == 1
    assert r.read_u64() == 2
    assert r.read_bool() is False
    assert r.read_bool() is True  # RFC 4251: any non-zero byte is true
    assert r.at_end()
    r.expect_end()


def test_every_read_is_bounds_checked() -> None:
    readers = [
        Reader.read_u8,
        Reader.read_bool,
        Reader.read_u32,
        Reader.read_u64,
        Reader.read_string,
        Reader.read_text,
        Reader.read_text_lossless,
        Reader.read_mpint,
        Reader.read_sub,
    ]
    for read in readers:
        with pytest.raises(ProtocolError):
            read(Reader(b""))
    with pytest.raises(ProtocolError, match="exceeds"):
        Reader(b"\x00\x00\x00\x05abcd").read_string()
    with pytest.raises(ProtocolError):
        Reader(b"\x00\x00\x00").read_u32()


def test_reader_bounds_and_sub_readers() -> None:
    data = string(string(b"inner") + b"\x01") + b"\x09"
    r = Reader(data)
    sub = r.read_sub()
    assert sub.read_string() == b"inner"
    assert sub.remaining == 1
    with pytest.raises(ProtocolError, match="trailing"):
        sub.expect_end()
    assert sub.read_u8() == 1
    with pytest.raises(ProtocolError):
        sub.read_u8()  # the sub-reader cannot see the outer trailing byte
    assert r.read_u8() == 9
    assert r.read_rest() == b""
    with pytest.raises(ProtocolError):
        Reader(b"abc", 2, 1)
    assert Reader(b"abcdef", 1, 3).read_rest() == b"bc"
    assert Reader(bytearray(b"\x01")).read_u8() == 1


def test_text_strict_and_lossless() -> None:
    bad = string(b"\xff\xfe")
    with pytest.raises(ProtocolError, match="UTF-8"):
        Reader(bad).read_text()
    lossless = Reader(bad).read_text_lossless()
    assert text_lossless(lossless) == bad
    with pytest.raises(ProtocolError):
        text("\ud800")
    with pytest.raises(ProtocolError):
        text_lossless("\ud800")
    assert Reader(text("héllo")).read_text() == "héllo"


@SETTINGS
@given(st.integers(min_value=0, max_value=(1 << MAX_MPINT_BITS) - 1))
def test_mpint_round_trip_and_minimal(value: int) -> None:
    wire = mpint(value)
    assert Reader(wire).read_mpint() == value
    body = wire[4:]
    if body:
        # Minimal: no leading zero unless the next byte's top bit needs it.
        assert body[0] != 0 or body[1] & 0x80


@SETTINGS
@given(st.binary(max_size=64))
def test_string_round_trip(data: bytes) -> None:
    r = Reader(string(data) + b"tail")
    assert r.read_string() == data
    assert r.read_rest() == b"tail"


@SETTINGS
@given(st.binary(max_size=40))
def test_reader_never_raises_anything_but_protocol_error(data: bytes) -> None:
    for method in ("read_u8", "read_u32", "read_u64", "read_string", "read_text", "read_mpint"):
        r = Reader(data)
        try:
            while not r.at_end():
                getattr(r, method)()
        except ProtocolError:
            pass
