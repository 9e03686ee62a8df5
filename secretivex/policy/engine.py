"""Allow/deny and confirmation rules for keys, decided per identity and cached per blob."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Protocol

import anyio

from secretivex.keys.identity import Identity
from secretivex.policy.confirm import (
    ALLOW,
    CACHE_HIT,
    ERROR,
    TIMEOUT,
    ApprovalCache,
    ConfirmRequest,
    ConfirmSlots,
    Verdict,
    run_confirm_command,
)

log = logging.getLogger(__name__)

#: Why a confirmation could not even be asked (audit detail and WARNING).
NO_CONFIRM_PROGRAM = "no confirm command and SSH_ASKPASS unset"


class KeyMatcher(Protocol):
    def matches(self, fingerprint: str, comment: str, key_type: str) -> bool: ...


def any_match(matchers: Sequence[KeyMatcher], ident: Identity) -> bool:
    return any(m.matches(ident.fingerprint, ident.comment, ident.key_type) for m in matchers)


class Policy:
    """Deny wins over allow; an empty allow list allows every key not denied.

    Decisions are pure functions of the identity, so they are cached per blob and the
    whole object is swapped atomically on a config reload.
    """

    def __init__(
        self,
        allow: Sequence[KeyMatcher] = (),
        deny: Sequence[KeyMatcher] = (),
        confirm_command: Sequence[str] = (),
        confirm_timeout_ms: int = 30_000,
        confirm_cache_ms: int = 0,
        confirm_keys: Sequence[KeyMatcher] | None = None,
        confirm_max_concurrent: int = 4,
    ) -> None:
        self.allow = tuple(allow)
        self.deny = tuple(deny)
        self.confirm_command = tuple(confirm_command)
        self.confirm_timeout_s = confirm_timeout_ms / 1000
        #: None = the hook applies to no key unless configured; () = every key.
        self.confirm_keys = None if confirm_keys is None else tuple(confirm_keys)
        self.approvals = ApprovalCache(confirm_cache_ms)
        #: Per policy object: after a reload, hooks still running finish under the old cap.
        self.confirm_slots = ConfirmSlots(confirm_max_concurrent)
        self._permits: dict[bytes, bool] = {}

    def permits(self, ident: Identity) -> bool:
        cached = self._permits.get(ident.blob)
        if cached is None:
            cached = not any_match(self.deny, ident) and (
                not self.allow or any_match(self.allow, ident)
            )
            if len(self._permits) > 4096:
                self._permits.clear()
            self._permits[ident.blob] = cached
        return cached

    def needs_confirm(self, ident: Identity) -> bool:
        if ident.confirm:  # ssh-add -c keys always ask
            return True
        if not self.confirm_command or self.confirm_keys is None:
            return False
        return not self.confirm_keys or any_match(self.confirm_keys, ident)

    async def confirm(self, request: ConfirmRequest) -> Verdict:
        """Ask the hook (or SSH_ASKPASS for ``ssh-add -c`` keys when no hook is set).

        ``timeout_ms`` bounds the whole wait: queueing for a hook slot
        (``max_concurrent``) and the hook itself; running out is a denial.
        """
        if self.approvals.hit(request):
            return Verdict(CACHE_HIT)
        argv: tuple[str, ...] = self.confirm_command
        extra: dict[str, str] = {}
        if not argv:
            # As OpenSSH: with no hook configured, ssh-add -c keys ask SSH_ASKPASS.
            askpass = os.environ.get("SSH_ASKPASS")
            if not askpass:
                log.warning(
                    "cannot confirm use of key %s by uid %d pid %d: %s; denied",
                    request.fingerprint,
                    request.peer_uid,
                    request.peer_pid,
                    NO_CONFIRM_PROGRAM,
                )
                return Verdict(ERROR, NO_CONFIRM_PROGRAM)
            argv = (askpass, request.message())
            extra = {"SSH_ASKPASS": askpass, "SSH_ASKPASS_PROMPT": "confirm"}
        deadline = anyio.current_time() + self.confirm_timeout_s
        slots = self.confirm_slots
        if not await slots.acquire_before(deadline):
            return Verdict(
                TIMEOUT,
                f"queued behind {slots.limit} running confirmations for "
                f"{self.confirm_timeout_s:g} s",
            )
        try:
            remaining = max(deadline - anyio.current_time(), 0.001)
            verdict = await run_confirm_command(argv, request, remaining, extra_env=extra)
        finally:
            slots.release()
        if verdict.outcome == ALLOW:
            self.approvals.remember(request)
        return verdict
