"""Config models: per-field validators and cross-key rules, without the loader."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from secretivex.config.matchers import Matcher
from secretivex.config.models import (
    SOCKET_PATH_MAX_BYTES,
    FileStore,
    ListenerSection,
    Pkcs11Store,
    SecretivexConfig,
    UpstreamStore,
    default_socket_path,
    host_checks,
)
from secretivex.config.profiles import PROFILES, PerCpu, detect_cpu_count, profile_defaults


def build(data: dict[str, Any], *, checks: bool = False) -> SecretivexConfig:
    with host_checks(checks):
        return SecretivexConfig.model_validate(data)


def error_of(data: dict[str, Any], *, checks: bool = False) -> str:
    with pytest.raises(ValidationError) as info:
        build(data, checks=checks)
    return str(info.value)


def test_defaults_without_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/4242")
    config = SecretivexConfig()
    assert config.agent.socket == Path("/run/user/4242/secretivex/agent.sock")
    assert config.agent.profile == "balanced"
    assert config.agent.max_signers == 4 * detect_cpu_count()
    assert [type(s) for s in config.stores] == [FileStore]
    store = config.stores[0]
    assert isinstance(store, FileStore)
    assert store.name == "file-0"
    assert store.paths == [Path("~/.ssh").expanduser()]
    assert config.listeners == []
    assert config.logging.level == "info"


def test_model_ignores_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the loader reads SECRETIVEX_* (so every value has a recorded source).
    monkeypatch.setenv("SECRETIVEX_AGENT__MAX_CONNECTIONS", "7")
    assert SecretivexConfig().agent.max_connections == 1024


def test_default_socket_path_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_socket_path({}) == Path("~/.secretivex/agent.sock").expanduser()
    assert (
        default_socket_path({"XDG_RUNTIME_DIR": "relative"})
        == Path("~/.secretivex/agent.sock").expanduser()
    )
    assert default_socket_path({"XDG_RUNTIME_DIR": "/run/user/1"}) == Path(
        "/run/user/1/secretivex/agent.sock"
    )


def test_models_are_frozen() -> None:
    config = build({})
    with pytest.raises(ValidationError):
        config.agent.max_connections = 5


def test_store_names_are_derived_by_position() -> None:
    config = build(
        {
            "stores": [
                {"type": "file", "paths": ["/k"]},
                {"type": "upstream", "socket": "/run/a.sock", "name": "up"},
                {"type": "pkcs11", "module": "/m.so"},
            ]
        }
    )
    assert [s.name for s in config.stores] == ["file-0", "up", "pkcs11-2"]
    assert isinstance(config.stores[1], UpstreamStore)
    assert isinstance(config.stores[2], Pkcs11Store)


def test_duplicate_store_names() -> None:
    text = error_of(
        {
            "stores": [
                {"type": "file", "paths": ["/k"], "name": "a"},
                {"type": "file", "paths": ["/j"], "name": "a"},
            ]
        }
    )
    assert "store name 'a' is already used by stores[0]" in text


def test_tilde_expansion_and_absolute_paths() -> None:
    config = build({"agent": {"socket": "~/s.sock"}, "metrics": {"path": "~/m.json"}})
    home = Path("~").expanduser()
    assert config.agent.socket == home / "s.sock"
    assert config.metrics.path == home / "m.json"
    assert "must be absolute" in error_of({"metrics": {"path": "m.json"}})
    assert "must be absolute" in error_of({"stores": [{"type": "file", "paths": ["keys"]}]})


def test_socket_path_length_limit() -> None:
    ok = "/" + "s" * (SOCKET_PATH_MAX_BYTES - 1)
    assert str(build({"agent": {"socket": ok}}).agent.socket) == ok
    text = error_of({"agent": {"socket": ok + "x"}})
    assert "101 bytes" in text and "sun_path" in text
    # bytes, not characters
    assert "bytes" in error_of({"agent": {"socket": "/" + "é" * 50}})


@pytest.mark.parametrize(
    ("mode", "expected"), [("0660", "0660"), ("660", "0660"), ("0600", "0600"), ("777", "0777")]
)
def test_octal_modes(mode: str, expected: str) -> None:
    listener = ListenerSection.model_validate({"socket": "/run/x.sock", "mode": mode})
    assert listener.mode == expected
    assert listener.mode_bits == int(expected, 8)


@pytest.mark.parametrize(
    ("mode", "needle"),
    [
        (432, "quoted octal string"),
        ("0688", "3 or 4 octal digits"),
        ("66", "3 or 4 octal digits"),
        ("4660", "setuid"),
        ("0060", "owner read and write"),
        (True, "3 or 4 octal digits"),
    ],
)
def test_bad_octal_modes(mode: Any, needle: str) -> None:
    assert needle in error_of({"listeners": [{"socket": "/run/x.sock", "mode": mode}]})


def test_pin_env_and_pin_file_are_exclusive_but_both_optional() -> None:
    base = {"type": "pkcs11", "module": "/m.so"}
    assert build({"stores": [base]}).stores[0].pin_env is None  # type: ignore[union-attr]
    text = error_of({"stores": [{**base, "pin_env": "PIN", "pin_file": "/pin"}]})
    assert "set only one of pin_env and pin_file" in text


def test_token_selectors_are_exclusive() -> None:
    text = error_of(
        {"stores": [{"type": "pkcs11", "module": "/m.so", "token_label": "a", "slot": 0}]}
    )
    assert "set only one of token_label, token_serial, slot" in text


def test_numeric_token_label_is_text() -> None:
    store = build({"stores": [{"type": "pkcs11", "module": "/m.so", "token_serial": 1234}]})
    assert store.stores[0].token_serial == "1234"  # type: ignore[union-attr]


def test_passphrase_sources_are_exclusive() -> None:
    text = error_of(
        {
            "stores": [
                {"type": "file", "paths": ["/k"], "passphrase_env": "P", "passphrase_file": "/p"}
            ]
        }
    )
    assert "set only one of passphrase_env and passphrase_file" in text


def test_env_names_are_checked() -> None:
    text = error_of({"stores": [{"type": "file", "paths": ["/k"], "passphrase_env": "MY-VAR"}]})
    assert "must name an environment variable" in text


def test_pkcs11_module_must_exist_only_with_host_checks(tmp_path: Path) -> None:
    data = {"stores": [{"type": "pkcs11", "module": str(tmp_path / "nope.so")}]}
    assert "does not exist" in error_of(data, checks=True)
    build(data, checks=False)
    module = tmp_path / "mod.so"
    module.write_bytes(b"")
    build({"stores": [{"type": "pkcs11", "module": str(module)}]}, checks=True)


def test_confirm_program_must_be_executable_with_host_checks(tmp_path: Path) -> None:
    program = tmp_path / "approve"
    program.write_text("#!/bin/sh\nexit 0\n")
    data = {"policy": {"confirm": {"command": [str(program), "--yes", 30]}}}
    assert "not an executable file" in error_of(data, checks=True)
    program.chmod(0o755)
    config = build(data, checks=True)
    assert config.policy.confirm.command == [str(program), "--yes", "30"]
    assert "must be absolute" in error_of({"policy": {"confirm": {"command": ["approve"]}}})


def test_confirm_keys_need_a_command() -> None:
    assert "confirm.keys is set but confirm.command is empty" in error_of(
        {"policy": {"confirm": {"keys": ["comment:x"]}}}
    )


def test_matchers_become_matcher_objects_and_dump_as_text() -> None:
    config = build({"policy": {"allow": ["comment:ci-*", "type:ssh-ed25519"]}})
    assert config.policy.allow == [Matcher("comment", "ci-*"), Matcher("type", "ssh-ed25519")]
    assert config.model_dump(mode="json")["policy"]["allow"] == ["comment:ci-*", "type:ssh-ed25519"]
    assert "did you mean type:ssh-ed25519" in error_of({"policy": {"deny": ["type:ed25519"]}})
    assert "must be a string" in error_of({"policy": {"deny": [5]}})


def test_listener_sockets_unique_and_not_the_agent_socket() -> None:
    text = error_of(
        {
            "agent": {"socket": "/run/a.sock"},
            "listeners": [
                {"socket": "/run/b.sock"},
                {"socket": "/run/b.sock"},
                {"socket": "/run/a.sock"},
            ],
        }
    )
    assert "listeners[1].socket: socket already used by listeners[0]" in text
    assert "listeners[2].socket: this is the agent's main socket" in text


def test_upstream_cannot_be_our_own_socket() -> None:
    text = error_of(
        {
            "agent": {"socket": "/run/a.sock"},
            "stores": [{"type": "upstream", "socket": "/run/a.sock"}],
        }
    )
    assert "loop back into the agent" in text


def test_owner_and_group_names_or_ids() -> None:
    listener = {"socket": "/run/x.sock", "owner": "root", "group": "0"}
    config = build({"listeners": [listener]}, checks=True)
    assert (config.listeners[0].owner, config.listeners[0].group) == ("root", 0)
    bad = {"socket": "/run/x.sock", "group": "no-such-group-xyz"}
    assert "no group named" in error_of({"listeners": [bad]}, checks=True)
    build({"listeners": [bad]}, checks=False)
    assert "not a valid user name" in error_of(
        {"listeners": [{"socket": "/run/x.sock", "owner": "a b"}]}
    )
    assert ">= 0" in error_of({"listeners": [{"socket": "/run/x.sock", "owner": -1}]})


def test_prometheus_textfile_suffix() -> None:
    assert ".prom" in error_of({"metrics": {"prometheus_textfile": "/var/lib/x.txt"}})


def test_audit_path_dash_means_stderr() -> None:
    assert build({"audit": {"path": "-"}}).audit.path == "-"
    assert build({"audit": {"path": "~/a.jsonl"}}).audit.path == os.path.expanduser("~/a.jsonl")


def test_logging_level_aliases() -> None:
    assert build({"logging": {"level": "WARN"}}).logging.level == "warning"
    assert "debug" in error_of({"logging": {"level": "loud"}})


def test_timeouts_are_not_negative() -> None:
    for key in ("sign_timeout_ms", "idle_timeout_ms", "identity_cache_ms"):
        assert "greater than or equal to 0" in error_of({"agent": {key: -1}})


def test_unknown_keys_are_rejected_everywhere() -> None:
    for data in (
        {"nope": 1},
        {"agent": {"nope": 1}},
        {"stores": [{"type": "file", "nope": 1}]},
        {"policy": {"confirm": {"nope": 1}}},
        {"listeners": [{"socket": "/run/x.sock", "peers": {"nope": 1}}]},
        {"metrics": {"nope": 1}},
        {"audit": {"nope": 1}},
        {"logging": {"nope": 1}},
    ):
        assert "Extra inputs are not permitted" in error_of(data), data


def test_profiles_scale_with_cpus() -> None:
    assert profile_defaults("balanced", 2)["max_signers"] == 8
    assert profile_defaults("fanout", 2)["max_signers"] == 16
    assert profile_defaults("fanout", 1)["max_signers"] == 8
    assert profile_defaults("pssh", 2)["max_signers"] == 32
    assert profile_defaults("pssh", 8)["max_signers"] == 96
    assert profile_defaults("low-memory", 16)["max_signers"] == 32
    assert profile_defaults("pssh", 4)["max_connections"] == 32768
    assert str(PerCpu(4, 1)) == "4 x CPUs (min 1)"
    keys = {frozenset(values) for values in PROFILES.values()}
    assert len(keys) == 1, "every profile sets the same keys"
    with pytest.raises(KeyError):
        profile_defaults("turbo", 2)
