"""The agent process: builds stores, policy and listeners from the config, serves them,
and handles signals (TERM/INT drain and exit, HUP reload, USR1/USR2 metrics)."""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import SocketListener, SocketStream, TaskGroup, TaskStatus

from secretivex.agent.audit import AuditLog
from secretivex.agent.connection import refusals, serve_connection
from secretivex.agent.dispatcher import Dispatcher, Limits
from secretivex.agent.heap import trim_heap
from secretivex.agent.limits import ConnectionLimits, ConnectionTracker
from secretivex.agent.listeners import (
    ListenerError,
    ListenerSpec,
    bind_listener,
    resolve_gid,
    resolve_uid,
    unlink_socket,
)
from secretivex.agent.systemd import take_inherited
from secretivex.config.matchers import parse_matcher
from secretivex.metrics import MetricsRecorder, run_metrics_writer
from secretivex.policy.engine import Policy
from secretivex.stores.base import KeyStore, StoreError
from secretivex.stores.memory import MemoryStore
from secretivex.stores.registry import StoreRegistry
from secretivex.stores.secrets import secret_reader as _secret_reader

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 5.0
#: Trim the heap once this many bytes of frame buffers were released (checked each second).
TRIM_AFTER_BYTES = 1024 * 1024
MAIN_LISTENER = "agent"


class AgentStartupError(Exception):
    """The agent cannot start (socket in use, bad store setup); exit code 1."""


def store_name(cfg: Any, index: int) -> str:
    return getattr(cfg, "name", None) or f"{cfg.type}-{index}"


def build_store(cfg: Any, index: int) -> KeyStore:
    name = store_name(cfg, index)
    if cfg.type == "file":
        from secretivex.stores.file import FileStore

        return FileStore(name, cfg.paths, _secret_reader(cfg.passphrase_env, cfg.passphrase_file))
    if cfg.type == "pkcs11":
        from secretivex.stores.pkcs11 import Pkcs11Store

        return Pkcs11Store.from_config(cfg, name=name)
    if cfg.type == "upstream":
        from secretivex.stores.upstream import UpstreamStore

        return UpstreamStore.from_config(cfg, name=name)
    raise StoreError(f"unknown store type {cfg.type!r}")


def _matchers(items: Any) -> list[Any]:
    """Config matchers arrive parsed (``Matcher``); plain strings are parsed here."""
    return [parse_matcher(m) if isinstance(m, str) else m for m in items]


def build_policy(cfg: Any) -> Policy:
    pol = cfg.policy
    confirm = pol.confirm
    return Policy(
        allow=_matchers(pol.allow),
        deny=_matchers(pol.deny),
        confirm_command=tuple(confirm.command or ()),
        confirm_timeout_ms=confirm.timeout_ms,
        confirm_cache_ms=confirm.cache_ms,
        confirm_max_concurrent=confirm.max_concurrent,
        confirm_keys=_matchers(confirm.keys) if confirm.command else None,
    )


def build_listener_specs(cfg: Any) -> list[ListenerSpec]:
    agent = cfg.agent
    specs = [
        ListenerSpec(
            name=MAIN_LISTENER,
            path=Path(os.path.expanduser(str(agent.socket))),
            allow_add=agent.allow_add,
            allow_lock=getattr(agent, "allow_lock", True),
        )
    ]
    for i, lc in enumerate(cfg.listeners):
        peers = lc.peers
        specs.append(
            ListenerSpec(
                name=getattr(lc, "name", None) or f"listener-{i}",
                path=Path(os.path.expanduser(str(lc.socket))),
                mode=int(lc.mode, 8) if isinstance(lc.mode, str) else lc.mode,
                owner=resolve_uid(lc.owner),
                group=resolve_gid(lc.group),
                keys=tuple(_matchers(lc.keys)),
                peer_uids=frozenset(resolve_uid(u) or 0 for u in peers.uids),
                peer_gids=frozenset(resolve_gid(g) or 0 for g in peers.gids),
                allow_add=lc.allow_add,
                allow_lock=lc.allow_lock,
                max_connections=getattr(lc, "max_connections", None),
            )
        )
    return specs


@dataclass(eq=False)
class _Serving:
    spec: ListenerSpec
    listener: SocketListener
    #: Passed in by systemd: the socket file is the service manager's, never ours to
    #: remove or chmod.
    inherited: bool = False
    #: (st_dev, st_ino) of the file we bound: removed on exit only while it is still ours.
    identity: tuple[int, int] | None = None
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)

    def unlink(self) -> None:
        if not self.inherited and self.identity is not None:
            unlink_socket(self.spec.path, *self.identity)


class Agent:
    """Owns every task: listeners, connections, store maintenance, signals, metrics."""

    def __init__(
        self,
        config: Any,
        *,
        reload_config: Callable[[], Any] | None = None,
        on_listening: Callable[[Path], None] | None = None,
        inherited: dict[str, socket.socket] | None = None,
    ) -> None:
        self.config = config
        self._reload_config = reload_config
        self._on_listening = on_listening
        self._inherited = dict(inherited or {})
        self.registry = StoreRegistry(
            [build_store(s, i) for i, s in enumerate(config.stores)],
            MemoryStore(
                max_keys=config.agent.max_added_keys, max_bytes=config.agent.max_added_bytes
            ),
        )
        self._store_configs = {store_name(s, i): s for i, s in enumerate(config.stores)}
        self.audit = AuditLog(config.audit.path)
        self.metrics = self._build_metrics(config)
        self.audit.on_drop = self.metrics.on_audit_dropped
        agent = config.agent
        self.dispatcher = Dispatcher(
            self.registry,
            build_policy(config),
            Limits(agent.max_signers, agent.sign_timeout_ms),
            allow_add=agent.allow_add,
            pkcs11_allowlist=tuple(agent.pkcs11_allowlist),
            metrics=self.metrics,
            audit=self.audit,
            health=self._health_extra,
            spawn=self._spawn_maintenance,
            default_lifetime_s=agent.default_lifetime,
        )
        self.tracker = ConnectionTracker(ConnectionLimits.from_config(agent))
        self.idle_timeout_s = agent.idle_timeout_ms / 1000 if agent.idle_timeout_ms else None
        self._serving: dict[Path, _Serving] = {}
        self._tg: TaskGroup | None = None
        self._conn_tg: TaskGroup | None = None
        self._stopped = anyio.Event()

    @staticmethod
    def _build_metrics(config: Any) -> MetricsRecorder:
        return MetricsRecorder(profile=config.agent.profile)

    def _health_extra(self) -> dict[str, Any]:
        return {
            "listeners": [
                {"name": s.spec.name, "socket": str(s.spec.path), "scoped": bool(s.spec.keys)}
                for s in self._serving.values()
            ],
            "connections": self.tracker.active,
        }

    @property
    def main_socket(self) -> Path:
        return Path(os.path.expanduser(str(self.config.agent.socket)))

    # -- lifecycle --------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT (or ``stop()``), then drain and clean up."""
        for store in self.registry.stores:
            await store.open()
        try:
            # Bind every socket before any task group opens: a startup error then
            # reaches the CLI as itself (one line), not wrapped in an ExceptionGroup.
            try:
                specs = build_listener_specs(self.config)
            except ListenerError as exc:
                raise AgentStartupError(str(exc)) from None
            for spec in specs:
                await self._open_listener(spec)
            async with anyio.create_task_group() as tg:
                self._tg = tg
                async with anyio.create_task_group() as conn_tg:
                    self._conn_tg = conn_tg
                    for serving in self._serving.values():
                        tg.start_soon(self._accept_loop, serving)
                    # Handlers first: a SIGHUP right after READY=1 must reload, not kill.
                    await tg.start(self._signals)
                    for store in self.registry.stores:
                        tg.start_soon(self._maintain, store)
                    tg.start_soon(self._trim_heap_loop)
                    self._start_metrics_writer(tg)
                    self._notify("READY=1")
                    if self._on_listening is not None:
                        self._on_listening(self.main_socket)
                    log.info("secretivex listening on %s", ", ".join(str(p) for p in self._serving))
                    await self._stopped.wait()
                    self._notify("STOPPING=1")
                    for serving in list(self._serving.values()):
                        serving.scope.cancel()
                    self.tracker.drain()
                    with anyio.move_on_after(SHUTDOWN_GRACE_S):
                        while self.tracker.active:
                            await anyio.sleep(0.02)
                    conn_tg.cancel_scope.cancel()
                tg.cancel_scope.cancel()
        finally:
            for serving in list(self._serving.values()):
                serving.unlink()
            self._serving.clear()
            for store in self.registry.stores:
                with anyio.CancelScope(shield=True):
                    try:
                        await store.aclose()
                    except Exception as exc:
                        log.warning("closing store %s: %s", store.name, exc)
            self.audit.close()
            refusals.flush()
            log.info("secretivex stopped")

    def stop(self) -> None:
        self._stopped.set()

    def _spawn_maintenance(self, fn: Callable[[], Awaitable[None]]) -> None:
        if self._tg is not None:
            self._tg.start_soon(self._guarded, fn)

    async def _guarded(self, fn: Callable[[], Awaitable[None]]) -> None:
        try:
            await fn()
        except Exception:
            log.exception("background task failed")

    async def _maintain(self, store: KeyStore) -> None:
        try:
            await store.maintain()
        except Exception:
            log.exception("store %s: maintenance task failed", store.name)

    async def _trim_heap_loop(self) -> None:
        """Give memory of released frame buffers back to the OS, at most once a second."""
        while True:
            await anyio.sleep(1.0)
            if self.tracker.released >= TRIM_AFTER_BYTES:
                self.tracker.released = 0
                trim_heap()

    def _notify(self, state: str) -> None:
        try:
            from secretivex.agent import systemd
        except ImportError:
            return
        systemd.notify(state)

    # -- listeners --------------------------------------------------------------------

    async def _open_listener(self, spec: ListenerSpec) -> _Serving:
        """Bind (or adopt from systemd) one socket; recorded at once so that a later
        failure still removes it."""
        inherited = take_inherited(self._inherited, spec.name, str(spec.path))
        identity: tuple[int, int] | None = None
        if inherited is not None:
            spec.adopt_socket_file()
            sock = inherited
        else:
            try:
                bound = bind_listener(spec, getattr(self.config.agent, "listen_backlog", 512))
            except ListenerError as exc:
                raise AgentStartupError(str(exc)) from None
            sock, identity = bound.sock, (bound.dev, bound.ino)
        sock.setblocking(False)
        listener = await SocketListener.from_socket(sock)
        serving = _Serving(spec, listener, inherited=inherited is not None, identity=identity)
        self._serving[spec.path] = serving
        return serving

    async def _start_listener(self, spec: ListenerSpec) -> None:
        serving = await self._open_listener(spec)
        assert self._tg is not None
        self._tg.start_soon(self._accept_loop, serving)

    async def _accept_loop(self, serving: _Serving) -> None:
        assert self._conn_tg is not None
        conn_tg = self._conn_tg
        with serving.scope:
            async with serving.listener:
                while True:
                    try:
                        stream: SocketStream = await serving.listener.accept()
                    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                        return
                    except OSError as exc:  # EMFILE and friends: back off, keep serving
                        log.warning("accept on %s failed: %s", serving.spec.path, exc)
                        await anyio.sleep(0.1)
                        continue
                    conn_tg.start_soon(
                        serve_connection,
                        stream,
                        serving.spec,
                        self.dispatcher,
                        self.tracker,
                        self.idle_timeout_s,
                    )

    # -- signals ----------------------------------------------------------------------

    async def _signals(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        wanted = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2]
        with anyio.open_signal_receiver(*wanted) as signals:
            task_status.started()
            async for signum in signals:
                if signum in (signal.SIGTERM, signal.SIGINT):
                    log.info("received %s: draining and exiting", signal.Signals(signum).name)
                    self.stop()
                    return
                if signum == signal.SIGHUP:
                    await self.reload()
                elif signum == signal.SIGUSR1:
                    self.metrics.request_write("snapshot")
                elif signum == signal.SIGUSR2:
                    self.metrics.request_write("reset")

    # -- metrics ----------------------------------------------------------------------

    def _start_metrics_writer(self, tg: TaskGroup) -> None:
        mcfg = self.config.metrics
        if not (mcfg.path or mcfg.prometheus_textfile):
            return
        tg.start_soon(self._metrics_loop)

    async def _metrics_loop(self) -> None:
        mcfg = self.config.metrics
        await run_metrics_writer(
            self.metrics,
            mcfg.path,
            mcfg.interval_ms,
            mcfg.prometheus_textfile,
            health=self.registry.health,
        )

    # -- reload -----------------------------------------------------------------------

    async def reload(self) -> bool:
        """SIGHUP: apply a valid new config without dropping connections; keep the old
        one in force when the new one is invalid."""
        self._notify("RELOADING=1")
        try:
            if self._reload_config is None:
                for store in self.registry.stores:
                    await store.reload()
                return True
            try:
                new = self._reload_config()
            except Exception as exc:
                log.error("reload rejected, keeping the running config: %s", exc)
                return False
            try:
                await self._apply(new)
            except (ListenerError, StoreError, AgentStartupError, ValueError) as exc:
                log.error("reload failed, keeping the running config: %s", exc)
                return False
            log.info("configuration reloaded")
            return True
        finally:
            self._notify("READY=1")

    async def _apply(self, new: Any) -> None:
        # Build everything first; only then swap, so a failure leaves the old state intact.
        policy = build_policy(new)
        specs = {s.path: s for s in build_listener_specs(new)}
        old_by_name = {s.name: s for s in self.registry.configured}
        new_stores: list[KeyStore] = []
        opened: list[KeyStore] = []
        store_configs: dict[str, Any] = {}
        for i, scfg in enumerate(new.stores):
            name = store_name(scfg, i)
            store_configs[name] = scfg
            existing = old_by_name.get(name)
            if existing is not None and self._store_configs.get(name) == scfg:
                await existing.reload()
                new_stores.append(existing)
            else:
                candidate = build_store(scfg, i)
                await candidate.open()
                opened.append(candidate)
                new_stores.append(candidate)
        # Listeners: start new ones, update changed ones in place, stop removed ones.
        for path, spec in specs.items():
            serving = self._serving.get(path)
            if serving is None:
                await self._start_listener(spec)
            else:
                _update_spec(serving.spec, spec, chmod=not serving.inherited)
        for path in [p for p in self._serving if p not in specs]:
            serving = self._serving.pop(path)
            serving.scope.cancel()
            serving.unlink()
        removed = [s for s in self.registry.configured if s not in new_stores]
        self.registry.configured = new_stores
        self._store_configs = store_configs
        self.dispatcher.policy = policy
        self.dispatcher.default_lifetime_s = new.agent.default_lifetime
        self.dispatcher.invalidate()
        self.tracker.limits = ConnectionLimits.from_config(new.agent)
        self.config = new
        assert self._tg is not None
        for store in opened:
            self._tg.start_soon(self._maintain, store)
        for store in removed:
            await store.aclose()


def _update_spec(current: ListenerSpec, new: ListenerSpec, *, chmod: bool = True) -> None:
    if chmod and (current.mode, current.owner, current.group) != (new.mode, new.owner, new.group):
        os.chmod(current.path, new.mode)
        if new.owner is not None or new.group is not None:
            os.chown(
                current.path,
                -1 if new.owner is None else new.owner,
                -1 if new.group is None else new.group,
            )
    current.mode, current.owner, current.group = new.mode, new.owner, new.group
    current.keys = new.keys
    current.peer_uids, current.peer_gids = new.peer_uids, new.peer_gids
    current.allow_add, current.allow_lock = new.allow_add, new.allow_lock
    current.max_connections = new.max_connections
    current._visible.clear()
