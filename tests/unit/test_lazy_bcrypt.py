"""bcrypt waits for its first use in the agent (secretivex.agent.lazy_bcrypt): the
stand-in gives what the real module gives, and encrypted keys still load."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

#: A fresh interpreter: the stand-in first, then cryptography's OpenSSH support, an
#: encrypted key loaded through it and a lock hash.
PROBE = """
import sys
from secretivex.agent.lazy_bcrypt import defer_import
assert defer_import()
assert not defer_import()  # once is enough
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
assert "bcrypt._bcrypt" not in sys.modules, "cryptography's import loaded bcrypt"
stub = sys.modules["bcrypt"]
key = load_ssh_private_key(open(sys.argv[1], "rb").read(), b"secret")
real = sys.modules["bcrypt"]
assert real is not stub and "bcrypt._bcrypt" in sys.modules
args = (b"pass", b"salt" * 4)
kw = dict(desired_key_bytes=32, rounds=1, ignore_few_rounds=True)
assert stub.kdf(*args, **kw) == real.kdf(*args, **kw)
assert stub.hashpw is real.hashpw
import secretivex.agent.lock as lock
assert lock._hash(b"pass", b"salt" * 4) == real.kdf(*args, **kw)
print(type(key).__name__)
"""


def test_bcrypt_is_imported_on_first_use_and_encrypted_keys_still_load(tmp_path: Path) -> None:
    if shutil.which("ssh-keygen") is None:
        pytest.skip("needs ssh-keygen")
    key = tmp_path / "id_ed25519"
    keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret", "-f", str(key)]
    subprocess.run(keygen, check=True)
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(key)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "Ed25519PrivateKey"


def test_no_stand_in_once_bcrypt_or_cryptographys_ssh_support_is_imported() -> None:
    import cryptography.hazmat.primitives.serialization  # noqa: F401 - imports bcrypt

    from secretivex.agent.lazy_bcrypt import defer_import

    before = sys.modules["bcrypt"]
    assert defer_import() is False
    assert sys.modules["bcrypt"] is before
