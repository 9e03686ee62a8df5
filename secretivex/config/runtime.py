"""The settings the running agent uses: one frozen, typed value built from the config.

``SecretivexConfig`` is what a file says (validated, with sources and line numbers for
errors); ``RuntimeSettings`` is what the agent needs, derived once: store names filled
in, matchers parsed, octal modes as bits, lifetimes in seconds. The agent, the stores
and the policy take these values and never re-derive or guess defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from secretivex.config.derive import MIN_REFRESH_MS, derive
from secretivex.config.matchers import Matcher

if TYPE_CHECKING:
    from secretivex.config.models import SecretivexConfig

__all__ = [
    "MIN_REFRESH_MS",
    "SETTINGS_CLASSES",
    "AgentSettings",
    "AuditSettings",
    "ConfirmSettings",
    "FileStoreSettings",
    "ListenerSettings",
    "LoggingSettings",
    "MetricsSettings",
    "Pkcs11StoreSettings",
    "PolicySettings",
    "RuntimeSettings",
    "StoreSettings",
    "UpstreamStoreSettings",
]


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """The ``agent`` section: the main socket, its limits and what clients may do."""

    socket: Path
    profile: str
    max_connections: int
    max_signers: int
    sign_timeout_ms: int
    idle_timeout_ms: int
    identity_cache_ms: int
    listen_backlog: int
    allow_add: bool
    allow_lock: bool
    max_added_keys: int
    max_added_bytes: int
    pkcs11_allowlist: tuple[str, ...]
    max_connections_per_uid: int | None
    reserved_connections: int
    max_buffered_bytes: int
    frame_timeout_ms: int
    default_lifetime_s: int


@dataclass(frozen=True, slots=True)
class FileStoreSettings:
    """A ``file`` store: key files and directories, and where passphrases come from."""

    name: str
    paths: tuple[Path, ...]
    passphrase_env: str | None = None
    passphrase_file: Path | None = None


@dataclass(frozen=True, slots=True)
class Pkcs11StoreSettings:
    """A ``pkcs11`` store: the module, the token and where its PIN comes from."""

    name: str
    module: Path
    token_label: str | None = None
    token_serial: str | None = None
    slot: int | None = None
    pin_env: str | None = None
    pin_file: Path | None = None
    #: Asked at first use: a program's first stdout line, or SSH_ASKPASS.
    pin_command: tuple[str, ...] | None = None
    pin_prompt: bool = False
    pin_timeout_ms: int = 60_000


@dataclass(frozen=True, slots=True)
class UpstreamStoreSettings:
    """An ``upstream`` store: another agent whose keys this one serves."""

    name: str
    socket: Path
    timeout_ms: int
    refresh_ms: int
    stale_expiry_ms: int
    max_signers: int


StoreSettings = FileStoreSettings | Pkcs11StoreSettings | UpstreamStoreSettings


@dataclass(frozen=True, slots=True)
class ConfirmSettings:
    """The confirmation hook (``policy.confirm``)."""

    command: tuple[str, ...]
    timeout_ms: int
    cache_ms: int
    #: None: no command, the hook applies to no key; () = every key.
    keys: tuple[Matcher, ...] | None
    max_concurrent: int


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """Which keys may sign (``policy``)."""

    allow: tuple[Matcher, ...]
    deny: tuple[Matcher, ...]
    confirm: ConfirmSettings


@dataclass(frozen=True, slots=True)
class ListenerSettings:
    """One extra socket (``listeners``): who may connect and which keys it shows."""

    name: str
    socket: Path
    mode: int
    #: Names are resolved to ids by the agent when it binds (and on every reload).
    owner: int | str | None
    group: int | str | None
    keys: tuple[Matcher, ...]
    peer_uids: tuple[int | str, ...]
    peer_gids: tuple[int | str, ...]
    allow_add: bool
    allow_lock: bool
    max_connections: int | None


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """Where and how often metrics snapshots are written (``metrics``)."""

    path: Path | None
    interval_ms: int
    prometheus_textfile: Path | None


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """The audit log (``audit``)."""

    #: JSON lines file; "-" = stderr; None = off.
    path: str | None


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    """Log level and format (``logging``)."""

    level: str
    format: str


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    """Everything the running agent needs, derived once from the config."""

    agent: AgentSettings
    stores: tuple[StoreSettings, ...]
    policy: PolicySettings
    listeners: tuple[ListenerSettings, ...]
    metrics: MetricsSettings
    audit: AuditSettings
    logging: LoggingSettings

    @classmethod
    def from_config(cls, cfg: SecretivexConfig) -> RuntimeSettings:
        settings: RuntimeSettings = derive(cfg, cls.make)
        return settings

    @staticmethod
    def make(kind: str, /, **fields: Any) -> Any:
        """``derive``'s ``make``: the settings class called ``kind``, built."""
        return SETTINGS_CLASSES[kind](**fields)


#: The settings classes by name, for ``derive`` and the config loader's wire format.
SETTINGS_CLASSES: dict[str, type[Any]] = {
    c.__name__: c
    for c in (
        AgentSettings,
        FileStoreSettings,
        Pkcs11StoreSettings,
        UpstreamStoreSettings,
        ConfirmSettings,
        PolicySettings,
        ListenerSettings,
        MetricsSettings,
        AuditSettings,
        LoggingSettings,
        RuntimeSettings,
    )
}
