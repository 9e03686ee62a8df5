"""Key matchers: parsing (pure) and matching."""

from __future__ import annotations

import base64
import hashlib

import pytest

from secretivex.config.matchers import KEY_TYPES, Matcher, MatcherError, parse_matcher

FP = "SHA256:" + base64.b64encode(hashlib.sha256(b"key").digest()).decode().rstrip("=")


def test_fingerprint_round_trip() -> None:
    m = parse_matcher(FP)
    assert m == Matcher("fingerprint", FP)
    assert str(m) == FP
    assert m.matches(FP, "any", "ssh-ed25519")
    assert not m.matches("SHA256:" + "A" * 43, "any", "ssh-ed25519")


def test_fingerprint_with_padding_and_spaces_is_normalised() -> None:
    assert parse_matcher(f"  {FP}=  ").value == FP


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("SHA256:abc", "43 base64 characters"),
        ("SHA256:" + "A" * 44, "43 base64 characters"),
        ("SHA256:" + "!" * 43, "43 base64 characters"),
        ("SHA256:" + "A" * 42 + "B", "not canonical"),
        ("sha256:" + "A" * 43, "upper case"),
        ("MD5:aa:bb", "only SHA256"),
        ("nonsense", "is not a matcher"),
        ("glob:*", "unknown matcher kind 'glob'"),
        ("comment:", "needs a glob"),
        ("type:", "needs a key type"),
        ("type:ed25519", "did you mean type:ssh-ed25519"),
        ("type:rsa-sha2-256", "signature algorithm; the key type is ssh-rsa"),
        ("type:quantum", "unknown key type 'quantum'"),
    ],
)
def test_malformed_matchers_explain_themselves(text: str, needle: str) -> None:
    with pytest.raises(MatcherError, match=None) as info:
        parse_matcher(text)
    assert needle in str(info.value)


def test_non_string_is_rejected() -> None:
    with pytest.raises(MatcherError, match="must be a string"):
        parse_matcher(42)  # type: ignore[arg-type]


def test_comment_glob_is_case_sensitive_fnmatch() -> None:
    m = parse_matcher("comment:ci-*")
    assert (m.kind, m.value, str(m)) == ("comment", "ci-*", "comment:ci-*")
    assert m.matches(FP, "ci-deploy", "ssh-ed25519")
    assert not m.matches(FP, "CI-deploy", "ssh-ed25519")
    assert not m.matches(FP, "prod-ci-x", "ssh-ed25519")
    assert parse_matcher("comment:[ab]?x").matches(FP, "a1x", "")
    assert parse_matcher("comment: spaced*").value == "spaced*"


def test_type_matches_exact_key_type_only() -> None:
    m = parse_matcher("type:ssh-ed25519")
    assert m.matches(FP, "", "ssh-ed25519")
    assert not m.matches(FP, "", "ssh-ed25519-cert-v01@openssh.com")
    assert parse_matcher("type:ssh-ed25519-cert-v01@openssh.com").matches(
        FP, "", "ssh-ed25519-cert-v01@openssh.com"
    )


def test_known_key_types_include_sk_and_certificates() -> None:
    assert "sk-ssh-ed25519@openssh.com" in KEY_TYPES
    assert "sk-ssh-ed25519-cert-v01@openssh.com" in KEY_TYPES
    assert "ecdsa-sha2-nistp256-cert-v01@openssh.com" in KEY_TYPES
    for name in KEY_TYPES:
        assert parse_matcher(f"type:{name}").value == name


def test_matcher_is_frozen_and_hashable() -> None:
    m = parse_matcher("comment:x")
    assert {m, parse_matcher("comment:x")} == {m}
    with pytest.raises(AttributeError):
        m.value = "y"  # type: ignore[misc]
