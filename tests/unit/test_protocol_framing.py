"""FrameDecoder and frame(): chunking, limits, and never buffering an oversized message."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secretivex.protocol import (
    MAX_MESSAGE_SIZE,
    FrameDecoder,
    FrameError,
    ProtocolError,
    frame,
)

SETTINGS = settings(max_examples=300, deadline=None)

payloads = st.lists(st.binary(min_size=1, max_size=300), max_size=8)


def test_frame_prefixes_length() -> None:
    assert frame(b"\x0b") == b"\x00\x00\x00\x01\x0b"
    assert frame(b"x" * MAX_MESSAGE_SIZE)[:4] == struct.pack(">I", MAX_MESSAGE_SIZE)
    with pytest.raises(FrameError):
        frame(b"")
    with pytest.raises(FrameError):
        frame(b"x" * (MAX_MESSAGE_SIZE + 1))


def test_frame_error_is_a_protocol_error() -> None:
    assert issubclass(FrameError, ProtocolError)
    assert issubclass(ProtocolError, ValueError)


def test_decoder_basic() -> None:
    d = FrameDecoder()
    assert d.feed(b"") == []
    assert d.feed(b"\x00\x00") == []
    assert d.pending == 2
    assert d.feed(b"\x00\x02\x0b") == []
    assert d.pending == 5
    assert d.feed(b"\x0c\x00\x00\x00\x01\x05\x00") == [b"\x0b\x0c", b"\x05"]
    assert d.pending == 1
    assert d.feed(bytearray(b"\x00\x00\x01\x06")) == [b"\x06"]
    assert d.pending == 0
    assert d.feed(memoryview(b"\x00\x00\x00\x01\x0b")) == [b"\x0b"]
    assert all(type(p) is bytes for p in d.feed(frame(b"ab") * 3))


def test_oversized_length_raises_before_the_body() -> None:
    d = FrameDecoder()
    assert d.feed(b"\x00\x04") == []
    with pytest.raises(FrameError):
        d.feed(b"\x00\x01")  # 0x00040001 = MAX_MESSAGE_SIZE + 1, body never sent
    assert d.pending == 0
    with pytest.raises(FrameError):
        d.feed(b"more")  # stays broken


def test_exact_max_is_accepted() -> None:
    d = FrameDecoder()
    body = b"\x1b" + b"z" * (MAX_MESSAGE_SIZE - 1)
    assert d.feed(frame(body)) == [body]


def test_zero_length_raises() -> None:
    with pytest.raises(FrameError):
        FrameDecoder().feed(b"\x00\x00\x00\x00")


def test_bad_header_after_good_frames_is_reported_on_next_feed() -> None:
    d = FrameDecoder()
    assert d.feed(frame(b"\x0b") + b"\xff\xff\xff\xff") == [b"\x0b"]
    with pytest.raises(FrameError):
        d.feed(b"")


def test_custom_limit() -> None:
    d = FrameDecoder(max_size=10)
    assert d.feed(frame(b"x" * 10)) == [b"x" * 10]
    with pytest.raises(FrameError):
        d.feed(struct.pack(">I", 11))
    with pytest.raises(ValueError):
        FrameDecoder(max_size=MAX_MESSAGE_SIZE + 1)


def test_byte_at_a_time_big_frame_yields_it_once_and_whole() -> None:
    """A 128 KiB frame fed one byte per call comes out once, intact, nothing left over.

    (Named for what it checks: correctness, not speed. The decoder's linear cost is a
    design property, ``del buf[:n]``, not something a unit test can time honestly.)
    """
    body = b"\x1b" + bytes(range(256)) * 512
    stream = frame(body)
    d = FrameDecoder()
    out: list[bytes] = []
    for i in range(len(stream)):
        out += d.feed(stream[i : i + 1])
    assert out == [body]
    assert d.pending == 0


@SETTINGS
@given(payloads, st.data())
def test_any_chunking_yields_the_same_payloads(items: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(frame(p) for p in items)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    d = FrameDecoder()
    out: list[bytes] = []
    last = 0
    for cut in [*cuts, len(stream)]:
        out += d.feed(stream[last:cut])
        last = cut
    assert out == items
    assert d.pending == 0


@SETTINGS
@given(payloads, st.integers(MAX_MESSAGE_SIZE + 1, 2**32 - 1), st.integers(0, 3))
def test_oversized_frame_after_valid_ones(items: list[bytes], size: int, split: int) -> None:
    header = struct.pack(">I", size)
    d = FrameDecoder()
    stream = b"".join(frame(p) for p in items)
    out = d.feed(stream + header[:split])
    assert out == items
    with pytest.raises(FrameError):
        d.feed(header[split:])


@SETTINGS
@given(st.binary(max_size=200), st.integers(1, 7))
def test_arbitrary_bytes_only_frame_errors(stream: bytes, step: int) -> None:
    d = FrameDecoder()
    try:
        for i in range(0, len(stream), step):
            for payload in d.feed(stream[i : i + step]):
                assert 0 < len(payload) <= MAX_MESSAGE_SIZE
    except FrameError:
        pass
