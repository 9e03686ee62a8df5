"""The confirmation hook: ask an external command (or SSH_ASKPASS) before a signature.

Each pending confirmation lives in the requesting connection's task only, so every
other client keeps being served while a person thinks (OpenSSH's agent blocks its
whole loop on askpass; we must not).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import anyio

log = logging.getLogger(__name__)

ALLOW = "allow"
DENY = "deny"
TIMEOUT = "timeout"
ERROR = "error"
CACHE_HIT = "cache_hit"


@dataclass(frozen=True, slots=True)
class ConfirmRequest:
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

    def message(self) -> str:
        who = " ← ".join(self.peer_chain) or f"pid {self.peer_pid}"
        where = f" for {self.destination}" if self.destination else ""
        return (
            f"Allow use of key {self.comment or self.fingerprint}{where}?\n"
            f"Key fingerprint {self.fingerprint}.\nRequested by {who} (uid {self.peer_uid})."
        )

    def environ(self) -> dict[str, str]:
        return {
            "SECRETIVEX_CONFIRM_FINGERPRINT": self.fingerprint,
            "SECRETIVEX_CONFIRM_COMMENT": self.comment,
            "SECRETIVEX_CONFIRM_KEY_TYPE": self.key_type,
            "SECRETIVEX_CONFIRM_DATA_LEN": str(self.data_len),
            "SECRETIVEX_CONFIRM_SOCKET": self.socket,
            "SECRETIVEX_CONFIRM_PEER_PID": str(self.peer_pid),
            "SECRETIVEX_CONFIRM_PEER_UID": str(self.peer_uid),
            "SECRETIVEX_CONFIRM_PEER_GID": str(self.peer_gid),
            "SECRETIVEX_CONFIRM_PEER_EXE": self.peer_exe,
            "SECRETIVEX_CONFIRM_PEER_CHAIN": " ← ".join(self.peer_chain),
            "SECRETIVEX_CONFIRM_DESTINATION": self.destination,
            "SECRETIVEX_CONFIRM_MESSAGE": self.message(),
        }


async def run_confirm_command(
    argv: Sequence[str],
    request: ConfirmRequest,
    timeout_s: float,
    *,
    extra_env: Mapping[str, str] | None = None,
) -> str:
    """Run the hook; exit 0 allows, anything else, a timeout or a spawn failure denies."""
    env = dict(os.environ)
    env.update(request.environ())
    if extra_env:
        env.update(extra_env)
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
        log.warning("confirm command %s could not start: %s", argv[0], exc.strerror or exc)
        return ERROR
    async with process:
        with anyio.move_on_after(timeout_s if timeout_s > 0 else None) as scope:
            code = await process.wait()
        if scope.cancelled_caught:
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, 9)
                await process.wait()
            return TIMEOUT
    return ALLOW if code == 0 else DENY


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
