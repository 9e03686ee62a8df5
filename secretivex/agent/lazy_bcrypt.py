"""bcrypt, imported when it is first used.

cryptography's OpenSSH key support imports ``bcrypt`` as it is itself imported (for
the KDF of passphrase-protected keys), and the agent's lock hashes with it: about
400 KiB of RSS (its extension module) in an agent that may never read an encrypted
key nor be locked. ``defer_import`` puts a stand-in under the name until then: its
``kdf`` (all cryptography takes from it) and any other attribute import the real
module, which from then on is ``sys.modules["bcrypt"]``.
"""

from __future__ import annotations

import sys
import threading
import types
from typing import Any

__all__ = ["defer_import"]

NAME = "bcrypt"
#: Importing this module imports ``bcrypt`` (cryptography's OpenSSH key support).
_IMPORTER = "cryptography.hazmat.primitives.serialization.ssh"


def defer_import() -> bool:
    """Put the stand-in in place, unless ``bcrypt`` (or cryptography's OpenSSH key
    support, which imports it) is already imported, or it is not installed (then
    cryptography's own fallback applies). Returns whether it did."""
    import importlib.util

    if NAME in sys.modules or _IMPORTER in sys.modules:
        return False
    if importlib.util.find_spec(NAME) is None:
        return False
    sys.modules[NAME] = _stand_in()
    return True


def _stand_in() -> types.ModuleType:
    stub = types.ModuleType(NAME, __doc__)
    lock = threading.Lock()
    real: list[types.ModuleType] = []

    def load() -> types.ModuleType:
        with lock:
            if not real:
                import importlib

                if sys.modules.get(NAME) is stub:
                    del sys.modules[NAME]
                real.append(importlib.import_module(NAME))
            return real[0]

    def kdf(*args: Any, **kwargs: Any) -> Any:
        return load().kdf(*args, **kwargs)

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):  # the import system asks for __path__ and the like
            raise AttributeError(name)
        return getattr(load(), name)

    stub.kdf = kdf  # type: ignore[attr-defined]
    stub.__getattr__ = __getattr__  # type: ignore[method-assign]
    return stub
