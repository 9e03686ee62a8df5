"""How PKCS#11 errors are named and sorted: per request, PIN trouble, or a token fault."""

from __future__ import annotations

import re

from pkcs11 import exceptions as p11e

#: The health error of a store whose PIN the token refused (never retried on its own).
WRONG_PIN = "wrong PIN; not retrying (fix pin and send SIGHUP)"

#: Errors that concern one request, not the token: the store stays healthy.
REQUEST_ERRORS: tuple[type[Exception], ...] = (
    p11e.ArgumentsBad,
    p11e.DataInvalid,
    p11e.DataLenRange,
    p11e.FunctionCancelled,
    p11e.FunctionNotSupported,
    p11e.FunctionRejected,
    p11e.KeySizeRange,
    p11e.KeyTypeInconsistent,
    p11e.MechanismInvalid,
    p11e.MechanismParamInvalid,
)
#: The token refused the PIN itself.
WRONG_PIN_ERRORS: tuple[type[Exception], ...] = (
    p11e.PinIncorrect,
    p11e.PinInvalid,
    p11e.PinLenRange,
)
#: The PIN can no longer be used until someone fixes the token.
PIN_UNUSABLE_ERRORS: tuple[type[Exception], ...] = (p11e.PinLocked, p11e.PinExpired)

_CKR_NAMES = {
    "FunctionCancelled": "CKR_FUNCTION_CANCELED",
    "TokenNotRecognised": "CKR_TOKEN_NOT_RECOGNIZED",
    "PKCS11Error": "PKCS#11 error",
    "NoSuchToken": "no such token",
}


def describe_error(exc: BaseException) -> str:
    """``CKR_DEVICE_ERROR``-style name plus the message, if any (never a secret)."""
    name = type(exc).__name__
    if isinstance(exc, p11e.PKCS11Error):
        label = _CKR_NAMES.get(name) or "CKR_" + re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper()
    else:
        label = name
    text = str(exc).strip()
    return f"{label}: {text}" if text else label


def pin_unusable(exc: BaseException) -> str:
    """The health error for a locked or expired PIN."""
    return f"{describe_error(exc)}; not retrying (fix the token, then send SIGHUP)"


class PinProblem(Exception):
    """Login must not be attempted (again) automatically; the message says why."""


class TokenAbsent(Exception):
    """No token matches the selector."""
