"""Where a token's user PIN comes from, and how it is kept: in memory only.

* ``pin_env`` / ``pin_file``: ``stores/secrets.py``'s ``SecretSource`` (the variable
  leaves the environment; the file's first line is read at each login).
* ``pin_command: [argv...]``: a program run at first use; the first line of its stdout
  is the PIN.
* ``pin_prompt: true``: ``$SSH_ASKPASS "Enter PIN for token ..."`` at first use, as
  ``ssh-add -s`` asks (``SSH_ASKPASS_PROMPT`` unset: a passphrase-style entry).
* ``ssh-add -s``: the PIN the client sent.

A prompted PIN is asked once and then held in this process's memory (which
``agent/hardening.py`` keeps out of core files and ptrace) for re-logins after token
faults; it is never written anywhere, logged, or put in an error. A prompt that is
cancelled, times out or prints nothing is a store error (``PinPromptFailed``) and is not
asked again on its own; neither is a PIN the token refused (``forget()`` drops it and
the store waits for SIGHUP), so a wrong answer never turns into a prompt loop or a
locked token.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import anyio

from secretivex.children import kill_process_group, minimal_environment
from secretivex.config.runtime import Pkcs11StoreSettings
from secretivex.stores.base import StoreError
from secretivex.stores.secrets import SecretSource

log = logging.getLogger(__name__)

#: A PIN program prints at most this much; more is refused (it is not a PIN).
MAX_PROMPT_OUTPUT = 4096
#: How long a prompt may take when the config does not say.
DEFAULT_PROMPT_TIMEOUT_S = 60.0


class PinPromptFailed(StoreError):
    """The prompt was cancelled, timed out, failed to start or printed nothing."""


class Pin(Protocol):
    """A token's PIN source. ``read`` returns the PIN (None: do not log in) or raises
    ``StoreError``; ``asks`` says whether reading would ask a person or program now;
    ``forget`` drops a remembered PIN the token refused."""

    @property
    def asks(self) -> bool: ...

    async def read(self, who: str) -> str | None: ...

    def forget(self) -> None: ...


def _text(pin: str | bytes | None, what: str) -> str | None:
    if isinstance(pin, bytes):
        try:
            pin = pin.decode("utf-8")
        except UnicodeDecodeError:
            raise StoreError(f"the PIN of {what} is not UTF-8") from None
    return pin or None


class NoPin:
    """The token needs no login."""

    asks = False

    async def read(self, who: str) -> str | None:
        return None

    def forget(self) -> None:
        pass

    def __repr__(self) -> str:
        return "<no PIN>"


class FixedPin:
    """A PIN held in memory (from ``ssh-add -s``); its repr never shows it."""

    __slots__ = ("_pin",)
    asks = False

    def __init__(self, pin: str | bytes | None) -> None:
        self._pin = _text(pin, "the smartcard")

    async def read(self, who: str) -> str | None:
        return self._pin

    def forget(self) -> None:
        pass  # the client sent it; a wrong one blocks the token until it is re-added

    def __repr__(self) -> str:
        return "<PIN hidden>"


class SourcedPin:
    """``pin_env``, ``pin_file`` (a ``SecretSource``) or any function returning the PIN,
    read at each login, so a rotated file is seen."""

    __slots__ = ("source",)
    asks = False

    def __init__(self, source: Callable[[], str | bytes | None]) -> None:
        self.source = source

    async def read(self, who: str) -> str | None:
        return _text(self.source(), who)

    def forget(self) -> None:
        pass

    def __repr__(self) -> str:
        return repr(self.source)


def prompt_environment(source: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """The prompt's whole environment: what the confirm hook gets (display, locale,
    PATH) plus ``extra``; PINs, passphrases and everything else stay behind."""
    return minimal_environment(source, extra)


async def run_pin_program(
    argv: Sequence[str], env: Mapping[str, str], timeout_s: float, what: str
) -> str:
    """Run a PIN program; the first line of its stdout, or ``PinPromptFailed``."""
    try:
        process = await anyio.open_process(
            list(argv),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=None,
            start_new_session=True,
        )
    except OSError as exc:
        raise PinPromptFailed(
            f"PIN prompt for {what} could not start {argv[0]}: {exc.strerror or exc}"
        ) from None
    output = bytearray()
    try:
        with anyio.move_on_after(timeout_s if timeout_s > 0 else None) as scope:
            assert process.stdout is not None
            async for chunk in process.stdout:
                output += chunk
                if len(output) > MAX_PROMPT_OUTPUT:
                    break
            code = await process.wait()
    except BaseException:
        await kill_process_group(process)
        raise
    if scope.cancelled_caught or len(output) > MAX_PROMPT_OUTPUT:
        await kill_process_group(process)
        if scope.cancelled_caught:
            raise PinPromptFailed(f"PIN prompt for {what}: no answer within {timeout_s:g} s")
        raise PinPromptFailed(f"PIN prompt for {what}: output too long, not a PIN")
    if code != 0:
        raise PinPromptFailed(f"PIN prompt for {what} cancelled ({argv[0]} exited {code})")
    lines = bytes(output).splitlines()
    pin = lines[0] if lines else b""
    output[:] = b"\0" * len(output)
    text = _text(pin, what)
    if text is None:
        raise PinPromptFailed(f"PIN prompt for {what}: empty answer")
    return text


class PromptedPin:
    """``pin_command`` or ``pin_prompt``: asked at first use, then kept in memory."""

    __slots__ = ("_argv", "_pin", "timeout_s")

    def __init__(
        self, argv: Sequence[str] | None, *, timeout_s: float = DEFAULT_PROMPT_TIMEOUT_S
    ) -> None:
        #: None = ask ``$SSH_ASKPASS`` (looked up when asking)
        self._argv = tuple(argv) if argv else None
        self._pin: str | None = None
        self.timeout_s = timeout_s

    @property
    def asks(self) -> bool:
        return self._pin is None

    async def read(self, who: str) -> str | None:
        if self._pin is None:
            self._pin = await self._ask(who)
        return self._pin

    def forget(self) -> None:
        self._pin = None

    async def _ask(self, who: str) -> str:
        prompt = f"Enter PIN for {who}: "
        extra = {"SECRETIVEX_PIN_PROMPT": prompt}
        if self._argv is not None:
            argv: Sequence[str] = self._argv
        else:
            askpass = os.environ.get("SSH_ASKPASS")
            if not askpass:
                raise PinPromptFailed(f"PIN prompt for {who}: SSH_ASKPASS is not set")
            argv = (askpass, prompt)
        env = prompt_environment(os.environ, extra)
        env.pop("SSH_ASKPASS_PROMPT", None)  # a PIN entry, not a yes/no question
        log.info("asking for the PIN of %s (%s)", who, argv[0])
        return await run_pin_program(argv, env, self.timeout_s, who)

    def __repr__(self) -> str:
        source = "SSH_ASKPASS" if self._argv is None else self._argv[0]
        return f"<PIN from {source}, value hidden>"


def pin_from_env(name: str) -> SecretSource:
    """The PIN from an environment variable, taken out of the environment now (see
    ``stores/secrets.py``) and kept in memory for re-logins after a token fault."""
    return SecretSource(env=name, what="PIN")


def pin_from_file(path: str | os.PathLike[str]) -> SecretSource:
    """The PIN from a file's first line, read at each login (warns if group/other can
    read it)."""
    return SecretSource(file=path, what="PIN")


def as_pin(pin: Pin | Callable[[], str | bytes | None] | None) -> Pin:
    """A ``Pin`` from what a caller has: a ``Pin``, a function returning the PIN, or
    None (no login)."""
    if pin is None:
        return NoPin()
    if hasattr(pin, "read"):
        return pin  # type: ignore[return-value]
    assert callable(pin)
    return SourcedPin(pin)


def pin_from_config(settings: Pkcs11StoreSettings) -> Pin:
    """The PIN source a ``type: pkcs11`` store names (at most one is set)."""
    timeout_s = settings.pin_timeout_ms / 1000
    if settings.pin_env:
        return SourcedPin(pin_from_env(settings.pin_env))
    if settings.pin_file is not None:
        return SourcedPin(pin_from_file(os.fspath(settings.pin_file)))
    if settings.pin_command:
        return PromptedPin(list(settings.pin_command), timeout_s=timeout_s)
    if settings.pin_prompt:
        return PromptedPin(None, timeout_s=timeout_s)
    return NoPin()
