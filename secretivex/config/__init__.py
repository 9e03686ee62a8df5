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
"""

from secretivex.config.loader import (
    CONFIG_FILES_ENV,
    ENV_PREFIX,
    ConfigError,
    ConfigPaths,
    ConfigProblem,
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
