"""``SecretivexContainer``: a token-backed SSH agent in a container, for test suites.

The container runs the image's ``softhsm`` target: at start it initialises a fresh
SoftHSM token, generates the keys you ask for and serves them on an agent socket in a
host temp directory (bind-mounted at ``/run/secretivex``). The container runs as your
uid:gid, so the socket is yours: point ``SSH_AUTH_SOCK`` at it and ``ssh``, ``git``,
``ssh-keygen -Y sign`` and any agent client use the token keys. Nothing is published
on the network (``--network none``).

    >>> from secretivex.testing import SecretivexContainer
    >>> with SecretivexContainer(keys=("ed25519",)) as agent:  # doctest: +SKIP
    ...     subprocess.run(["ssh", "git@example"], env={**os.environ, **agent.env()})
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from testcontainers.core.container import DockerContainer
from testcontainers.core.waiting_utils import WaitStrategy, WaitStrategyTarget

from secretivex.client import AgentError, AgentIdentity, SyncAgentClient
from secretivex.defaults import SOCKET_PATH_MAX_BYTES

__all__ = [
    "CONTAINER_SOCKET_DIR",
    "DEFAULT_IMAGE",
    "KEY_TYPES",
    "AgentNotReadyError",
    "AgentSocketWaitStrategy",
    "ContainerEnv",
    "ImageNotFoundError",
    "SecretivexContainer",
]

#: Image used when none is given (``SECRETIVEX_TESTING_IMAGE`` overrides it).
DEFAULT_IMAGE = "secretivex:softhsm"
#: Where the agent socket directory is mounted inside the container.
CONTAINER_SOCKET_DIR = "/run/secretivex"
_CONTAINER_SOCKET = f"{CONTAINER_SOCKET_DIR}/agent.sock"
_CONTAINER_CONFIG_DIR = "/etc/secretivex/testing"
_CONTAINER_KEY_DIR = "/etc/secretivex/keys"
_CONTAINER_TOKEN_DIR = "/var/lib/secretivex/tokens"  # noqa: S105 - a path
_SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"

#: Accepted key type names -> the softhsm entrypoint's ``SECRETIVEX_GENERATE_KEYS`` types.
KEY_TYPES: Mapping[str, str] = {
    "ed25519": "ed25519",
    "ecdsa": "p256",
    "ecdsa-p256": "p256",
    "p256": "p256",
    "nistp256": "p256",
    "ecdsa-p384": "p384",
    "p384": "p384",
    "nistp384": "p384",
    "ecdsa-p521": "p521",
    "p521": "p521",
    "nistp521": "p521",
    "rsa": "rsa3072",
    "rsa2048": "rsa2048",
    "rsa3072": "rsa3072",
    "rsa4096": "rsa4096",
}
_LABEL_RE = re.compile(r"^[A-Za-z0-9._@:+-]{1,64}$")
# sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = SOCKET_PATH_MAX_BYTES


class AgentNotReadyError(RuntimeError):
    """The agent in the container did not answer as expected (timeout or early exit).

    The message names the socket, the last answer or error, and ends with the
    container's logs.
    """


class ImageNotFoundError(RuntimeError):
    """The image is neither on the Docker engine nor pullable; the message says how to
    get one."""


def _build_hint(image: str) -> str:
    return (
        f"build it from a secretivex checkout with `make image` (tags secretivex:dev and "
        f"secretivex:softhsm), or `docker build --target softhsm -t {image} .` there "
        '(docs/testing.md: "Getting the image"), or set SECRETIVEX_TESTING_IMAGE to an '
        "image you have"
    )


def _container_logs(container: WaitStrategyTarget, limit: int = 6000) -> str:
    try:
        stdout, stderr = container.get_logs()
    except Exception as exc:  # logs are best effort in an error message
        return f"(logs unavailable: {exc})"
    text = (stdout + stderr).decode("utf-8", "replace").strip()
    if len(text) > limit:
        text = "...\n" + text[-limit:]
    return text or "(no output)"


def _exit_code(container: WaitStrategyTarget) -> object:
    try:
        state = container.get_wrapped_container().attrs.get("State", {})
    except Exception:
        return "?"
    return state.get("ExitCode", "?")


class AgentSocketWaitStrategy(WaitStrategy):
    """Ready when the agent socket answers REQUEST_IDENTITIES with enough keys.

    testcontainers' file-based strategies look for regular files; an agent socket is
    only ready when something accepts on it and answers, so this connects with the
    agent client and asks for the identity list until it holds ``expected_keys`` keys.
    A container that exits meanwhile fails at once; either way the error carries the
    container's logs.
    """

    def __init__(self, socket_path: str | os.PathLike[str], expected_keys: int = 0) -> None:
        super().__init__()
        self.socket_path = Path(socket_path)
        self.expected_keys = expected_keys
        self._poll_interval = 0.1
        self.identities: list[AgentIdentity] = []

    def _ask(self, remaining: float = 10.0) -> tuple[bool, str]:
        # One attempt never outlasts the startup deadline: an agent (or anything else on
        # the socket) that accepts and never answers must not stretch the wait by 10 s.
        wait = min(10.0, max(remaining, 0.2))
        try:
            with SyncAgentClient.connect(
                self.socket_path, timeout=min(2.0, wait), response_timeout=wait
            ) as agent:
                self.identities = agent.list_identities()
        except AgentError as exc:
            return False, str(exc)
        count = len(self.identities)
        if count >= self.expected_keys:
            return True, ""
        return False, f"the agent lists {count} of {self.expected_keys} expected keys"

    def wait_until_ready(self, container: WaitStrategyTarget) -> None:
        started = time.monotonic()
        deadline = started + self._startup_timeout
        while True:
            ready, last = self._ask(deadline - time.monotonic())
            if ready:
                return
            container.reload()
            if container.status in ("exited", "dead"):
                raise AgentNotReadyError(
                    f"the secretivex container exited (code {_exit_code(container)}) before "
                    f"its agent answered on {self.socket_path}; last: {last}\n"
                    f"--- container logs ---\n{_container_logs(container)}"
                )
            if time.monotonic() > deadline:
                raise AgentNotReadyError(
                    f"the secretivex agent did not answer on {self.socket_path} with "
                    f"{self.expected_keys} key(s) within {self._startup_timeout:g}s "
                    f"(container {container.status}); last: {last}\n"
                    f"--- container logs ---\n{_container_logs(container)}"
                )
            time.sleep(self._poll_interval)


def _key_specs(keys: Sequence[str]) -> list[str]:
    """``["ed25519", "ecdsa-p256=deploy"]`` -> the entrypoint's ``["ed25519", "p256=deploy"]``."""
    if isinstance(keys, str):
        raise TypeError('keys must be a sequence of key types, e.g. ("ed25519",), not a string')
    specs = []
    for key in keys:
        name, sep, label = key.partition("=")
        kind = KEY_TYPES.get(name.strip().lower())
        if kind is None:
            raise ValueError(f"unknown key type {name!r}; one of: {', '.join(KEY_TYPES)}")
        if sep and not _LABEL_RE.match(label):
            raise ValueError(
                f"bad key label {label!r} in {key!r}: 1-64 of letters, digits and ._@:+-"
            )
        specs.append(f"{kind}={label}" if sep else kind)
    return specs


def _count_private_keys(directory: Path) -> int:
    from secretivex.keys.files import looks_like_private_key, may_be_key_file

    return sum(
        1
        for child in directory.iterdir()
        if may_be_key_file(child) and child.is_file() and looks_like_private_key(child)
    )


class ContainerEnv(dict[str, str]):
    """The container's environment (testcontainers' ``DockerContainer.env``), callable.

    ``container.env`` stays what it is in every testcontainers class: the variables set
    *in* the container. Calling it, ``container.env()``, returns what a *host* process
    needs to use the agent: ``{"SSH_AUTH_SOCK": <socket_path>}``.
    """

    def __init__(self, owner: SecretivexContainer, initial: Mapping[str, str]) -> None:
        super().__init__(initial)
        self._owner = owner

    def __call__(self) -> dict[str, str]:
        return self._owner.get_env()


def _numeric_ids(user: str) -> tuple[int, int] | None:
    uid, _, gid = user.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        return None
    return int(uid), int(gid or uid)


class SecretivexContainer(DockerContainer):
    """A secretivex agent in a container, backed by a fresh SoftHSM token.

    Args:
        image: the image (default ``secretivex:softhsm``, or ``$SECRETIVEX_TESTING_IMAGE``).
            Its ``softhsm`` target is needed for ``keys``; with ``keys=()`` and a
            ``key_dir`` the plain runtime image works too.
        keys: key types generated on the token, in listing order: ``ed25519``,
            ``ecdsa-p256`` (``p256``), ``ecdsa-p384``, ``ecdsa-p521``, ``rsa`` (3072 bits),
            ``rsa2048``, ``rsa3072``, ``rsa4096``; ``"TYPE=LABEL"`` sets the key's label,
            which the agent shows as its comment (default: the type, then ``-2``...).
        key_dir: a host directory of OpenSSH private keys (unencrypted), mounted
            read-only and served by a ``file`` store after the token keys.
        token_label: the token's label.
        pin: the token's user PIN (default: chosen by the container and kept in the token
            directory, so a reused ``token_dir`` unlocks by itself).
        token_dir: keep the token outside the container: a host directory (created if
            missing) or a named volume. A container re-created with the same
            ``token_dir`` serves the same keys (none are generated for a token that has
            keys). Default: inside the container, gone with it.
        user: ``"UID:GID"`` the container runs as (default: yours, so the socket is
            yours and the agent admits you).
        config: more agent configuration (a mapping or YAML text) layered on top of the
            generated one, e.g. ``{"listeners": [...], "policy": {...}}``. Sockets in
            ``/run/secretivex/`` appear in :attr:`socket_dir` on the host.
        expected_keys: how many keys must be listed before the container counts as
            started (default: ``len(keys)`` plus the private keys in ``key_dir``).
        startup_timeout: seconds to wait for that.
        socket_parent: where the host temp directory goes (default: the system temp
            directory). Unix socket paths are limited to 100 bytes
            (``secretivex.defaults.SOCKET_PATH_MAX_BYTES``).
        **kwargs: passed to :class:`testcontainers.core.container.DockerContainer`.
    """

    def __init__(
        self,
        image: str | None = None,
        *,
        keys: Sequence[str] = ("ed25519", "ecdsa-p256", "rsa3072"),
        key_dir: str | os.PathLike[str] | None = None,
        token_label: str = "secretivex",  # noqa: S107 - a label
        pin: str | None = None,
        token_dir: str | os.PathLike[str] | None = None,
        user: str | None = None,
        config: Mapping[str, Any] | str | None = None,
        expected_keys: int | None = None,
        startup_timeout: float = 60,
        socket_parent: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> None:
        # Arguments are checked before the Docker client is made (it talks to the engine).
        key_specs = _key_specs(keys)
        resolved_key_dir = Path(key_dir).resolve() if key_dir is not None else None
        if resolved_key_dir is not None and not resolved_key_dir.is_dir():
            raise ValueError(f"key_dir {resolved_key_dir} is not a directory")
        if not _LABEL_RE.match(token_label):
            raise ValueError(f"bad token label {token_label!r}: 1-64 of letters, digits, ._@:+-")
        super().__init__(
            image or os.environ.get("SECRETIVEX_TESTING_IMAGE") or DEFAULT_IMAGE, **kwargs
        )
        self.env: ContainerEnv = ContainerEnv(self, self.env)
        self.key_specs = key_specs
        self.key_dir = resolved_key_dir
        self.token_label = token_label
        self.pin = pin
        self.token_dir = token_dir
        self.user = user or f"{os.getuid()}:{os.getgid()}"
        self.extra_config = config
        if expected_keys is None:
            expected_keys = len(self.key_specs)
            if self.key_dir is not None:
                expected_keys += _count_private_keys(self.key_dir)
        self.expected_keys = expected_keys
        self.startup_timeout = startup_timeout
        self.socket_parent = socket_parent
        self._tmpdir: Path | None = None

    # -- where things are ------------------------------------------------------------

    @property
    def socket_dir(self) -> Path:
        """The host directory mounted at ``/run/secretivex`` (holds ``agent.sock``)."""
        if self._tmpdir is None:
            raise RuntimeError("the SecretivexContainer is not started")
        return self._tmpdir / "run"

    @property
    def socket_path(self) -> Path:
        """The agent socket on the host."""
        return self.socket_dir / "agent.sock"

    # testcontainers style accessors (``get_connection_url()`` and friends elsewhere).

    def get_socket_path(self) -> str:
        """The agent socket on the host, as text (what ``SSH_AUTH_SOCK`` takes)."""
        return str(self.socket_path)

    def get_env(self) -> dict[str, str]:
        """What a host process needs to use the agent: ``{"SSH_AUTH_SOCK": ...}``."""
        return {"SSH_AUTH_SOCK": self.get_socket_path()}

    def __repr__(self) -> str:
        where = self.get_socket_path() if self._tmpdir is not None else "not started"
        status = "running" if self._container is not None else "stopped"
        keys = ", ".join(self.key_specs) or "none"
        return f"<SecretivexContainer {self.image} {status} socket={where} keys=[{keys}]>"

    # -- what it serves --------------------------------------------------------------

    def identities(self) -> list[AgentIdentity]:
        """The keys the agent lists (blob, comment, fingerprint, type)."""
        with SyncAgentClient.connect(self.socket_path) as agent:
            return agent.list_identities()

    def public_keys(self) -> list[str]:
        """OpenSSH public key lines (``type base64 comment``), in listing order."""
        return [identity.public_line() for identity in self.identities()]

    def authorized_keys(self) -> str:
        """The public keys as the text of an ``authorized_keys`` file."""
        return "".join(f"{line}\n" for line in self.public_keys())

    def exec_ssh_add(
        self, *args: str, user: str | None = None, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``ssh-add ARGS`` inside the container (as its user, or ``user``).

        ``SSH_AUTH_SOCK`` there is ``/run/secretivex/agent.sock``. Returns the exit
        code and output like :func:`subprocess.run` with ``capture_output=True``.
        """
        argv = ["ssh-add", *args]
        exit_code, output = self.get_wrapped_container().exec_run(
            argv, user=user or "", environment=dict(env or {}), demux=True
        )
        stdout, stderr = output if output is not None else (None, None)
        return subprocess.CompletedProcess(
            argv,
            int(exit_code if exit_code is not None else -1),
            (stdout or b"").decode("utf-8", "replace"),
            (stderr or b"").decode("utf-8", "replace"),
        )

    # -- lifecycle -------------------------------------------------------------------

    def _write_configs(self, config_dir: Path) -> list[str]:
        stores: list[dict[str, Any]] = []
        if self.key_specs:
            stores.append(
                {
                    "type": "pkcs11",
                    "module": _SOFTHSM_MODULE,
                    "token_label": self.token_label,
                    "pin_env": "SECRETIVEX_TOKEN_PIN",
                }
            )
        if self.key_dir is not None:
            stores.append({"type": "file", "paths": [_CONTAINER_KEY_DIR]})
        files = {"agent.yaml": yaml.safe_dump({"stores": stores}, sort_keys=False)}
        if self.extra_config is not None:
            extra = self.extra_config
            files["extra.yaml"] = (
                extra if isinstance(extra, str) else yaml.safe_dump(dict(extra), sort_keys=False)
            )
        args = []
        for name, text in files.items():
            path = config_dir / name
            path.write_text(text)
            path.chmod(0o644)
            args += ["--config", f"{_CONTAINER_CONFIG_DIR}/{name}"]
        return args

    def _configure(self) -> None:
        parent = None if self.socket_parent is None else str(self.socket_parent)
        self._tmpdir = Path(tempfile.mkdtemp(prefix="secretivex-", dir=parent))
        if len(os.fsencode(self.socket_path)) > _MAX_SOCKET_PATH:
            raise ValueError(
                f"socket path {self.socket_path} is longer than {_MAX_SOCKET_PATH} bytes; "
                "pass a shorter socket_parent"
            )
        run_dir, config_dir = self.socket_dir, self._tmpdir / "config"
        run_dir.mkdir(mode=0o711)  # traversable: listeners may serve other users
        config_dir.mkdir(mode=0o755)
        self._tmpdir.chmod(0o711)
        ids = _numeric_ids(self.user)
        # Another uid in the container: give it the directories it writes (if we can).
        chown_to = ids if ids != (os.getuid(), os.getgid()) and os.geteuid() == 0 else None
        if chown_to is not None:
            os.chown(run_dir, *chown_to)

        agent_args = self._write_configs(config_dir)
        self.with_volume_mapping(str(run_dir), CONTAINER_SOCKET_DIR, "rw")
        self.with_volume_mapping(str(config_dir), _CONTAINER_CONFIG_DIR, "ro")
        if self.key_dir is not None:
            self.with_volume_mapping(str(self.key_dir), _CONTAINER_KEY_DIR, "ro")
        if self.token_dir is not None:
            source = str(self.token_dir)
            if os.path.isabs(source) or isinstance(self.token_dir, os.PathLike):
                host_dir = Path(source).resolve()
                if not host_dir.exists():
                    host_dir.mkdir(parents=True, mode=0o700)
                    if chown_to is not None:
                        os.chown(host_dir, *chown_to)
                source = str(host_dir)
            self.with_volume_mapping(source, _CONTAINER_TOKEN_DIR, "rw")
            self.with_env("SECRETIVEX_TOKEN_DIR", _CONTAINER_TOKEN_DIR)

        self.with_env("SSH_AUTH_SOCK", _CONTAINER_SOCKET)
        self.with_env("SECRETIVEX_TOKEN_LABEL", self.token_label)
        self.with_env("SECRETIVEX_GENERATE_KEYS", " ".join(self.key_specs))
        self.with_env("SECRETIVEX_PKCS11_MODULE", _SOFTHSM_MODULE)
        self.with_env("SECRETIVEX_WRITE_CONFIG", "0")
        if self.pin is not None:
            self.with_env("SECRETIVEX_TOKEN_PIN", self.pin)
        self.with_command(["agent", *agent_args])

        self._kwargs.setdefault("user", self.user)
        if self._network is None and not {"network", "network_mode"} & set(self._kwargs):
            # "network" rather than "network_mode": testcontainers then does not try to
            # attach the container to the network of a container the tests run in.
            self._kwargs["network"] = "none"
        self._kwargs.setdefault("labels", {"org.secretivex.testing": "1"})
        self.waiting_for(
            AgentSocketWaitStrategy(self.socket_path, self.expected_keys).with_startup_timeout(
                timedelta(seconds=self.startup_timeout)
            )
        )

    def _ensure_image(self) -> None:
        """Fail with a how-to instead of the engine's raw 404/500 when the image is
        missing and cannot be pulled."""
        reason = self._unavailable(self.image)
        if reason is not None:
            raise ImageNotFoundError(
                f"image {self.image!r} is not on the Docker engine and pulling it failed "
                f"({reason}): {_build_hint(self.image)}"
            )

    def _unavailable(self, image: str) -> str | None:
        """Why ``image`` is neither on the engine nor pullable (the engine's first line),
        or None when it is there, was pulled, or the engine failed otherwise (it then
        says what is wrong when the container starts)."""
        import docker.errors  # type: ignore[import-not-found]  # testcontainers' dependency

        client = self.get_docker_client().client
        try:
            client.images.get(image)
            return None
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.APIError:
            return None
        try:
            client.images.pull(image)
            return None
        except docker.errors.APIError as exc:
            detail = str(getattr(exc, "explanation", None) or exc).strip().splitlines()
            return detail[0] if detail else type(exc).__name__

    def _ensure_reaper_image(self) -> None:
        """testcontainers starts its reaper (Ryuk) before the first container, pulling
        its image from Docker Hub: where there is no registry that is the engine's raw
        500 from deep inside testcontainers. Say what to do instead."""
        from testcontainers.core.config import testcontainers_config
        from testcontainers.core.container import Reaper

        if testcontainers_config.ryuk_disabled or Reaper._instance is not None:
            return
        image = testcontainers_config.ryuk_image
        reason = self._unavailable(image)
        if reason is None:
            return
        raise ImageNotFoundError(
            f"testcontainers' reaper image {image!r} (Ryuk) is not on the Docker engine and "
            f"pulling it failed ({reason}): without a registry set "
            "TESTCONTAINERS_RYUK_DISABLED=true (cleanup then rests on stop(), which the "
            'pytest fixtures call; docs/testing.md: "Cleanup without Ryuk"), or load '
            f"{image} into the engine"
        )

    def start(self) -> SecretivexContainer:
        """Start the container and wait until the agent lists the expected keys.

        On any failure the container and the temp directory are removed before the
        error (:class:`AgentNotReadyError` with the container's logs, or
        :class:`ImageNotFoundError` saying how to get the image) propagates.
        """
        try:
            self._ensure_image()
            self._ensure_reaper_image()
            super().start()
        except BaseException:
            self.stop()
            raise
        return self

    def restart(self, timeout: int = 10) -> SecretivexContainer:
        """``docker restart`` (SIGTERM, then SIGKILL after ``timeout`` s) and wait again.

        The socket path stays the same; the token survives (it is in the container's
        filesystem, or in ``token_dir``).
        """
        self.get_wrapped_container().restart(timeout=timeout)
        strategy = AgentSocketWaitStrategy(self.socket_path, self.expected_keys)
        strategy.with_startup_timeout(timedelta(seconds=self.startup_timeout)).wait_until_ready(
            self
        )
        return self

    def stop(self, force: bool = True, delete_volume: bool = True) -> None:
        """Remove the container (and its anonymous volumes) and the host temp directory.

        A named ``token_dir`` volume or host directory is kept.
        """
        try:
            if self._container is not None:
                super().stop(force=force, delete_volume=delete_volume)
                self._container = None
            else:
                self.get_docker_client().client.close()
        finally:
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                self._tmpdir = None
