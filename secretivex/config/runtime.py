"""The settings the running agent uses: one frozen, typed value built from the config.

``SecretivexConfig`` is what a file says (validated, with sources and line numbers for
errors); ``RuntimeSettings`` is what the agent needs, derived once: store names filled
in, matchers parsed, octal modes as bits, lifetimes in seconds. The agent, the stores
and the policy take these values and never re-derive or guess defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from secretivex.config.matchers import Matcher

if TYPE_CHECKING:
    from secretivex.config.models import ListenerSection, SecretivexConfig, StoreConfig

__all__ = [
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
        a = cfg.agent
        agent = AgentSettings(
            socket=Path(a.socket).expanduser(),
            profile=a.profile,
            max_connections=a.max_connections,
            max_signers=a.max_signers,
            sign_timeout_ms=a.sign_timeout_ms,
            idle_timeout_ms=a.idle_timeout_ms,
            identity_cache_ms=a.identity_cache_ms,
            listen_backlog=a.listen_backlog,
            allow_add=a.allow_add,
            allow_lock=a.allow_lock,
            max_added_keys=a.max_added_keys,
            max_added_bytes=a.max_added_bytes,
            pkcs11_allowlist=tuple(a.pkcs11_allowlist),
            max_connections_per_uid=a.max_connections_per_uid,
            reserved_connections=a.reserved_connections,
            max_buffered_bytes=a.max_buffered_bytes,
            frame_timeout_ms=a.frame_timeout_ms,
            default_lifetime_s=a.default_lifetime,
        )
        c = cfg.policy.confirm
        policy = PolicySettings(
            allow=tuple(cfg.policy.allow),
            deny=tuple(cfg.policy.deny),
            confirm=ConfirmSettings(
                command=tuple(c.command),
                timeout_ms=c.timeout_ms,
                cache_ms=c.cache_ms,
                keys=tuple(c.keys) if c.command else None,
                max_concurrent=c.max_concurrent,
            ),
        )
        m = cfg.metrics
        return cls(
            agent=agent,
            stores=tuple(_store(s, i, a.identity_cache_ms) for i, s in enumerate(cfg.stores)),
            policy=policy,
            listeners=tuple(_listener(lc, i) for i, lc in enumerate(cfg.listeners)),
            metrics=MetricsSettings(m.path, m.interval_ms, m.prometheus_textfile),
            audit=AuditSettings(cfg.audit.path),
            logging=LoggingSettings(cfg.logging.level, cfg.logging.format),
        )


#: Fastest an upstream listing is re-read, whatever ``identity_cache_ms`` says.
MIN_REFRESH_MS = 100


def _store(s: StoreConfig, index: int, identity_cache_ms: int) -> StoreSettings:
    """Settings of one store; an unnamed store is called ``<type>-<index>``; an upstream
    without ``refresh_ms`` refreshes every ``agent.identity_cache_ms``."""
    name = s.name or f"{s.type}-{index}"
    if s.type == "file":
        return FileStoreSettings(name, tuple(s.paths), s.passphrase_env, s.passphrase_file)
    if s.type == "pkcs11":
        return Pkcs11StoreSettings(
            name,
            s.module,
            s.token_label,
            s.token_serial,
            s.slot,
            s.pin_env,
            s.pin_file,
            pin_command=None if s.pin_command is None else tuple(s.pin_command),
            pin_prompt=bool(s.pin_prompt),
            pin_timeout_ms=s.pin_timeout_ms,
        )
    refresh_ms = max(identity_cache_ms, MIN_REFRESH_MS) if s.refresh_ms is None else s.refresh_ms
    return UpstreamStoreSettings(
        name, s.socket, s.timeout_ms, refresh_ms, s.stale_expiry_ms, s.max_signers
    )


def _listener(lc: ListenerSection, index: int) -> ListenerSettings:
    return ListenerSettings(
        name=f"listener-{index}",
        socket=Path(lc.socket).expanduser(),
        mode=lc.mode_bits,
        owner=lc.owner,
        group=lc.group,
        keys=tuple(lc.keys),
        peer_uids=tuple(lc.peers.uids),
        peer_gids=tuple(lc.peers.gids),
        allow_add=lc.allow_add,
        allow_lock=lc.allow_lock,
        max_connections=lc.max_connections,
    )
