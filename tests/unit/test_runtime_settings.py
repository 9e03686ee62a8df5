"""RuntimeSettings: derived once from the config model, typed, with nothing left to guess."""

from __future__ import annotations

from pathlib import Path

from secretivex.config.models import SecretivexConfig, host_checks
from secretivex.config.runtime import (
    FileStoreSettings,
    RuntimeSettings,
    UpstreamStoreSettings,
)


def _settings(data: dict[str, object]) -> RuntimeSettings:
    with host_checks(False):
        return RuntimeSettings.from_config(SecretivexConfig.model_validate(data))


def test_upstream_refresh_defaults_to_identity_cache_ms() -> None:
    upstream = {"type": "upstream", "socket": "/run/up.sock"}
    s = _settings({"agent": {"identity_cache_ms": 2500}, "stores": [upstream]})
    assert isinstance(s.stores[0], UpstreamStoreSettings)
    assert s.stores[0].refresh_ms == 2500
    # 0 ("ask every time") is bounded by the fastest refresh an upstream gets.
    assert (
        _settings({"agent": {"identity_cache_ms": 0}, "stores": [upstream]}).stores[0].refresh_ms
        == 100
    )
    explicit = {**upstream, "refresh_ms": 700}
    assert _settings({"stores": [explicit]}).stores[0].refresh_ms == 700


def test_names_modes_and_matchers_are_resolved_once() -> None:
    s = _settings(
        {
            "agent": {"socket": "/run/a/agent.sock", "default_lifetime": "1h30m"},
            "stores": [
                {"type": "file", "paths": ["/k"]},
                {"type": "file", "name": "x", "paths": ["/j"]},
            ],
            "listeners": [{"socket": "/run/a/ci.sock", "mode": "0660", "keys": ["comment:ci-*"]}],
            "policy": {"deny": ["type:ssh-rsa"]},
        }
    )
    assert [st.name for st in s.stores] == ["file-0", "x"]
    assert s.stores[0] == FileStoreSettings("file-0", (Path("/k"),))
    assert s.agent.default_lifetime_s == 5400
    (listener,) = s.listeners
    assert listener.mode == 0o660 and listener.name == "listener-0"
    assert listener.keys[0].matches("SHA256:x", "ci-deploy", "ssh-ed25519")
    assert s.policy.deny[0].matches("SHA256:x", "c", "ssh-rsa")
    # No confirm command: the hook applies to no key.
    assert s.policy.confirm.keys is None
