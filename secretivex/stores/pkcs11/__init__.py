"""Keys on PKCS#11 tokens (SoftHSM, YubiKey PIV via ykcs11, OpenSC cards, HSMs).

One module per job:

* ``lifecycle`` - the token store's states and its one transition table (pure)
* ``store`` - ``Pkcs11Store``: one token's keys, signing, faults and recovery
* ``smartcard`` - ``ssh-add -s``: ``open_smartcard`` and ``Pkcs11Smartcard``
* ``discovery`` - tokens by selector, private keys paired with public halves
* ``mechanisms`` - attributes to SSH keys, and how each key type signs (pure)
* ``worker`` - serial, batched calls into one module through ``anyio.to_thread``
* ``pins`` - PIN sources: env, file, command or askpass prompt, ``ssh-add -s``
* ``modules`` - module paths: the one comparison, and the ``ssh-add -s`` allowlist
* ``errors`` - PKCS#11 errors named and sorted
"""

from secretivex.stores.pkcs11.errors import WRONG_PIN, describe_error
from secretivex.stores.pkcs11.lifecycle import TokenEvent, TokenState
from secretivex.stores.pkcs11.modules import (
    DEFAULT_ALLOWLIST,
    module_allowed,
    resolve_module,
    same_module,
)
from secretivex.stores.pkcs11.pins import (
    Pin,
    PinPromptFailed,
    PromptedPin,
    pin_from_config,
    pin_from_env,
    pin_from_file,
)
from secretivex.stores.pkcs11.smartcard import Pkcs11Smartcard, open_smartcard
from secretivex.stores.pkcs11.store import Pkcs11Store

__all__ = [
    "DEFAULT_ALLOWLIST",
    "WRONG_PIN",
    "Pin",
    "PinPromptFailed",
    "Pkcs11Smartcard",
    "Pkcs11Store",
    "PromptedPin",
    "TokenEvent",
    "TokenState",
    "describe_error",
    "module_allowed",
    "open_smartcard",
    "pin_from_config",
    "pin_from_env",
    "pin_from_file",
    "resolve_module",
    "same_module",
]
