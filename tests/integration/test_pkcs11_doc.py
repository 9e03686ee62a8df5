"""docs/pkcs11.md's SoftHSM2 blocks, as a new user types them: a private token
directory, a token, a generated and an imported key, then the agent serving them from
``config/pkcs11-softhsm.yaml`` with ``--daemon``, in bash with a fresh HOME."""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from harness import SECRETIVEX, require_tool

try:
    from tests.integration.softhsm import require_softhsm
except ImportError:  # tests/ is not a package: pytest put this directory on sys.path
    from softhsm import require_softhsm  # type: ignore[no-redef]

pytestmark = [pytest.mark.softhsm, pytest.mark.openssh]

REPO = Path(__file__).resolve().parents[2]
MARKER = "<!-- test: tests/integration/test_pkcs11_doc.py runs this block and the next"


def doc_blocks() -> tuple[str, str]:
    doc = (REPO / "docs" / "pkcs11.md").read_text()
    rest = doc.split(MARKER, 1)[1]
    blocks = re.findall(r"```sh\n(.*?)```", rest, flags=re.S)
    return blocks[0], blocks[1]


def test_softhsm_blocks_run_as_written() -> None:
    require_softhsm()
    require_tool("bash", "ssh-add", "softhsm2-util", "pkcs11-tool")
    create, serve = doc_blocks()
    # Installing packages is the one step not replayed (the suite's system deps did it).
    create = "\n".join(line for line in create.splitlines() if not line.startswith("apt-get "))
    # Short: the zero-config socket lives in $HOME/.secretivex (sun_path is 108 bytes).
    with tempfile.TemporaryDirectory(prefix="p11doc-") as tmp:
        home = Path(tmp)
        pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        (home / "key.pem").write_bytes(pem)  # the doc's "existing key"
        env = {
            "HOME": str(home),
            "PATH": f"{Path(SECRETIVEX).parent}:/usr/bin:/bin",
            "SHELL": "/bin/bash",
        }
        script = (
            "set -e\n"
            "cd ~\n"  # the doc's key.pem is in the current directory
            + create
            + f"\ncd {REPO}\n"  # "from a checkout"
            + serve
            + 'eval "$(secretivex agent --kill)"\n'
        )
        result = subprocess.run(
            ["bash", "--noprofile", "--norc", "-c", script],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=home,
        )
        out = result.stdout
        assert result.returncode == 0, (out, result.stderr)
        listed = [line for line in out.splitlines() if line.startswith("256 SHA256:")]
        assert [line.split()[2:] for line in listed] == [
            ["ci-signing", "(ED25519)"],
            ["imported", "(ECDSA)"],
        ], out
        assert re.search(r"softhsm \(pkcs11\): ok, 2 keys", out), out
        assert "login: user" in out and "5678" not in out
        assert "killed" in out
        assert "Traceback" not in result.stderr
        assert not (home / ".secretivex" / "agent.sock").exists()
