"""Declarative configuration: models, the layered loader, matchers, profiles.

Typical use::

    from secretivex.config import LoadRequest, ConfigError

    request = LoadRequest(config_files=(Path("agent.yaml"),), cli_overrides={"agent.socket": sock})
    try:
        loaded = request.load()          # again on SIGHUP
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem)               # e.g. "agent.yaml:12: stores[1].pin_env: set only one ..."
    loaded.config.agent.max_signers, loaded.sources["agent.max_signers"]

The names below are imported on first use (``secretivex.lazy``):
``secretivex.config.runtime`` (what the running agent holds) and
``secretivex.config.errors`` import no pydantic, and the agent process never builds the
models (``secretivex.config.isolated`` validates in a child).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from secretivex.lazy import exports

if TYPE_CHECKING:
    from secretivex.config.errors import ConfigError, ConfigProblem
    from secretivex.config.loader import (
        CONFIG_FILES_ENV,
        ENV_PREFIX,
        ConfigPaths,
        LoadedConfig,
        LoadRequest,
        load_config,
        redacted_dict,
    )
    from secretivex.config.matchers import Matcher, MatcherError, parse_matcher
    from secretivex.config.models import (
        AgentSection,
        AuditSection,
        ConfirmSection,
        FileStore,
        ListenerSection,
        LoggingSection,
        MetricsSection,
        PeersSection,
        Pkcs11Store,
        PolicySection,
        SecretivexConfig,
        StoreConfig,
        UpstreamStore,
        default_socket_path,
    )
    from secretivex.config.profiles import PROFILE_NAMES, profile_defaults

__all__ = [
    "CONFIG_FILES_ENV",
    "ENV_PREFIX",
    "PROFILE_NAMES",
    "AgentSection",
    "AuditSection",
    "ConfigError",
    "ConfigPaths",
    "ConfigProblem",
    "ConfirmSection",
    "FileStore",
    "ListenerSection",
    "LoadRequest",
    "LoadedConfig",
    "LoggingSection",
    "Matcher",
    "MatcherError",
    "MetricsSection",
    "PeersSection",
    "Pkcs11Store",
    "PolicySection",
    "SecretivexConfig",
    "StoreConfig",
    "UpstreamStore",
    "default_socket_path",
    "load_config",
    "parse_matcher",
    "profile_defaults",
    "redacted_dict",
]

#: Public name -> the module defining it (imported by ``__getattr__`` on first use).
_HOMES: dict[str, str] = {
    "AgentSection": "secretivex.config.models",
    "AuditSection": "secretivex.config.models",
    "CONFIG_FILES_ENV": "secretivex.config.loader",
    "ConfigError": "secretivex.config.errors",
    "ConfigPaths": "secretivex.config.loader",
    "ConfigProblem": "secretivex.config.errors",
    "ConfirmSection": "secretivex.config.models",
    "ENV_PREFIX": "secretivex.config.loader",
    "FileStore": "secretivex.config.models",
    "ListenerSection": "secretivex.config.models",
    "LoadRequest": "secretivex.config.loader",
    "LoadedConfig": "secretivex.config.loader",
    "LoggingSection": "secretivex.config.models",
    "Matcher": "secretivex.config.matchers",
    "MatcherError": "secretivex.config.matchers",
    "MetricsSection": "secretivex.config.models",
    "PROFILE_NAMES": "secretivex.config.profiles",
    "PeersSection": "secretivex.config.models",
    "Pkcs11Store": "secretivex.config.models",
    "PolicySection": "secretivex.config.models",
    "SecretivexConfig": "secretivex.config.models",
    "StoreConfig": "secretivex.config.models",
    "UpstreamStore": "secretivex.config.models",
    "default_socket_path": "secretivex.config.models",
    "load_config": "secretivex.config.loader",
    "parse_matcher": "secretivex.config.matchers",
    "profile_defaults": "secretivex.config.profiles",
    "redacted_dict": "secretivex.config.loader",
}


__getattr__ = exports(__name__, globals(), _HOMES)
