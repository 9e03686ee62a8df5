"""The confirmation hook: ask an external command (or SSH_ASKPASS) before a signature.

Each pending confirmation lives in the requesting connection's task only, so every
other client keeps being served while a person thinks (OpenSSH's agent blocks its
whole loop on askpass; we must not).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass

import anyio

from secretivex.children import kill_process_group, minimal_environment
from secretivex.outcomes import ConfirmOutcome

log = logging.getLogger(__name__)

ALLOW = ConfirmOutcome.ALLOW
DENY = ConfirmOutcome.DENY
TIMEOUT = ConfirmOutcome.TIMEOUT
ERROR = ConfirmOutcome.ERROR
CACHE_HIT = ConfirmOutcome.CACHE_HIT
HANGUP = ConfirmOutcome.HANGUP

#: The separator of the process chain ("ssh ← git ← zsh").
CHAIN_SEPARATOR = " ← "
#: How much of one process name the prompt shows (``comm`` is 15 bytes; ``argv[0]``,
#: which a process chooses freely, can be a page).
MAX_SHOWN_NAME = 64


def shown(text: str, limit: int | None = None) -> str:
    """``text`` fit to show a person deciding: control characters (a newline would start
    a line of the peer's choosing in the prompt, an escape would reach a terminal),
    bidirectional overrides and the chain's own arrow become ``?``; cut to ``limit``
    characters with an ellipsis. Key comments are capped as listings cap them."""
    # Imported here, as the stores that list foreign keys do: its unicodedata has no
    # place in an agent that never prompts (docs/performance.md, idle RSS).
    from secretivex.keys.listed import listed_comment

    cleaned = listed_comment(text).replace("\u2190", "?")
    if limit is not None and len(cleaned) > limit:
        cleaned = cleaned[: limit - 1] + "\u2026"
    return cleaned


@dataclass(frozen=True, slots=True)
class ConfirmRequest:
    """What the confirmation hook is told about a signature request."""

    fingerprint: str
    comment: str
    key_type: str
    data_len: int
    socket: str
    peer_pid: int
    peer_uid: int
    peer_gid: int
    peer_exe: str
    peer_chain: tuple[str, ...]
    destination: str = ""

    def chain(self) -> str:
        """The peer's process chain as shown: every name cleaned and capped, since the
        peer chose them (``exec -a``), so none can add a line or hide the uid."""
        return CHAIN_SEPARATOR.join(shown(name, MAX_SHOWN_NAME) for name in self.peer_chain)

    def message(self) -> str:
        who = self.chain() or f"pid {self.peer_pid}"
        where = f" for {shown(self.destination)}" if self.destination else ""
        return (
            f"Allow use of key {shown(self.comment) or self.fingerprint}{where}?\n"
            f"Key fingerprint {self.fingerprint}.\nRequested by {who} (uid {self.peer_uid})."
        )

    def environ(self) -> dict[str, str]:
        """The ``SECRETIVEX_CONFIRM_*`` variables; text a client chose (comment,
        executable path, process names) is cleaned as ``shown`` does."""
        return {
            "SECRETIVEX_CONFIRM_FINGERPRINT": self.fingerprint,
            "SECRETIVEX_CONFIRM_COMMENT": shown(self.comment),
            "SECRETIVEX_CONFIRM_KEY_TYPE": self.key_type,
            "SECRETIVEX_CONFIRM_DATA_LEN": str(self.data_len),
            "SECRETIVEX_CONFIRM_SOCKET": self.socket,
            "SECRETIVEX_CONFIRM_PEER_PID": str(self.peer_pid),
            "SECRETIVEX_CONFIRM_PEER_UID": str(self.peer_uid),
            "SECRETIVEX_CONFIRM_PEER_GID": str(self.peer_gid),
            "SECRETIVEX_CONFIRM_PEER_EXE": shown(self.peer_exe),
            "SECRETIVEX_CONFIRM_PEER_CHAIN": self.chain(),
            "SECRETIVEX_CONFIRM_DESTINATION": shown(self.destination),
            "SECRETIVEX_CONFIRM_MESSAGE": self.message(),
        }


@dataclass(frozen=True, slots=True)
class Verdict:
    """A confirmation's outcome (``ALLOW``, ``DENY``...) and, when not allowed, why."""

    outcome: ConfirmOutcome
    reason: str = ""


def hook_environment(
    source: Mapping[str, str], request: ConfirmRequest, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The hook's whole environment: the pass-through list, ``LC_*``, the
    ``SECRETIVEX_CONFIRM_*`` description of the request and ``extra``."""
    env = minimal_environment(source, request.environ())
    if extra:
        env.update(extra)
    return env


async def run_confirm_command(
    argv: Sequence[str],
    request: ConfirmRequest,
    timeout_s: float,
    *,
    extra_env: Mapping[str, str] | None = None,
) -> Verdict:
    """Run the hook; exit 0 allows, anything else, a timeout or a spawn failure denies.

    On a timeout, and when the request is cancelled (client gone, agent stopping), the
    hook's process group is killed, children and grandchildren included.
    """
    env = hook_environment(os.environ, request, extra_env)
    try:
        process = await anyio.open_process(
            list(argv),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=None,
            start_new_session=True,
        )
    except OSError as exc:
        reason = f"confirm command {argv[0]} could not start: {exc.strerror or exc}"
        log.warning("%s", reason)
        return Verdict(ERROR, reason)
    try:
        with anyio.move_on_after(timeout_s if timeout_s > 0 else None) as scope:
            code = await process.wait()
    except BaseException:
        await kill_process_group(process)
        raise
    if scope.cancelled_caught:
        await kill_process_group(process)
        return Verdict(TIMEOUT, f"no answer within {timeout_s:g} s")
    return Verdict(ALLOW) if code == 0 else Verdict(DENY, f"confirm command exited {code}")


class ConfirmSlots:
    """At most ``limit`` hooks run at once; later requests queue (FIFO) until a slot is
    free or their deadline passes. A stuck or slow prompt program cannot make the agent
    fork without bound."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.running = 0
        self._semaphore = anyio.Semaphore(self.limit)

    async def acquire_before(self, deadline: float) -> bool:
        with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
            await self._semaphore.acquire()
            self.running += 1
            return True
        return False

    def release(self) -> None:
        self.running -= 1
        self._semaphore.release()


class ApprovalCache:
    """Remembers approvals for ``cache_ms`` per (key, peer uid, socket)."""

    def __init__(self, window_ms: int) -> None:
        self.window_s = window_ms / 1000
        self._until: dict[tuple[str, int, str], float] = {}

    def hit(self, request: ConfirmRequest) -> bool:
        if self.window_s <= 0:
            return False
        key = (request.fingerprint, request.peer_uid, request.socket)
        until = self._until.get(key)
        if until is None:
            return False
        if until < time.monotonic():
            del self._until[key]
            return False
        return True

    def remember(self, request: ConfirmRequest) -> None:
        if self.window_s > 0:
            key = (request.fingerprint, request.peer_uid, request.socket)
            self._until[key] = time.monotonic() + self.window_s


async def wait_for_hangup(sock: socket.socket) -> None:
    """Return once the client has closed its end of the connection.

    The connection's stream owns the descriptor and is not reading while a request is
    handled, so a duplicate is peeked at a few times a second (no data is consumed; a
    pipelined request already waiting means the client is still there).
    """
    with socket.socket(fileno=os.dup(sock.fileno())) as probe:
        while True:
            try:
                data = probe.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                pass
            except OSError:
                return
            else:
                if not data:
                    return
                await anyio.sleep_forever()
            await anyio.sleep(0.2)


async def confirm_unless_hangup(asking: Awaitable[Verdict], sock: socket.socket | None) -> Verdict:
    """Await the confirmation, cancelling it (which kills the hook's process group) when
    the client hangs up first."""
    if sock is None:
        return await asking
    verdict: Verdict | None = None
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            await wait_for_hangup(sock)
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        verdict = await asking
        tg.cancel_scope.cancel()
    if verdict is None:
        log.info("client hung up while its confirmation was pending; hook stopped")
        return Verdict(HANGUP, "client hung up while the confirmation was pending")
    return verdict
