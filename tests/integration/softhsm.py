"""Reusable SoftHSM2 tokens for integration tests.

    from softhsm import SoftHsm, require_softhsm   # (or tests.integration.softhsm)

    hsm = SoftHsm.create(tmp_path)                  # temp token dir + SOFTHSM2_CONF
    token = hsm.init_token("ci", pin="1234")
    token.generate("EC:edwards25519", key_id="01", label="ed")
    token.generate("rsa:3072", key_id="04", label="rsa")
    token.import_pem(pem_bytes, key_id="0a", label="imported")
    hsm.env  # {"SOFTHSM2_CONF": ...} for subprocesses (ssh-keygen -D, ssh-agent, ...)

SoftHSM reads ``SOFTHSM2_CONF`` once, at ``C_Initialize``, and a process sees tokens
created after that only when it re-initialises the module. In-process users (the
store, python-pkcs11) therefore need the variable set in ``os.environ`` before the
module is first loaded: ``SoftHsm.shared()`` gives one token directory per test
session with the variable exported; tests create tokens with unique labels in it.

Tools come from the system (``softhsm2``, ``opensc``); ``require_softhsm()`` skips a
test when they are missing, or fails it when ``SECRETIVEX_REQUIRE_ALL=1`` (CI).
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

#: Where distributions put the module (Debian/Ubuntu, Fedora, Arch, Alpine, Homebrew).
MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/lib/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)

DEFAULT_PIN = "123456"
DEFAULT_SO_PIN = "12345678"


def find_module() -> str | None:
    """The SoftHSM2 module: ``$SECRETIVEX_SOFTHSM_MODULE`` or a well-known path."""
    override = os.environ.get("SECRETIVEX_SOFTHSM_MODULE")
    if override:
        return override if Path(override).is_file() else None
    for candidate in MODULE_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    return None


def missing_requirements() -> list[str]:
    missing = [tool for tool in ("softhsm2-util", "pkcs11-tool") if shutil.which(tool) is None]
    if find_module() is None:
        missing.append("libsofthsm2.so")
    return missing


def require(condition_missing: Sequence[str], what: str) -> None:
    """Skip (or fail under ``SECRETIVEX_REQUIRE_ALL=1``) when something is missing."""
    if not condition_missing:
        return
    reason = f"{what} needs {', '.join(condition_missing)} (install: ci/install-system-deps.sh)"
    if os.environ.get("SECRETIVEX_REQUIRE_ALL") == "1":
        pytest.fail(f"SECRETIVEX_REQUIRE_ALL=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def require_softhsm() -> None:
    require(missing_requirements(), "SoftHSM test")


def require_tools(*tools: str) -> None:
    require([tool for tool in tools if shutil.which(tool) is None], "this test")


@dataclass
class Token:
    """One initialised token; generate or import keys, read public keys back."""

    hsm: SoftHsm
    label: str
    pin: str
    so_pin: str
    serial: str = ""
    _backup: Path | None = field(default=None, repr=False)

    # ------------------------------------------------------------ keys

    def tool(self, *args: str, login: bool = True) -> subprocess.CompletedProcess[bytes]:
        """Run ``pkcs11-tool`` against this token."""
        argv = ["pkcs11-tool", "--module", self.hsm.module, "--token-label", self.label]
        if login:
            argv += ["--login", "--pin", self.pin]
        return self.hsm.run([*argv, *args])

    def generate(
        self, key_type: str, *, key_id: str, label: str, extra: Sequence[str] = ()
    ) -> None:
        """``pkcs11-tool --keypairgen``: ``EC:prime256v1``, ``EC:secp384r1``,
        ``EC:secp521r1``, ``EC:edwards25519``, ``rsa:2048``/``rsa:3072``...
        ``extra``: more pkcs11-tool flags, e.g. ``["--always-auth"]``."""
        self.tool("--keypairgen", "--key-type", key_type, "--id", key_id, "--label", label, *extra)

    def import_pem(self, pem: bytes, *, key_id: str, label: str, public: bool = True) -> None:
        """``softhsm2-util --import`` of an unencrypted PKCS#8 PEM private key."""
        with tempfile.NamedTemporaryFile(dir=self.hsm.root, suffix=".pem") as handle:
            handle.write(pem)
            handle.flush()
            argv = ["softhsm2-util", "--import", handle.name, "--token", self.label]
            argv += ["--label", label, "--id", key_id, "--pin", self.pin]
            if not public:
                argv.append("--no-public-key")
            self.hsm.run(argv)

    def write_certificate(self, der: bytes, *, key_id: str, label: str) -> None:
        with tempfile.NamedTemporaryFile(dir=self.hsm.root, suffix=".der") as handle:
            handle.write(der)
            handle.flush()
            self.tool(
                "--write-object", handle.name, "--type", "cert", "--id", key_id, "--label", label
            )

    def delete_object(self, kind: str, key_id: str) -> None:
        """``kind``: privkey, pubkey, cert."""
        self.tool("--delete-object", "--type", kind, "--id", key_id)

    def read_public(self, key_id: str) -> bytes:
        """The public key object as pkcs11-tool exports it (DER SPKI, or PEM for EdDSA)."""
        out = self.hsm.root / f"pub-{self.label}-{key_id}.out"
        self.tool("--read-object", "--type", "pubkey", "--id", key_id, "-o", str(out), login=False)
        return out.read_bytes()

    def public_key(self, key_id: str) -> Any:
        """The public key object as a ``cryptography`` key, read by pkcs11-tool.

        ``--read-object`` fails for some curves in OpenSC 0.23 ("cannot create
        EVP_PKEY"); then the EC_POINT/EC_PARAMS that ``--list-objects`` prints are used.
        """
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        try:
            exported = self.read_public(key_id)
        except RuntimeError:
            listing = self.tool("--list-objects", "--type", "pubkey", login=False).stdout
            for block in listing.decode().split("Public Key Object")[1:]:
                fields = {
                    name.strip(): value.split()[0]
                    for name, _, value in (line.partition(":") for line in block.splitlines())
                    if value.strip()
                }
                if fields.get("ID") == key_id:
                    break
            else:
                raise LookupError(f"no public key object with ID {key_id}") from None
            curves = {
                "06082a8648ce3d030107": ec.SECP256R1(),
                "06052b81040022": ec.SECP384R1(),
                "06052b81040023": ec.SECP521R1(),
            }
            point = bytes.fromhex(fields["EC_POINT"])
            # DER OCTET STRING: 04, length (short or 0x81 long form), point
            point = point[3:] if point[1] == 0x81 else point[2:]
            return ec.EllipticCurvePublicKey.from_encoded_point(curves[fields["EC_PARAMS"]], point)
        if exported.lstrip().startswith(b"-----"):
            return serialization.load_pem_public_key(exported)
        return serialization.load_der_public_key(exported)

    # ------------------------------------------------------------ faults

    def delete(self) -> None:
        """Delete the token as an admin would (``softhsm2-util --delete-token``),
        keeping a copy of its files so ``restore()`` brings the same keys back."""
        token_dir = self.directory()
        self._backup = self.hsm.root / f"backup-{self.label}"
        if self._backup.exists():
            shutil.rmtree(self._backup)
        shutil.copytree(token_dir, self._backup / token_dir.name)
        self.hsm.run(["softhsm2-util", "--delete-token", "--token", self.label])

    def restore(self) -> None:
        """Re-create the deleted token with the same keys, serial and PIN."""
        assert self._backup is not None, "delete() first"
        for child in self._backup.iterdir():
            shutil.copytree(child, self.hsm.tokens / child.name)
        shutil.rmtree(self._backup)
        self._backup = None

    def directory(self) -> Path:
        """The token's directory under the token dir (its token.object holds the serial)."""
        for child in self.hsm.tokens.iterdir():
            token_object = child / "token.object"
            if token_object.is_file() and self.serial.encode() in token_object.read_bytes():
                return child
        raise FileNotFoundError(f"no directory for token {self.label!r}")


class SoftHsm:
    """A SoftHSM2 token directory with its own configuration file."""

    _shared: SoftHsm | None = None
    _labels = itertools.count(1)

    def __init__(self, root: Path, module: str) -> None:
        self.root = root
        self.module = module
        self.tokens = root / "tokens"
        self.conf = root / "softhsm2.conf"

    @classmethod
    def create(cls, root: Path, module: str | None = None) -> SoftHsm:
        require_softhsm()
        module = module or find_module()
        assert module is not None
        root.mkdir(parents=True, exist_ok=True)
        hsm = cls(root, module)
        hsm.tokens.mkdir(exist_ok=True)
        hsm.conf.write_text(
            f"directories.tokendir = {hsm.tokens}\n"
            "objectstore.backend = file\n"
            "log.level = ERROR\n"
            "slots.removable = false\n"
        )
        return hsm

    @classmethod
    def shared(cls) -> SoftHsm:
        """One token directory for the whole test process, exported as SOFTHSM2_CONF.

        In-process PKCS#11 code reads the variable at the first ``C_Initialize``, so
        every in-process test must use this one (tokens get unique labels instead).
        """
        require_softhsm()
        if cls._shared is None:
            root = Path(tempfile.mkdtemp(prefix="secretivex-softhsm-"))
            atexit.register(shutil.rmtree, root, ignore_errors=True)
            cls._shared = cls.create(root)
            os.environ["SOFTHSM2_CONF"] = str(cls._shared.conf)
        return cls._shared

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SOFTHSM2_CONF": str(self.conf)}

    def run(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run(
            list(argv), env=dict(env or self.env), capture_output=True, timeout=120, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv[:2])} failed ({proc.returncode}): "
                f"{proc.stderr.decode(errors='replace').strip()}"
            )
        return proc

    def unique_label(self, prefix: str = "t") -> str:
        return f"{prefix}{os.getpid()}-{next(self._labels)}"

    def init_token(
        self, label: str | None = None, *, pin: str = DEFAULT_PIN, so_pin: str = DEFAULT_SO_PIN
    ) -> Token:
        label = label or self.unique_label()
        self.run(
            [
                "softhsm2-util",
                "--init-token",
                "--free",
                "--label",
                label,
                "--pin",
                pin,
                "--so-pin",
                so_pin,
            ]
        )
        token = Token(self, label, pin, so_pin)
        token.serial = self.serial_of(label)
        return token

    def serial_of(self, label: str) -> str:
        out = self.run(["softhsm2-util", "--show-slots"]).stdout.decode()
        serial = ""
        for line in out.splitlines():
            line = line.strip()
            if line.startswith("Serial number:"):
                serial = line.split(":", 1)[1].strip()
            if line.startswith("Label:") and line.split(":", 1)[1].strip() == label:
                return serial
        # "Serial number" precedes "Label" within a token block in softhsm2-util output.
        raise RuntimeError(f"token {label!r} not listed by softhsm2-util --show-slots")

    def ssh_keygen_public_keys(self) -> list[str]:
        """``ssh-keygen -D MODULE``: OpenSSH's own reading of the public keys (no login)."""
        proc = subprocess.run(
            ["ssh-keygen", "-D", self.module],
            env=self.env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        return [line for line in proc.stdout.decode().splitlines() if line.strip()]
