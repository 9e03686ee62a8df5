"""Known wire vectors: hand-built from the spec, and captured from real OpenSSH 9.2.

Round-trip tests alone cannot catch a codec that is consistently wrong on both sides;
these bytes come from outside the codec. The OpenSSH vectors were recorded from
``ssh-add`` (OpenSSH_9.2p1, Debian 12) talking to a recording socket, using throwaway
keys generated for the purpose; re-encoding them must give the same bytes.
"""

from __future__ import annotations

import base64
import struct

import pytest

from secretivex.protocol import (
    FAILURE_FRAME,
    KEY_LAYOUTS,
    MAX_MESSAGE_SIZE,
    SSH_AGENT_RSA_SHA2_512,
    SUCCESS_FRAME,
    AddIdentity,
    AddSmartcardKey,
    AssociatedCerts,
    Constraints,
    DestinationConstraint,
    DestinationConstraints,
    Extension,
    ExtensionFailure,
    ExtensionResponse,
    Failure,
    FrameError,
    Hop,
    HopKey,
    IdentitiesAnswer,
    Lock,
    ProtocolError,
    RemoveAllIdentities,
    RemoveIdentity,
    RemoveSmartcardKey,
    RequestIdentities,
    SessionBind,
    SignRequest,
    SignResponse,
    SkProvider,
    Success,
    UnknownRequest,
    Unlock,
    WirePrivateKey,
    encode_constraints,
    encode_identities_answer,
    encode_query_reply,
    encode_request,
    encode_response,
    encode_session_bind,
    encode_sign_response,
    frame,
    parse_constraints,
    parse_query_reply,
    parse_request,
    parse_response,
    parse_session_bind,
)


def s(data: bytes) -> bytes:
    """An SSH string, spelled out here rather than borrowed from the codec."""
    return len(data).to_bytes(4, "big") + data


ED_PUB = bytes(range(32))
ED_PRIV = bytes(range(64, 128))
ED_BLOB = s(b"ssh-ed25519") + s(ED_PUB)


# ------------------------------------------------------------ hand-built requests


def test_request_identities_is_one_byte() -> None:
    assert parse_request(b"\x0b") == RequestIdentities()
    assert encode_request(RequestIdentities()) == b"\x0b"
    assert frame(b"\x0b") == b"\x00\x00\x00\x01\x0b"


def test_remove_all_identities() -> None:
    assert parse_request(b"\x13") == RemoveAllIdentities()
    assert encode_request(RemoveAllIdentities()) == b"\x13"


def test_sign_request_layout() -> None:
    wire = b"\x0d" + s(ED_BLOB) + s(b"data to sign") + b"\x00\x00\x00\x04"
    msg = SignRequest(ED_BLOB, b"data to sign", SSH_AGENT_RSA_SHA2_512)
    assert parse_request(wire) == msg
    assert encode_request(msg) == wire


def test_sign_request_from_bytearray_and_memoryview() -> None:
    wire = b"\x0d" + s(b"k") + s(b"d") + b"\x00\x00\x00\x02"
    assert parse_request(bytearray(wire)) == SignRequest(b"k", b"d", 2)
    assert parse_request(memoryview(wire)) == SignRequest(b"k", b"d", 2)


def test_add_ed25519_layout() -> None:
    wire = b"\x11" + s(b"ssh-ed25519") + s(ED_PUB) + s(ED_PRIV) + s(b"me@host")
    msg = parse_request(wire)
    assert msg == AddIdentity(WirePrivateKey("ssh-ed25519", (ED_PUB, ED_PRIV)), "me@host")
    assert encode_request(msg) == wire
    assert isinstance(msg, AddIdentity)
    assert msg.key.public_blob() == ED_BLOB


def test_add_constrained_uses_25_and_constraint_bytes() -> None:
    key = WirePrivateKey("ssh-ed25519", (ED_PUB, ED_PRIV))
    msg = AddIdentity(key, "c", Constraints(lifetime=600, confirm=True, maxsign=7))
    wire = encode_request(msg)
    body = s(b"ssh-ed25519") + s(ED_PUB) + s(ED_PRIV) + s(b"c")
    assert wire == b"\x19" + body + b"\x01\x00\x00\x02\x58" + b"\x02" + b"\x03\x00\x00\x00\x07"
    assert parse_request(wire) == msg


def test_add_identity_17_with_constraints_is_accepted_like_openssh() -> None:
    body = s(b"ssh-ed25519") + s(ED_PUB) + s(ED_PRIV) + s(b"c") + b"\x02"
    msg = parse_request(b"\x11" + body)
    assert isinstance(msg, AddIdentity)
    assert msg.constraints == Constraints(confirm=True)


def test_rsa_layout_and_mpint_sign_byte() -> None:
    # n has its top bit set, so it needs a leading zero byte; e does not.
    wire = (
        b"\x11"
        + s(b"ssh-rsa")
        + s(b"\x00\x80\x01")  # n = 0x8001
        + s(b"\x01\x00\x01")  # e = 65537
        + s(b"\x7f")  # d
        + s(b"")  # iqmp = 0
        + s(b"\x05")  # p
        + s(b"\x00\xff")  # q = 255
        + s(b"rsa")
    )
    msg = parse_request(wire)
    assert isinstance(msg, AddIdentity)
    assert msg.key.fields == (0x8001, 65537, 0x7F, 0, 5, 255)
    assert encode_request(msg) == wire
    assert msg.key.public_blob() == s(b"ssh-rsa") + s(b"\x01\x00\x01") + s(b"\x00\x80\x01")


def test_sk_ed25519_layout() -> None:
    wire = (
        b"\x11"
        + s(b"sk-ssh-ed25519@openssh.com")
        + s(ED_PUB)
        + s(b"ssh:")  # application
        + b"\x01"  # flags (user presence)
        + s(b"handle")
        + s(b"")  # reserved
        + s(b"fido")
    )
    msg = parse_request(wire)
    assert isinstance(msg, AddIdentity)
    assert msg.key.fields == (ED_PUB, b"ssh:", 1, b"handle", b"")
    assert encode_request(msg) == wire
    assert msg.key.public_blob() == s(b"sk-ssh-ed25519@openssh.com") + s(ED_PUB) + s(b"ssh:")


def test_key_layout_table_matches_openssh() -> None:
    def kinds(kt: str) -> str:
        return "".join({"s": "s", "m": "m", "u8": "b"}[k] for _n, k in KEY_LAYOUTS[kt])

    assert kinds("ssh-ed25519") == "ss"
    assert kinds("ssh-rsa") == "mmmmmm"
    assert kinds("ssh-dss") == "mmmmm"
    for bits in ("256", "384", "521"):
        assert kinds(f"ecdsa-sha2-nistp{bits}") == "ssm"
        assert kinds(f"ecdsa-sha2-nistp{bits}-cert-v01@openssh.com") == "sm"
    assert kinds("ssh-ed25519-cert-v01@openssh.com") == "sss"
    assert kinds("ssh-rsa-cert-v01@openssh.com") == "smmmm"
    assert kinds("ssh-dss-cert-v01@openssh.com") == "sm"
    assert kinds("sk-ecdsa-sha2-nistp256@openssh.com") == "sssbss"
    assert kinds("sk-ecdsa-sha2-nistp256-cert-v01@openssh.com") == "ssbss"
    assert kinds("sk-ssh-ed25519@openssh.com") == "ssbss"
    assert kinds("sk-ssh-ed25519-cert-v01@openssh.com") == "sssbss"


def test_unknown_key_type_is_refused() -> None:
    wire = b"\x11" + s(b"ssh-ed448") + s(b"x" * 57) + s(b"y" * 57) + s(b"c")
    with pytest.raises(ProtocolError, match="unsupported private key type"):
        parse_request(wire)


def test_remove_identity_lock_unlock() -> None:
    assert parse_request(b"\x12" + s(ED_BLOB)) == RemoveIdentity(ED_BLOB)
    assert parse_request(b"\x16" + s(b"pw")) == Lock(b"pw")
    assert parse_request(b"\x17" + s(b"pw")) == Unlock(b"pw")


def test_smartcard_layout() -> None:
    wire = b"\x14" + s(b"/usr/lib/p11.so") + s(b"1234")
    assert parse_request(wire) == AddSmartcardKey("/usr/lib/p11.so", "1234")
    assert encode_request(AddSmartcardKey("/usr/lib/p11.so", "1234")) == wire
    constrained = AddSmartcardKey("/p.so", "", Constraints(lifetime=1))
    assert encode_request(constrained) == (b"\x1a" + s(b"/p.so") + s(b"") + b"\x01\x00\x00\x00\x01")
    wire = b"\x15" + s(b"/p.so") + s(b"")
    assert parse_request(wire) == RemoveSmartcardKey("/p.so", "")


def test_extension_has_no_inner_length() -> None:
    # OpenSSH layout: name, then the contents run to the end of the message.
    wire = b"\x1b" + s(b"session-bind@openssh.com") + s(b"hk") + s(b"sid") + s(b"sig") + b"\x01"
    msg = parse_request(wire)
    assert isinstance(msg, Extension)
    assert msg.name == "session-bind@openssh.com"
    bind = parse_session_bind(msg.contents)
    assert bind == SessionBind(b"hk", b"sid", b"sig", True)
    assert encode_session_bind(bind) == msg.contents
    assert encode_request(Extension("query")) == b"\x1b" + s(b"query")


def test_session_bind_is_strict() -> None:
    good = s(b"hk") + s(b"sid") + s(b"sig") + b"\x00"
    assert parse_session_bind(good).is_forwarding is False
    with pytest.raises(ProtocolError):
        parse_session_bind(good + b"\x00")
    with pytest.raises(ProtocolError):
        parse_session_bind(good[:-1])


def test_unknown_request_is_returned_not_raised() -> None:
    # 9 = SSH_AGENTC_REMOVE_ALL_RSA_IDENTITIES, which ssh-add -D still sends.
    assert parse_request(b"\x09") == UnknownRequest(9, b"")
    assert parse_request(b"\xc8abc") == UnknownRequest(200, b"abc")
    assert encode_request(UnknownRequest(200, b"abc")) == b"\xc8abc"


@pytest.mark.parametrize(
    "wire",
    [
        b"",
        b"\x0b\x00",  # trailing byte after REQUEST_IDENTITIES
        b"\x0d" + s(b"k") + s(b"d") + b"\x00\x00\x00\x00\x00",  # trailing
        b"\x0d" + s(b"k") + s(b"d") + b"\x00\x00\x00",  # short flags
        b"\x0d\xff\xff\xff\xff",  # string longer than the message
        b"\x1b" + s(b"\xff\xfe"),  # extension name not UTF-8
        b"\x19" + s(b"ssh-ed25519") + s(ED_PUB) + s(ED_PRIV) + s(b"c") + b"\x07",  # bad constraint
        b"\x19" + s(b"ssh-ed25519") + s(ED_PUB) + s(ED_PRIV) + s(b"c") + b"\x02\x02",  # dup
        b"\x19"
        + s(b"ssh-ed25519")
        + s(ED_PUB)
        + s(ED_PRIV)
        + s(b"c")
        + b"\x01\x00\x00\x00\x01\x01\x00\x00\x00\x02",  # duplicate lifetime
        b"\x19" + s(b"ssh-ed25519") + s(ED_PUB) + s(ED_PRIV) + s(b"c") + b"\xff" + s(b"x@y"),
        b"\x11" + s(b"ssh-rsa") + s(b"\x80") + s(b"") * 5 + s(b""),  # negative mpint
    ],
)
def test_malformed_requests_raise_protocol_error(wire: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_request(wire)


# ---------------------------------------------------------------- constraints


def _hop(user: bytes, host: bytes, keys: bytes) -> bytes:
    return s(s(user) + s(host) + s(b"") + keys)


def test_restrict_destination_layout() -> None:
    hk = s(b"ssh-ed25519") + s(b"H" * 32)
    from_hop = _hop(b"", b"", b"")
    to_hop = _hop(b"bob", b"example.com", s(hk) + b"\x00" + s(hk) + b"\x01")
    constraint = s(from_hop + to_hop + s(b""))
    ext = b"\xff" + s(b"restrict-destination-v00@openssh.com") + s(constraint)
    wire = b"\x19" + s(b"ssh-ed25519") + s(ED_PUB) + s(ED_PRIV) + s(b"c") + ext
    msg = parse_request(wire)
    assert isinstance(msg, AddIdentity)
    expected = DestinationConstraints(
        (
            DestinationConstraint(
                Hop(),
                Hop("bob", "example.com", (HopKey(hk, False), HopKey(hk, True))),
            ),
        )
    )
    assert msg.constraints == Constraints(extensions=(expected,))
    assert encode_request(msg) == wire


def test_restrict_destination_reserved_must_be_empty() -> None:
    to_hop = s(s(b"") + s(b"h") + s(b"X"))
    constraint = s(_hop(b"", b"", b"") + to_hop + s(b""))
    ext = b"\xff" + s(b"restrict-destination-v00@openssh.com") + s(constraint)
    wire = b"\x19" + s(b"ssh-ed25519") + s(ED_PUB) + s(ED_PRIV) + s(b"c") + ext
    with pytest.raises(ProtocolError, match="reserved"):
        parse_request(wire)


def test_associated_certs_and_sk_provider_layout() -> None:
    ext = (
        b"\xff"
        + s(b"associated-certs-v00@openssh.com")
        + b"\x01"
        + s(s(b"CERT"))
        + b"\xff"
        + s(b"sk-provider@openssh.com")
        + s(b"/usr/lib/sk.so")
    )
    wire = b"\x1a" + s(b"/p.so") + s(b"1") + ext
    msg = parse_request(wire)
    assert msg == AddSmartcardKey(
        "/p.so",
        "1",
        Constraints(extensions=(AssociatedCerts(True, s(b"CERT")), SkProvider("/usr/lib/sk.so"))),
    )
    assert encode_request(msg) == wire


def test_duplicate_constraint_extension_refused() -> None:
    one = b"\xff" + s(b"sk-provider@openssh.com") + s(b"/a")
    wire = b"\x1a" + s(b"/p.so") + s(b"1") + one + one
    with pytest.raises(ProtocolError, match="twice"):
        parse_request(wire)
    dup = Constraints(extensions=(SkProvider("/a"), SkProvider("/b")))
    with pytest.raises(ProtocolError, match="twice"):
        encode_request(AddSmartcardKey("/p.so", "1", dup))


def test_constraints_helpers() -> None:
    c = Constraints(lifetime=5, extensions=(SkProvider("/sk.so"),))
    wire = encode_constraints(c)
    assert wire == b"\x01\x00\x00\x00\x05\xff" + s(b"sk-provider@openssh.com") + s(b"/sk.so")
    assert parse_constraints(wire) == c
    assert parse_constraints(b"") == Constraints()
    assert encode_constraints(Constraints()) == b""
    with pytest.raises(ProtocolError):
        parse_constraints(b"\x01\x00")


@pytest.mark.parametrize(
    "msg",
    [
        AddIdentity(WirePrivateKey("ssh-ed448", (b"a", b"b")), "c"),
        AddIdentity(WirePrivateKey("ssh-ed25519", (b"a",)), "c"),
        AddIdentity(WirePrivateKey("ssh-ed25519", (b"a", 1)), "c"),
        AddIdentity(WirePrivateKey("ssh-rsa", (1, 2, 3, 4, 5, b"6")), "c"),
        AddIdentity(WirePrivateKey("ssh-rsa", (1, 2, 3, 4, 5, -6)), "c"),
        AddIdentity(WirePrivateKey("sk-ssh-ed25519@openssh.com", (b"", b"", 256, b"", b"")), "c"),
        AddIdentity(WirePrivateKey("ssh-ed25519", (b"a", b"b")), "\ud800"),
        SignRequest(b"k", b"d", 1 << 32),
        AddSmartcardKey("/p.so", "", Constraints(lifetime=-1)),
        Extension("\ud800"),
        UnknownRequest(256),
        Success(),  # a response is not a request
    ],
)
def test_encoder_refuses_unencodable_values(msg: object) -> None:
    with pytest.raises(ProtocolError):
        encode_request(msg)  # type: ignore[arg-type]


def test_response_encoder_refuses_requests_and_oversize() -> None:
    with pytest.raises(ProtocolError):
        encode_response(RequestIdentities())  # type: ignore[arg-type]
    with pytest.raises(FrameError):
        encode_sign_response(b"x" * MAX_MESSAGE_SIZE)
    with pytest.raises(FrameError):
        encode_identities_answer([(b"x" * 1000, "c")] * 300)


def test_public_blob_for_every_key_type() -> None:
    for key_type, layout in KEY_LAYOUTS.items():
        fields = tuple(b"S" if kind == "s" else 1 for _n, kind in layout)
        blob = WirePrivateKey(key_type, fields).public_blob()
        if key_type.endswith("-cert-v01@openssh.com"):
            assert blob == b"S"
        else:
            assert blob.startswith(s(key_type.encode()))
    with pytest.raises(ProtocolError):
        WirePrivateKey("ssh-ed448", ()).public_blob()
    with pytest.raises(ProtocolError):
        WirePrivateKey("ssh-ed25519", ()).public_blob()
    with pytest.raises(KeyError):
        WirePrivateKey("ssh-ed25519", (b"p", b"k")).get("d")


# ------------------------------------------------------------------ responses


def test_generic_response_frames() -> None:
    assert FAILURE_FRAME == b"\x00\x00\x00\x01\x05"
    assert SUCCESS_FRAME == b"\x00\x00\x00\x01\x06"
    assert parse_response(b"\x05") == Failure()
    assert parse_response(b"\x06") == Success()
    assert parse_response(b"\x1c") == ExtensionFailure()
    assert encode_response(Failure()) == b"\x05"
    assert encode_response(ExtensionFailure()) == b"\x1c"


def test_legacy_failure_codes_parse_as_failure() -> None:
    assert parse_response(b"\x1e") == Failure()
    assert parse_response(b"\x66\x00\x00\x00\x01") == Failure()


def test_identities_answer_layout_and_fast_path() -> None:
    wire = b"\x0c\x00\x00\x00\x02" + s(ED_BLOB) + s(b"first") + s(b"B") + s(b"\xff bytes")
    msg = parse_response(wire)
    assert msg == IdentitiesAnswer(((ED_BLOB, "first"), (b"B", "\udcff bytes")))
    assert encode_response(msg) == wire
    framed = struct.pack(">I", len(wire)) + wire
    assert encode_identities_answer([(ED_BLOB, "first"), (b"B", b"\xff bytes")]) == framed
    assert encode_identities_answer([]) == b"\x00\x00\x00\x05\x0c\x00\x00\x00\x00"


def test_identities_answer_absurd_count() -> None:
    with pytest.raises(ProtocolError):
        parse_response(b"\x0c\xff\xff\xff\xff" + s(b"a") + s(b"b"))
    with pytest.raises(ProtocolError):
        parse_response(b"\x0c\x00\x00\x00\x01" + s(b"a") + s(b"b") + b"\x00")


def test_sign_response_layout_and_fast_path() -> None:
    sig = s(b"ssh-ed25519") + s(b"S" * 64)
    wire = b"\x0e" + s(sig)
    assert parse_response(wire) == SignResponse(sig)
    assert encode_response(SignResponse(sig)) == wire
    assert encode_sign_response(sig) == struct.pack(">I", len(wire)) + wire


def test_query_reply_matches_openssh() -> None:
    # ssh-agent.c process_ext_query: EXTENSION_RESPONSE, "query", then one string per name.
    wire = b"\x1d" + s(b"query") + s(b"session-bind@openssh.com")
    msg = parse_response(wire)
    assert msg == ExtensionResponse("query", s(b"session-bind@openssh.com"))
    assert isinstance(msg, ExtensionResponse)
    assert parse_query_reply(msg.contents) == ("session-bind@openssh.com",)
    contents = encode_query_reply(["query", "session-bind@openssh.com"])
    assert contents == s(b"query") + s(b"session-bind@openssh.com")
    assert encode_response(ExtensionResponse("query", contents)) == (
        b"\x1d" + s(b"query") + contents
    )
    assert parse_query_reply(b"") == ()


@pytest.mark.parametrize(
    "wire",
    [b"", b"\x05\x00", b"\x06\x01", b"\x0e", b"\x0e" + s(b"x") + b"!", b"\x63", b"\x0b"],
)
def test_malformed_responses_raise_protocol_error(wire: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_response(wire)


# --------------------------------------------------------------- secret hygiene


def test_repr_hides_secrets() -> None:
    key = WirePrivateKey("ssh-ed25519", (ED_PUB, b"TOPSECRETPRIVATE"))
    texts = [
        repr(AddIdentity(key, "comment")),
        repr(Lock(b"TOPSECRETPASS")),
        repr(Unlock(b"TOPSECRETPASS")),
        repr(AddSmartcardKey("/p.so", "TOPSECRETPIN")),
        repr(RemoveSmartcardKey("/p.so", "TOPSECRETPIN")),
        str(Lock(b"TOPSECRETPASS")),
    ]
    for text in texts:
        assert "TOPSECRET" not in text
    assert "ssh-ed25519" in texts[0]
    assert "/p.so" in texts[3]


# ----------------------------------------------------------- OpenSSH 9.2 vectors

OPENSSH_92 = {
    "ADD_ED25519": (
        "110000000b7373682d65643235353139000000203f113549dd09aec3ab363e662c78ba153da52d09"
        "2c19d51efad15849a7130f4e000000405d6aac7b2a35e4477b8b078826fce37c8078ce26fba98212"
        "a81f9be929f1bdc33f113549dd09aec3ab363e662c78ba153da52d092c19d51efad15849a7130f4e"
        "0000000a65642d636f6d6d656e74"
    ),
    "ADD_ECDSA_CONFIRM_LIFETIME": (
        "190000001365636473612d736861322d6e69737470323536000000086e6973747032353600000041"
        "042711618de75a02b752dd6b7fcacf73fba73960029874a270c4a1c482ae8b9738888a85c4cb0a12"
        "10068f52ffad91affec75fd3e8d75966b5790c8b55ea13a9c600000021008643d1c80fcd4bdc8d6c"
        "0865b5369f678e3ce2cec9c439845d9911d60d5411b3000000026563010000003c02"
    ),
    "ADD_RSA_1024": (
        "11000000077373682d7273610000008100bb699d5555d734e05dfc93ca0d745709522df20f171118"
        "e98cf21339ac5a60b5c6921ece61cd2f6bf582e658ef763acf089a5848da7d817327a7f499425897"
        "9e910f4286e6f2a26f5953e027a6ed0cc3a36d90e6edb48f7e35011c7323d74c41de52a02a6123e2"
        "855b91006d8c9848cd5069feddf94a6d0019b7422e57d517db00000003010001000000806fa6e838"
        "e2bf279d53e11a1b1210f19978002f699610758b0e9159aace67b99e1203139f58dce917a458abea"
        "e81ec3c27c1997e72f63fe2f20bd0b181352bc60927a44c3a784f3ce13411d8a8dd7a37fd2adc2ab"
        "433cf161ba1e82800d4f7a96b6175af5faa3400904b8ce75152113f8acf868c21151f52cb2201795"
        "38affe010000004100b2fa7fa0380a391069d7aa9e47295c70af9e17afe6c528de53cb790cce2181"
        "20f59db017087c923191154ae58822a44c9ec425c3cda0fe639965327cf083aa6d0000004100df28"
        "8161699441019d06b3d964e91d772933c5854e6e1837b34319f00ffdf9eb0d48acd3a6e3486ca36b"
        "6ccda84976b3040cb062c13be172284dfb55131a46c10000004100d6fe63cae6820db15abe349875"
        "24aeea593f8e36b3dca9b12cafe54e059c5f04bf95a0b0771a877ffede599934ea3bcfc1685cea83"
        "10bb593b5031558785819b00000003727361"
    ),
    "ADD_ED25519_CERT": (
        "11000000207373682d656432353531392d636572742d763031406f70656e7373682e636f6d000001"
        "bb000000207373682d656432353531392d636572742d763031406f70656e7373682e636f6d000000"
        "20393af33937dca29ad03ca896abb72b1ebd15e1a99713983e6eeafbad6d61fb52000000203f1135"
        "49dd09aec3ab363e662c78ba153da52d092c19d51efad15849a7130f4e0000000000000000000000"
        "01000000066365727469640000000900000005616c6963650000000000000000ffffffffffffffff"
        "0000000000000082000000157065726d69742d5831312d666f7277617264696e6700000000000000"
        "177065726d69742d6167656e742d666f7277617264696e6700000000000000167065726d69742d70"
        "6f72742d666f7277617264696e67000000000000000a7065726d69742d707479000000000000000e"
        "7065726d69742d757365722d72630000000000000000000000330000000b7373682d656432353531"
        "3900000020de914e469ff2d98900caf1806bb435e0625b5fe8cf21e9250ac5499aae592a02000000"
        "530000000b7373682d6564323535313900000040269a888ed31f2bdf88d604535e3ae06586bafa6b"
        "87ff5a8de01a7d61040d3eaf4b398b1c19528f378f26b73ffb6801185dbd012f94a577e455babbbc"
        "96072906000000203f113549dd09aec3ab363e662c78ba153da52d092c19d51efad15849a7130f4e"
        "000000405d6aac7b2a35e4477b8b078826fce37c8078ce26fba98212a81f9be929f1bdc33f113549"
        "dd09aec3ab363e662c78ba153da52d092c19d51efad15849a7130f4e0000000a65642d636f6d6d65"
        "6e74"
    ),
    "REMOVE_ED25519": (
        "12000000330000000b7373682d65643235353139000000203f113549dd09aec3ab363e662c78ba15"
        "3da52d092c19d51efad15849a7130f4e"
    ),
    "ADD_ED25519_RESTRICT_DESTINATION": (
        "190000000b7373682d65643235353139000000203f113549dd09aec3ab363e662c78ba153da52d09"
        "2c19d51efad15849a7130f4e000000405d6aac7b2a35e4477b8b078826fce37c8078ce26fba98212"
        "a81f9be929f1bdc33f113549dd09aec3ab363e662c78ba153da52d092c19d51efad15849a7130f4e"
        "0000000a65642d636f6d6d656e74ff0000002472657374726963742d64657374696e6174696f6e2d"
        "763030406f70656e7373682e636f6d000000b1000000ad0000004f000000000000000b6578616d70"
        "6c652e636f6d00000000000000330000000b7373682d656432353531390000002016d1e9538c79c0"
        "b373df777bfea709a223e694da99c5d9329510fe6ada1527fc000000005200000003626f62000000"
        "0b6578616d706c652e636f6d00000000000000330000000b7373682d656432353531390000002016"
        "d1e9538c79c0b373df777bfea709a223e694da99c5d9329510fe6ada1527fc0000000000"
    ),
    "LOCK": ("160000000973656372657470696e"),
    "UNLOCK": ("170000000973656372657470696e"),
    "ADD_SMARTCARD_CONFIRM": (
        "1a000000312f7573722f6c69622f7838365f36342d6c696e75782d676e752f706b637331312f6f70"
        "656e73632d706b637331312e736f0000000973656372657470696e02"
    ),
    "REMOVE_SMARTCARD": (
        "15000000312f7573722f6c69622f7838365f36342d6c696e75782d676e752f706b637331312f6f70"
        "656e73632d706b637331312e736f00000000"
    ),
}

PUBKEYS = {
    "ADD_ED25519": "AAAAC3NzaC1lZDI1NTE5AAAAID8RNUndCa7DqzY+Zix4uhU9pS0JLBnVHvrRWEmnEw9O",
    "ADD_ECDSA_CONFIRM_LIFETIME": (
        "AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBCcRYY3nWgK3Ut1rf8rPc/unOWAC"
        "mHSicMShxIKui5c4iIqFxMsKEhAGj1L/rZGv/sdf0+jXWWa1eQyLVeoTqcY="
    ),
    "ADD_RSA_1024": (
        "AAAAB3NzaC1yc2EAAAADAQABAAAAgQC7aZ1VVdc04F38k8oNdFcJUi3yDxcRGOmM8hM5rFpgtcaSHs5h"
        "zS9r9YLmWO92Os8ImlhI2n2Bcyen9JlCWJeekQ9Chubyom9ZU+Anpu0Mw6NtkObttI9+NQEccyPXTEHe"
        "UqAqYSPihVuRAG2MmEjNUGn+3flKbQAZt0IuV9UX2w=="
    ),
}
HOST_KEY_BLOB = base64.b64decode(
    "AAAAC3NzaC1lZDI1NTE5AAAAIBbR6VOMecCzc993e/6nCaIj5pTamcXZMpUQ/mraFSf8"
)


@pytest.mark.parametrize("name", sorted(OPENSSH_92))
def test_openssh_vectors_round_trip_byte_for_byte(name: str) -> None:
    wire = bytes.fromhex(OPENSSH_92[name])
    msg = parse_request(wire)
    assert not isinstance(msg, UnknownRequest)
    assert encode_request(msg) == wire


@pytest.mark.parametrize("name", sorted(PUBKEYS))
def test_openssh_vectors_public_blob_matches_pub_file(name: str) -> None:
    msg = parse_request(bytes.fromhex(OPENSSH_92[name]))
    assert isinstance(msg, AddIdentity)
    assert msg.key.public_blob() == base64.b64decode(PUBKEYS[name])


def test_openssh_vector_contents() -> None:
    def req(name: str) -> object:
        return parse_request(bytes.fromhex(OPENSSH_92[name]))

    ed = req("ADD_ED25519")
    assert isinstance(ed, AddIdentity)
    assert ed.comment == "ed-comment"
    assert ed.constraints == Constraints()
    pub = base64.b64decode(PUBKEYS["ADD_ED25519"])

    ec = req("ADD_ECDSA_CONFIRM_LIFETIME")  # ssh-add -c -t 60
    assert isinstance(ec, AddIdentity)
    assert ec.key.key_type == "ecdsa-sha2-nistp256"
    assert ec.key.get("curve") == b"nistp256"
    assert ec.constraints == Constraints(lifetime=60, confirm=True)

    rsa = req("ADD_RSA_1024")
    assert isinstance(rsa, AddIdentity)
    n, e, d, iqmp, p, q = rsa.key.fields
    assert isinstance(n, int) and isinstance(p, int) and isinstance(q, int)
    assert isinstance(d, int) and isinstance(iqmp, int)
    assert e == 65537
    assert n == p * q  # field order n, e, d, iqmp, p, q
    assert iqmp == pow(q, -1, p)
    assert pow(pow(12345, e, n), d, n) == 12345
    assert n.bit_length() == 1024

    cert = req("ADD_ED25519_CERT")
    assert isinstance(cert, AddIdentity)
    assert cert.key.is_cert
    assert cert.key.get("priv") == ed.key.get("priv")
    assert cert.key.get("pub") == ed.key.get("pub")

    assert req("REMOVE_ED25519") == RemoveIdentity(pub)

    restricted = req("ADD_ED25519_RESTRICT_DESTINATION")  # -h example.com>bob@example.com
    assert isinstance(restricted, AddIdentity)
    host = (HopKey(HOST_KEY_BLOB, False),)
    assert restricted.constraints == Constraints(
        extensions=(
            DestinationConstraints(
                (
                    DestinationConstraint(
                        Hop("", "example.com", host), Hop("bob", "example.com", host)
                    ),
                )
            ),
        )
    )

    assert req("LOCK") == Lock(b"secretpin")
    assert req("UNLOCK") == Unlock(b"secretpin")
    p11 = "/usr/lib/x86_64-linux-gnu/pkcs11/opensc-pkcs11.so"
    assert req("ADD_SMARTCARD_CONFIRM") == AddSmartcardKey(
        p11, "secretpin", Constraints(confirm=True)
    )
    assert req("REMOVE_SMARTCARD") == RemoveSmartcardKey(p11, "")
