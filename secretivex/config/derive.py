"""How ``RuntimeSettings`` follow from a validated config, without the settings classes.

``derive`` names each settings value it builds (``"AgentSettings"``...) and hands its
fields to ``make``. ``RuntimeSettings.from_config`` makes the dataclasses; the config
loader child (``secretivex.config.isolated``) makes their wire form instead, so it never
imports ``secretivex.config.runtime``: creating its dataclasses costs as much as a
tenth of the child's time, on the agent's start-up path (the agent imports them
meanwhile, for its own use).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from secretivex.config.models import ListenerSection, SecretivexConfig, StoreConfig

__all__ = ["MIN_REFRESH_MS", "Make", "derive"]

#: Fastest an upstream listing is re-read, whatever ``identity_cache_ms`` says.
MIN_REFRESH_MS = 100


class Make(Protocol):
    """Builds the settings value called ``kind`` (a class in ``config.runtime``)."""

    def __call__(self, kind: str, /, **fields: Any) -> Any: ...


def derive(cfg: SecretivexConfig, make: Make) -> Any:
    """The ``RuntimeSettings`` of ``cfg``, each value built by ``make``."""
    a = cfg.agent
    agent = make(
        "AgentSettings",
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
    policy = make(
        "PolicySettings",
        allow=tuple(cfg.policy.allow),
        deny=tuple(cfg.policy.deny),
        confirm=make(
            "ConfirmSettings",
            command=tuple(c.command),
            timeout_ms=c.timeout_ms,
            cache_ms=c.cache_ms,
            keys=tuple(c.keys) if c.command else None,
            max_concurrent=c.max_concurrent,
        ),
    )
    m = cfg.metrics
    return make(
        "RuntimeSettings",
        agent=agent,
        stores=tuple(_store(make, s, i, a.identity_cache_ms) for i, s in enumerate(cfg.stores)),
        policy=policy,
        listeners=tuple(_listener(make, lc, i) for i, lc in enumerate(cfg.listeners)),
        metrics=make(
            "MetricsSettings",
            path=m.path,
            interval_ms=m.interval_ms,
            prometheus_textfile=m.prometheus_textfile,
        ),
        audit=make("AuditSettings", path=cfg.audit.path),
        logging=make("LoggingSettings", level=cfg.logging.level, format=cfg.logging.format),
    )


def _store(make: Make, s: StoreConfig, index: int, identity_cache_ms: int) -> Any:
    """Settings of one store; an unnamed store is called ``<type>-<index>``; an upstream
    without ``refresh_ms`` refreshes every ``agent.identity_cache_ms``."""
    name = s.name or f"{s.type}-{index}"
    if s.type == "file":
        return make(
            "FileStoreSettings",
            name=name,
            paths=tuple(s.paths),
            passphrase_env=s.passphrase_env,
            passphrase_file=s.passphrase_file,
        )
    if s.type == "pkcs11":
        return make(
            "Pkcs11StoreSettings",
            name=name,
            module=s.module,
            token_label=s.token_label,
            token_serial=s.token_serial,
            slot=s.slot,
            pin_env=s.pin_env,
            pin_file=s.pin_file,
            pin_command=None if s.pin_command is None else tuple(s.pin_command),
            pin_prompt=bool(s.pin_prompt),
            pin_timeout_ms=s.pin_timeout_ms,
        )
    refresh_ms = max(identity_cache_ms, MIN_REFRESH_MS) if s.refresh_ms is None else s.refresh_ms
    return make(
        "UpstreamStoreSettings",
        name=name,
        socket=s.socket,
        timeout_ms=s.timeout_ms,
        refresh_ms=refresh_ms,
        stale_expiry_ms=s.stale_expiry_ms,
        max_signers=s.max_signers,
    )


def _listener(make: Make, lc: ListenerSection, index: int) -> Any:
    return make(
        "ListenerSettings",
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
