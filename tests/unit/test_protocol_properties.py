"""Property tests: every message round-trips, and no input raises anything but ProtocolError."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from secretivex.protocol import (
    KEY_LAYOUTS,
    MESSAGE_NAMES,
    AddIdentity,
    AddSmartcardKey,
    AssociatedCerts,
    ConstraintExtension,
    Constraints,
    DestinationConstraint,
    DestinationConstraints,
    Extension,
    ExtensionFailure,
    ExtensionResponse,
    Failure,
    FrameDecoder,
    Hop,
    HopKey,
    IdentitiesAnswer,
    Lock,
    ProtocolError,
    RemoveAllIdentities,
    RemoveIdentity,
    RemoveSmartcardKey,
    Request,
    RequestIdentities,
    Response,
    SessionBind,
    SignRequest,
    SignResponse,
    SkProvider,
    Success,
    UnknownRequest,
    Unlock,
    WirePrivateKey,
    encode_identities_answer,
    encode_query_reply,
    encode_request,
    encode_response,
    encode_session_bind,
    encode_sign_response,
    frame,
    parse_query_reply,
    parse_request,
    parse_response,
    parse_session_bind,
)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KNOWN_REQUEST_TYPES = {11, 13, 17, 18, 19, 20, 21, 22, 23, 25, 26, 27}

# ------------------------------------------------------------------ strategies

blobs = st.binary(max_size=48)
u32s = st.integers(0, 2**32 - 1)
# Strict text: anything UTF-8 can carry (no lone surrogates).
texts = st.text(st.characters(codec="utf-8"), max_size=16)
# Lossless text (comments, paths): also arbitrary bytes, as surrogateescape decodes them.
lossless_texts = st.one_of(
    texts, st.binary(max_size=16).map(lambda b: b.decode("utf-8", "surrogateescape"))
)
mpints = st.one_of(
    st.integers(0, 2**64),
    st.integers(0, 2**1100),
    st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x8000]),
)


def _field(kind: str) -> st.SearchStrategy[Any]:
    if kind == "s":
        return blobs
    if kind == "m":
        return mpints
    return st.integers(0, 255)


@st.composite
def private_keys(draw: st.DrawFn) -> WirePrivateKey:
    key_type = draw(st.sampled_from(sorted(KEY_LAYOUTS)))
    fields = tuple(draw(_field(kind)) for _name, kind in KEY_LAYOUTS[key_type])
    return WirePrivateKey(key_type, fields)


hops = st.builds(
    Hop,
    texts,
    texts,
    st.lists(st.builds(HopKey, blobs, st.booleans()), max_size=3).map(tuple),
)
destination_constraints = st.builds(
    DestinationConstraints,
    st.lists(st.builds(DestinationConstraint, hops, hops), max_size=3).map(tuple),
)
constraint_extensions: st.SearchStrategy[ConstraintExtension] = st.one_of(
    destination_constraints,
    st.builds(AssociatedCerts, st.booleans(), blobs),
    st.builds(SkProvider, lossless_texts),
)
constraints = st.builds(
    Constraints,
    st.none() | u32s,
    st.booleans(),
    st.none() | u32s,
    st.lists(constraint_extensions, max_size=3, unique_by=type).map(tuple),
)

requests: st.SearchStrategy[Request] = st.one_of(
    st.just(RequestIdentities()),
    st.builds(SignRequest, blobs, blobs, u32s),
    st.builds(AddIdentity, private_keys(), lossless_texts, constraints),
    st.builds(RemoveIdentity, blobs),
    st.just(RemoveAllIdentities()),
    st.builds(AddSmartcardKey, lossless_texts, texts, constraints),
    st.builds(RemoveSmartcardKey, lossless_texts, texts),
    st.builds(Lock, blobs),
    st.builds(Unlock, blobs),
    st.builds(Extension, texts, blobs),
    st.builds(
        UnknownRequest,
        st.integers(0, 255).filter(lambda t: t not in KNOWN_REQUEST_TYPES),
        blobs,
    ),
)

responses: st.SearchStrategy[Response] = st.one_of(
    st.just(Failure()),
    st.just(Success()),
    st.builds(IdentitiesAnswer, st.lists(st.tuples(blobs, lossless_texts), max_size=5).map(tuple)),
    st.builds(SignResponse, blobs),
    st.just(ExtensionFailure()),
    st.builds(ExtensionResponse, texts, blobs),
)


def _closed(msg: object) -> bool:
    """True if no proper prefix of the encoding can itself be a valid message."""
    if isinstance(msg, Extension | ExtensionResponse | UnknownRequest):
        return False  # open-ended tail
    if isinstance(msg, AddIdentity | AddSmartcardKey):
        return msg.constraints.is_empty  # a cut between constraints is valid
    return True


# ------------------------------------------------------------------ round trips


@SETTINGS
@given(requests)
def test_request_round_trip(msg: Request) -> None:
    wire = encode_request(msg)
    assert parse_request(wire) == msg
    assert encode_request(parse_request(wire)) == wire  # encoding is canonical


@SETTINGS
@given(responses)
def test_response_round_trip(msg: Response) -> None:
    wire = encode_response(msg)
    assert parse_response(wire) == msg
    assert encode_response(parse_response(wire)) == wire


@SETTINGS
@given(st.lists(st.tuples(blobs, lossless_texts), max_size=6))
def test_identities_fast_path_matches_generic(ids: list[tuple[bytes, str]]) -> None:
    expected = frame(encode_response(IdentitiesAnswer(tuple(ids))))
    assert encode_identities_answer(ids) == expected
    as_bytes = [(b, c.encode("utf-8", "surrogateescape")) for b, c in ids]
    assert encode_identities_answer(as_bytes) == expected


@SETTINGS
@given(blobs)
def test_sign_response_fast_path_matches_generic(sig: bytes) -> None:
    assert encode_sign_response(sig) == frame(encode_response(SignResponse(sig)))


@SETTINGS
@given(st.builds(SessionBind, blobs, blobs, blobs, st.booleans()))
def test_session_bind_round_trip(bind: SessionBind) -> None:
    contents = encode_session_bind(bind)
    assert parse_session_bind(contents) == bind
    msg = parse_request(encode_request(Extension(SessionBind.NAME, contents)))
    assert isinstance(msg, Extension)
    assert parse_session_bind(msg.contents) == bind


@SETTINGS
@given(st.lists(texts, max_size=6).map(tuple))
def test_query_reply_round_trip(names: tuple[str, ...]) -> None:
    wire = encode_response(ExtensionResponse("query", encode_query_reply(names)))
    msg = parse_response(wire)
    assert isinstance(msg, ExtensionResponse)
    assert parse_query_reply(msg.contents) == names


@SETTINGS
@given(st.lists(requests, min_size=1, max_size=5), st.integers(1, 64))
def test_requests_through_frames(msgs: list[Request], step: int) -> None:
    stream = b"".join(frame(encode_request(m)) for m in msgs)
    decoder = FrameDecoder()
    out: list[Request] = []
    for i in range(0, len(stream), step):
        out += [parse_request(p) for p in decoder.feed(stream[i : i + step])]
    assert out == msgs


# ------------------------------------------------------------------ fuzzing


def _parse_any(parse: Any, data: bytes) -> object:
    try:
        return parse(data)
    except ProtocolError:
        return None


@SETTINGS
@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_protocol_error(data: bytes) -> None:
    _parse_any(parse_request, data)
    _parse_any(parse_response, data)
    _parse_any(parse_session_bind, data)
    _parse_any(parse_query_reply, data)


@SETTINGS
@given(st.sampled_from(sorted(KNOWN_REQUEST_TYPES | set(MESSAGE_NAMES))), st.binary(max_size=200))
def test_known_type_with_arbitrary_body(msg_type: int, body: bytes) -> None:
    data = bytes((msg_type,)) + body
    _parse_any(parse_request, data)
    _parse_any(parse_response, data)


@SETTINGS
@given(requests, st.data())
def test_truncated_requests(msg: Request, data: st.DataObject) -> None:
    wire = encode_request(msg)
    cut = data.draw(st.integers(0, len(wire) - 1))
    if _closed(msg):
        with pytest.raises(ProtocolError):
            parse_request(wire[:cut])
    else:
        assert _parse_any(parse_request, wire[:cut]) != msg


@SETTINGS
@given(responses, st.data())
def test_truncated_responses(msg: Response, data: st.DataObject) -> None:
    wire = encode_response(msg)
    cut = data.draw(st.integers(0, len(wire) - 1))
    if _closed(msg):
        with pytest.raises(ProtocolError):
            parse_response(wire[:cut])
    else:
        assert _parse_any(parse_response, wire[:cut]) != msg


@SETTINGS
@given(requests)
def test_every_truncation_of_a_closed_request_fails(msg: Request) -> None:
    assume(_closed(msg))
    wire = encode_request(msg)
    for cut in range(len(wire)):
        with pytest.raises(ProtocolError):
            parse_request(wire[:cut])


@SETTINGS
@given(requests, st.data())
def test_mutated_requests_only_protocol_error(msg: Request, data: st.DataObject) -> None:
    wire = bytearray(encode_request(msg))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        pos = data.draw(st.integers(0, len(wire)))
        if op == "insert":
            wire[pos:pos] = data.draw(st.binary(min_size=1, max_size=5))
        elif pos < len(wire):
            if op == "flip":
                wire[pos] = data.draw(st.integers(0, 255))
            else:
                del wire[pos]
    _parse_any(parse_request, bytes(wire))


@SETTINGS
@given(requests)
def test_trailing_garbage_rejected(msg: Request) -> None:
    assume(_closed(msg))
    with pytest.raises(ProtocolError):
        parse_request(encode_request(msg) + b"\x00")


@SETTINGS
@given(requests)
def test_repr_never_depends_on_secret_fields(msg: Request) -> None:
    other: Request | None = None
    if isinstance(msg, AddIdentity):
        other = replace(msg, key=WirePrivateKey(msg.key.key_type, (b"other",)))
    elif isinstance(msg, Lock | Unlock):
        other = replace(msg, passphrase=msg.passphrase + b"other")
    elif isinstance(msg, AddSmartcardKey | RemoveSmartcardKey):
        other = replace(msg, pin=msg.pin + "other")
    if other is not None:
        assert repr(msg) == repr(other)
        assert msg != other
