"""Property tests for what the clients do with an agent's answer bytes: whatever a
hostile agent sends, decoding ends in a value or an ``AgentError`` (a one-line message),
never another exception; what is shown on a terminal has no control characters; a
signature check is a yes or an ``AgentProtocolError``.

(tests/unit/test_protocol_properties.py covers the codec's own ``parse_response``.)
"""

from __future__ import annotations

import contextlib
import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from secretivex.client import AgentError, AgentProtocolError
from secretivex.client._common import (
    check_signature,
    decode_health,
    identities_of,
    parse_response_or_raise,
    signature_of,
)
from secretivex.client.display import visible
from secretivex.keys.software import SoftwareKey
from secretivex.protocol import FrameDecoder, ProtocolError

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEY = SoftwareKey(Ed25519PrivateKey.generate(), "k")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@SETTINGS
@given(st.binary(max_size=300))
@example(b"[" * 100_000 + b"]" * 100_000)
@example(b'{"a":' * 50_000 + b"1" + b"}" * 50_000)
@example(b"1" * 5000)
def test_decode_health_any_bytes(raw: bytes) -> None:
    try:
        assert isinstance(decode_health(raw), dict)
    except AgentProtocolError as exc:
        assert "\n" not in str(exc)


@SETTINGS
@given(json_values)
def test_decode_health_any_json(value: object) -> None:
    try:
        decode_health(json.dumps(value).encode())
    except AgentProtocolError:
        assert not isinstance(value, dict)


@SETTINGS
@given(st.lists(st.binary(max_size=64), max_size=6), st.integers(1, 32))
@example([b"\xff\xff\xff\xff"], 1)
def test_reply_path_any_bytes(chunks: list[bytes], step: int) -> None:
    """Framing, parsing and reading identities or a signature, as the clients do."""
    decoder = FrameDecoder()
    stream = b"".join(chunks)
    try:
        for i in range(0, len(stream), step):
            for payload in decoder.feed(stream[i : i + step]):
                try:
                    response = parse_response_or_raise(payload)
                    for identity in identities_of(response):
                        line = f"{identity.fingerprint} {identity.key_type} {identity.comment}"
                        assert visible(line).isprintable()
                        json.dumps(identity.as_dict())
                except AgentError:
                    pass
                with contextlib.suppress(AgentError):
                    signature_of(parse_response_or_raise(payload))
    except ProtocolError:
        pass  # bad framing: the clients turn it into AgentProtocolError


@SETTINGS
@given(st.text())
@example("\x1b]0;t\x07\r\n\u202e\u2066\u200b\udcff\x9b\x7f")
def test_visible_is_one_printable_line(text: str) -> None:
    shown = visible(text)
    assert shown.isprintable(), repr(shown)
    if text.isprintable():
        assert shown == text  # ordinary text (any script) is left alone


@SETTINGS
@given(st.binary(max_size=200), st.binary(max_size=64), st.integers(0, 2**32 - 1))
def test_check_signature_any_bytes(signature: bytes, data: bytes, flags: int) -> None:
    try:
        check_signature(KEY.public_blob, data, flags, signature)
    except AgentProtocolError:
        return
    raise AssertionError("random bytes verified as a signature")


@SETTINGS
@given(st.binary(max_size=200))
def test_check_signature_any_key_blob(blob: bytes) -> None:
    with contextlib.suppress(AgentProtocolError):
        check_signature(blob, b"data", 0, KEY.sign(b"data"))
