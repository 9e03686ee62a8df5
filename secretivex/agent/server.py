"""The agent process: builds stores, policy and listeners from the config, serves them,
and handles signals (TERM/INT drain and exit, HUP reload, USR1/USR2 metrics)."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from secretivex.agent import systemd
from secretivex.agent.audit import AuditLog, AuditPathError
from secretivex.agent.connection import Connection, ConnectionHub, ConnectionTasks, refusals
from secretivex.agent.dispatcher import Dispatcher, Limits
from secretivex.agent.heap import trim_heap
from secretivex.agent.limits import ConnectionLimits, ConnectionTracker
from secretivex.agent.listeners import (
    ListenerError,
    ListenerSpec,
    apply_mode_and_owner,
    bind_listener,
    resolve_gid,
    resolve_uid,
    unlink_socket,
)
from secretivex.agent.systemd import take_inherited
from secretivex.config.runtime import (
    AgentSettings,
    FileStoreSettings,
    MetricsSettings,
    Pkcs11StoreSettings,
    PolicySettings,
    RuntimeSettings,
    StoreSettings,
)
from secretivex.metrics import MetricsRecorder, run_metrics_writer
from secretivex.policy.engine import Policy
from secretivex.stores.base import KeyStore, StoreError
from secretivex.stores.memory import MemoryStore
from secretivex.stores.registry import StoreRegistry
from secretivex.stores.secrets import secret_reader

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 5.0
#: Trim the heap once this many bytes of frame buffers were released (checked each second).
TRIM_AFTER_BYTES = 1024 * 1024
MAIN_LISTENER = "agent"


class AgentStartupError(Exception):
    """The agent cannot start (socket in use, bad store setup); exit code 1."""


def build_store(settings: StoreSettings) -> KeyStore:
    if isinstance(settings, FileStoreSettings):
        from secretivex.stores.file import FileStore

        return FileStore(
            settings.name,
            list(settings.paths),
            secret_reader(
                settings.passphrase_env,
                None if settings.passphrase_file is None else str(settings.passphrase_file),
            ),
        )
    if isinstance(settings, Pkcs11StoreSettings):
        from secretivex.stores.pkcs11 import Pkcs11Store

        return Pkcs11Store.from_config(settings)
    from secretivex.stores.upstream import UpstreamStore

    return UpstreamStore.from_config(settings)


def build_policy(settings: PolicySettings) -> Policy:
    confirm = settings.confirm
    return Policy(
        allow=settings.allow,
        deny=settings.deny,
        confirm_command=confirm.command,
        confirm_timeout_ms=confirm.timeout_ms,
        confirm_cache_ms=confirm.cache_ms,
        confirm_max_concurrent=confirm.max_concurrent,
        confirm_keys=confirm.keys,
    )


def build_listener_specs(settings: RuntimeSettings) -> list[ListenerSpec]:
    agent = settings.agent
    specs = [
        ListenerSpec(
            name=MAIN_LISTENER,
            path=agent.socket,
            allow_add=agent.allow_add,
            allow_lock=agent.allow_lock,
        )
    ]
    for lc in settings.listeners:
        specs.append(
            ListenerSpec(
                name=lc.name,
                path=lc.socket,
                mode=lc.mode,
                owner=resolve_uid(lc.owner),
                group=resolve_gid(lc.group),
                keys=lc.keys,
                peer_uids=frozenset(resolve_uid(u) or 0 for u in lc.peer_uids),
                peer_gids=frozenset(resolve_gid(g) or 0 for g in lc.peer_gids),
                allow_add=lc.allow_add,
                allow_lock=lc.allow_lock,
                max_connections=lc.max_connections,
            )
        )
    return specs


class _Refused(asyncio.Protocol):
    """A connection to a socket no listener serves: closed as soon as it is accepted."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


@dataclass(eq=False)
class _Serving:
    spec: ListenerSpec
    sock: socket.socket
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
        settings: RuntimeSettings,
        *,
        reload_settings: Callable[[], RuntimeSettings] | None = None,
        on_listening: Callable[[Path], None] | None = None,
        inherited: dict[str, socket.socket] | None = None,
    ) -> None:
        self.settings = settings
        self._reload_settings = reload_settings
        self._on_listening = on_listening
        self._inherited = dict(inherited or {})
        #: Sockets passed by socket activation that no listener serves, by fd: their
        #: connections are closed at once until a reload adds a listener for them.
        self._refusers: dict[int, asyncio.AbstractServer] = {}
        agent = settings.agent
        self.registry = StoreRegistry(
            [build_store(s) for s in settings.stores],
            MemoryStore(max_keys=agent.max_added_keys, max_bytes=agent.max_added_bytes),
        )
        self.audit = AuditLog(settings.audit.path)
        self.metrics = MetricsRecorder(profile=agent.profile)
        self.audit.on_drop = self.metrics.on_audit_dropped
        self.dispatcher = Dispatcher(
            self.registry,
            build_policy(settings.policy),
            Limits(agent.max_signers, agent.sign_timeout_ms),
            allow_add=agent.allow_add,
            pkcs11_allowlist=agent.pkcs11_allowlist,
            metrics=self.metrics,
            audit=self.audit,
            health=self._health_extra,
            spawn=self._spawn_maintenance,
            default_lifetime_s=agent.default_lifetime_s,
        )
        self.tracker = ConnectionTracker(ConnectionLimits.from_config(agent))
        self._serving: dict[Path, _Serving] = {}
        self._tg: TaskGroup | None = None
        #: Every connection's request tasks (agent/connection.py); closed on shutdown.
        self.connections = ConnectionTasks()
        #: What every connection shares (agent/connection.py).
        self.hub = ConnectionHub(
            self.dispatcher, self.tracker, _seconds(agent.idle_timeout_ms), self.connections
        )
        self._metrics_scope: anyio.CancelScope | None = None
        self._stopped = anyio.Event()

    def _health_extra(self) -> dict[str, Any]:
        """Main-socket-only part of the health document: sockets, connections and the
        limits in force (read from the objects that enforce them, so a reload shows)."""
        limits = self.tracker.limits
        return {
            "listeners": [
                {"name": s.spec.name, "socket": str(s.spec.path), "scoped": bool(s.spec.keys)}
                for s in self._serving.values()
            ],
            "connections": self.tracker.active,
            "limits": {
                "max_connections": limits.max_connections,
                "max_connections_per_uid": limits.max_per_uid,
                "reserved_connections": limits.reserved_for_owner,
                "max_buffered_bytes": limits.max_buffered_bytes,
                "max_signers": self.dispatcher.limits.max_signers,
                "sign_timeout_ms": self.dispatcher.limits.sign_timeout_ms,
                "idle_timeout_ms": round((self.hub.idle_timeout_s or 0) * 1000),
            },
        }

    @property
    def main_socket(self) -> Path:
        return self.settings.agent.socket

    # -- lifecycle --------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT (or ``stop()``), then drain and clean up."""
        for store in self.registry.stores:
            await store.open()
        try:
            # Bind every socket before any task group opens: a startup error then
            # reaches the CLI as itself (one line), not wrapped in an ExceptionGroup.
            try:
                specs = build_listener_specs(self.settings)
            except ListenerError as exc:
                raise AgentStartupError(str(exc)) from None
            for spec in specs:
                await self._open_listener(spec)
            async with anyio.create_task_group() as tg:
                self._tg = tg
                try:
                    for serving in self._serving.values():
                        tg.start_soon(self._serve_listener, serving)
                    await self._refuse_unclaimed()
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
                    # Connections finish their request within the grace period; what is
                    # left then is cancelled.
                    await self.connections.close(SHUTDOWN_GRACE_S)
                finally:
                    with anyio.CancelScope(shield=True):
                        await self.connections.close(0)
                    self.tracker.drain()  # connections made while the listeners closed
                tg.cancel_scope.cancel()
        finally:
            for refuser in self._refusers.values():
                refuser.close()
            self._refusers.clear()
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
        systemd.notify(state)

    # -- listeners --------------------------------------------------------------------

    async def _open_listener(self, spec: ListenerSpec) -> _Serving:
        """Bind (or adopt from systemd) one socket; recorded at once so that a later
        failure still removes it."""
        inherited = take_inherited(self._inherited, spec.name, str(spec.path))
        identity: tuple[int, int] | None = None
        if inherited is not None:
            refuser = self._refusers.pop(inherited.fileno(), None)
            if refuser is not None:  # a reload added the listener for it: served now
                refuser.close()
            spec.adopt_socket_file()
            sock = inherited
        else:
            try:
                bound = bind_listener(spec, self.settings.agent.listen_backlog)
            except ListenerError as exc:
                raise AgentStartupError(str(exc)) from None
            sock, identity = bound.sock, (bound.dev, bound.ino)
        sock.setblocking(False)
        serving = _Serving(spec, sock, inherited=inherited is not None, identity=identity)
        self._serving[spec.path] = serving
        return serving

    async def _refuse_unclaimed(self) -> None:
        """Close at once every connection to a socket systemd passed that no listener
        serves (a socket unit enabled without its ``listeners:`` entry): left alone, its
        clients would wait in the backlog forever, since systemd does not start an agent
        that already runs. Each such socket gets one WARNING saying what to do."""
        loop = asyncio.get_running_loop()
        for label, sock in self._inherited.items():
            if sock.fileno() in self._refusers:
                continue
            path = systemd.socket_path(sock) or label
            log.warning(
                "socket activation passed %s, but no listener in the config serves it: "
                "its clients are disconnected at once (add a listeners: entry with "
                "socket: %s, then reload; or disable that socket unit)",
                path,
                path,
            )
            # A duplicate descriptor: closing the refuser leaves the inherited one open
            # for the listener a reload may add.
            spare = sock.dup()
            spare.setblocking(False)
            self._refusers[sock.fileno()] = await loop.create_unix_server(
                _Refused, sock=spare, backlog=self.settings.agent.listen_backlog
            )

    async def _start_listener(self, spec: ListenerSpec) -> None:
        serving = await self._open_listener(spec)
        assert self._tg is not None
        self._tg.start_soon(self._serve_listener, serving)

    async def _serve_listener(self, serving: _Serving) -> None:
        """Serve one listening socket until its scope is cancelled.

        The event loop accepts and creates each connection's transport (in C with
        uvloop) and its ``Connection``, which admits it and answers its requests. Out of
        file descriptors, the loop drops pending connections and keeps listening
        (libuv's reserve descriptor; asyncio pauses accepting for a second).
        """
        spec, hub = serving.spec, self.hub
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(
            lambda: Connection(hub, spec),
            sock=serving.sock,
            backlog=self.settings.agent.listen_backlog,
        )
        try:
            with serving.scope:
                await anyio.sleep_forever()
        finally:
            server.close()

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
        """(Re)start the snapshot writer with the current ``metrics.*`` settings."""
        if self._metrics_scope is not None:
            self._metrics_scope.cancel()
            self._metrics_scope = None
        m = self.settings.metrics
        if m.path is None and m.prometheus_textfile is None:
            return
        scope = self._metrics_scope = anyio.CancelScope()
        tg.start_soon(self._metrics_loop, scope, m)

    async def _metrics_loop(self, scope: anyio.CancelScope, m: MetricsSettings) -> None:
        with scope:
            await run_metrics_writer(
                self.metrics,
                m.path,
                m.interval_ms,
                m.prometheus_textfile,
                health=self.registry.health,
            )

    # -- reload -----------------------------------------------------------------------

    async def reload(self) -> bool:
        """SIGHUP: apply a valid new config without dropping connections; keep the old
        one in force when the new one is invalid."""
        self._notify("RELOADING=1")
        try:
            if self._reload_settings is None:
                for store in self.registry.stores:
                    await store.reload()
                return True
            try:
                # A fresh interpreter validates the config (~0.3 s): off the loop, so
                # clients are answered meanwhile.
                new = await anyio.to_thread.run_sync(self._reload_settings)
            except Exception as exc:
                log.error("reload rejected, keeping the running config: %s", exc)
                return False
            try:
                await self._apply(new)
            except (
                ListenerError,
                StoreError,
                AgentStartupError,
                AuditPathError,
                ValueError,
            ) as exc:
                log.error("reload failed, keeping the running config: %s", exc)
                return False
            log.info("configuration reloaded")
            return True
        finally:
            self._notify("READY=1")

    async def _apply(self, new: RuntimeSettings) -> None:
        # Build everything first; only then swap, so a failure leaves the old state intact.
        old = self.settings
        new = _keep_restart_only(old, new)
        policy = build_policy(new.policy)
        specs = {s.path: s for s in build_listener_specs(new)}
        audit = AuditLog(new.audit.path) if new.audit != old.audit else None
        old_by_name = {s.name: s for s in self.registry.configured}
        old_settings = {s.name: s for s in old.stores}
        new_stores: list[KeyStore] = []
        opened: list[KeyStore] = []
        try:
            for scfg in new.stores:
                existing = old_by_name.get(scfg.name)
                if existing is not None and old_settings.get(scfg.name) == scfg:
                    await existing.reload()
                    new_stores.append(existing)
                else:
                    candidate = build_store(scfg)
                    await candidate.open()
                    opened.append(candidate)
                    new_stores.append(candidate)
        except BaseException:
            if audit is not None:
                audit.close()
            raise
        # Listeners: start new ones, update changed ones in place, stop removed ones.
        recheck: set[Path] = set()  # listeners whose open connections are checked again
        for path, spec in specs.items():
            serving = self._serving.get(path)
            if serving is None:
                await self._start_listener(spec)
            elif _update_spec(
                serving.spec, spec, identity=None if serving.inherited else serving.identity
            ):
                recheck.add(path)
        for path in [p for p in self._serving if p not in specs]:
            serving = self._serving.pop(path)
            serving.spec.retired = True
            recheck.add(path)
            if serving.inherited:  # systemd keeps it listening: refuse, never hang
                self._inherited[str(path)] = serving.sock.dup()
            serving.scope.cancel()
            serving.unlink()
        await self._refuse_unclaimed()
        removed = [s for s in self.registry.configured if s not in new_stores]
        self.registry.configured = new_stores
        self._apply_agent(new.agent, policy)
        if audit is not None:
            audit.on_drop = self.metrics.on_audit_dropped
            self.audit.close()
            self.audit = self.dispatcher.audit = audit
        self.settings = new
        # Connections opened under the old config stay only if the new one admits them.
        self.tracker.recheck(frozenset(recheck))
        assert self._tg is not None
        if new.metrics != old.metrics:
            self._start_metrics_writer(self._tg)
        for store in opened:
            self._tg.start_soon(self._maintain, store)
        for store in removed:
            await store.aclose()

    def _apply_agent(self, agent: AgentSettings, policy: Policy) -> None:
        """Every ``agent.*`` setting that can change while the agent runs."""
        d = self.dispatcher
        d.policy = policy
        d.allow_add = agent.allow_add
        d.pkcs11_allowlist = agent.pkcs11_allowlist
        d.default_lifetime_s = agent.default_lifetime_s
        if (agent.max_signers, agent.sign_timeout_ms) != (
            self.settings.agent.max_signers,
            self.settings.agent.sign_timeout_ms,
        ):
            # Signs in flight finish under the old limits; new ones queue on the new.
            d.limits = Limits(agent.max_signers, agent.sign_timeout_ms)
        d.invalidate()
        memory = self.registry.memory
        memory.max_keys, memory.max_bytes = agent.max_added_keys, agent.max_added_bytes
        self.tracker.limits = ConnectionLimits.from_config(agent)
        self.hub.idle_timeout_s = _seconds(agent.idle_timeout_ms)
        self.metrics.profile = agent.profile


def _keep_restart_only(old: RuntimeSettings, new: RuntimeSettings) -> RuntimeSettings:
    """``new`` with the settings read only at start kept at their running values; one
    WARNING line names each such key the reload changed."""
    running = {
        "agent.socket": (old.agent.socket, new.agent.socket),
        "agent.listen_backlog": (old.agent.listen_backlog, new.agent.listen_backlog),
        "logging.level": (old.logging.level, new.logging.level),
        "logging.format": (old.logging.format, new.logging.format),
    }
    changed = [key for key, (before, after) in running.items() if before != after]
    if changed:
        log.warning(
            "reload: %s changed; restart the agent to apply (the running values stay)",
            ", ".join(changed),
        )
    agent = replace(new.agent, socket=old.agent.socket, listen_backlog=old.agent.listen_backlog)
    return replace(new, agent=agent, logging=old.logging)


def _seconds(ms: int) -> float | None:
    """A ``*_ms`` setting in seconds; 0 = off (None)."""
    return ms / 1000 if ms > 0 else None


def _update_spec(
    current: ListenerSpec, new: ListenerSpec, *, identity: tuple[int, int] | None
) -> bool:
    """Apply ``new`` to the running ``current`` in place; True when who it admits
    changed (its open connections must then be checked again). The socket file is
    chmod/chowned only when it is still the one we bound (``identity``; None = not
    ours, e.g. systemd's)."""
    admission = (new.peer_uids, new.peer_gids, new.group)
    changed = admission != (current.peer_uids, current.peer_gids, current.group)
    if identity is not None and (current.mode, current.owner, current.group) != (
        new.mode,
        new.owner,
        new.group,
    ):
        apply_mode_and_owner(current.path, new, identity)
    current.mode, current.owner, current.group = new.mode, new.owner, new.group
    current.keys = new.keys
    current.peer_uids, current.peer_gids = new.peer_uids, new.peer_gids
    current.allow_add, current.allow_lock = new.allow_add, new.allow_lock
    current.max_connections = new.max_connections
    current._visible.clear()
    return changed
