"""The configuration model: one typed, frozen model per section.

Every section forbids unknown keys. Field descriptions and examples feed the JSON
Schema (``secretivex config schema``) and the generated tables in
``docs/configuration.md``, so they are written for users.

Checks that look at the host (a PKCS#11 module file exists, a user or group name
resolves, the confirm program is executable) run only while ``host_checks(True)``
is in force, which is the default; ``secretivex config validate --no-path-checks``
turns them off, e.g. for build-time checks in a sandbox.

No field holds a secret: PINs and passphrases are named by environment variable or
file, never written into the config.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from secretivex.config.filechecks import check_append, check_replace
from secretivex.config.lifetime import parse_lifetime
from secretivex.config.matchers import Matcher, MatcherError, parse_matcher
from secretivex.config.profiles import (
    DEFAULT_PROFILE,
    PROFILE_NAMES,
    ProfileName,
    detect_cpu_count,
    profile_defaults,
)
from secretivex.defaults import (
    PKCS11_ALLOWLIST,
    SOCKET_PATH_MAX_BYTES,
    STORE_TYPES,
    default_socket_path,
)

__all__ = [
    "ENV_NESTED_DELIMITER",
    "ENV_PREFIX",
    "SOCKET_PATH_MAX_BYTES",
    "AgentSection",
    "AuditSection",
    "ConfirmSection",
    "FileStore",
    "ListenerSection",
    "LoggingSection",
    "MetricsSection",
    "PeersSection",
    "Pkcs11Store",
    "PolicySection",
    "SecretivexConfig",
    "StoreConfig",
    "UpstreamStore",
    "default_socket_path",
    "host_checks",
    "host_checks_enabled",
]

#: ``SECRETIVEX_<SECTION>__<KEY>`` variables (read by the loader).
ENV_PREFIX = "SECRETIVEX_"
ENV_NESTED_DELIMITER = "__"


_HOST_CHECKS: ContextVar[bool] = ContextVar("secretivex_config_host_checks", default=True)


@contextmanager
def host_checks(enabled: bool) -> Iterator[None]:
    """Enable or disable checks against this machine while validating models."""
    token = _HOST_CHECKS.set(enabled)
    try:
        yield
    finally:
        _HOST_CHECKS.reset(token)


def host_checks_enabled() -> bool:
    return _HOST_CHECKS.get()


# --------------------------------------------------------------------------- helpers


def _fail(kind: str, message: str, **ctx: Any) -> NoReturn:
    """Raise a validation error whose message is exactly ``message``.

    ``field=`` in ctx names the key the problem is about, when the validator runs on a
    whole model (the loader appends it to the error location).
    """
    raise PydanticCustomError(kind, "{reason}", {"reason": message, **ctx})


_ENV_REFERENCE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")


def _expand_absolute(value: Any, what: str, *, show: bool = True) -> Path:
    """``value`` as an absolute path (a leading ``~`` expanded). ``show=False``: the
    messages never repeat the value (it may be the secret itself, written by mistake
    where its file's name belongs)."""
    if isinstance(value, Path):
        text = str(value)
    elif isinstance(value, str):
        text = value
    else:
        _fail("path_type", f"{what} must be a string, not {_type_name(value)}")
    if not text.strip():
        _fail("path_empty", f"{what} must not be empty")
    if "\x00" in text:
        _fail("path_nul", f"{what} must not contain a NUL byte")
    variable = _ENV_REFERENCE.search(text)
    if variable is not None:
        # Decided: only a leading ~ expands. $VARs would make a path mean different
        # things under systemd, sudo and a login shell; say so instead of guessing.
        suggestion = ""
        if variable.group(1) == "HOME" and variable.start() == 0 and show:
            suggestion = f" - write {'~' + text[variable.end() :]!r}"
        named = f"{what} {text!r}" if show else what
        _fail(
            "path_variable",
            f"{named} uses {variable.group(0) if show else 'a $VARIABLE'}, but variables are "
            f"not expanded in config paths (only a leading ~/ is){suggestion}",
        )
    expanded = Path(text).expanduser()
    if not expanded.is_absolute():
        got = f", got {text!r}" if show else " (the value is not shown: it may be a secret)"
        _fail(
            "path_relative",
            f"{what} must be absolute (or start with ~/){got}: "
            "relative paths would depend on the agent's working directory",
        )
    return expanded


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _abs_path(value: Any) -> Path:
    return _expand_absolute(value, "path")


def _secret_path(value: Any) -> Path:
    return _expand_absolute(value, "path", show=False)


def _socket_path(value: Any) -> Path:
    path = _expand_absolute(value, "socket path")
    size = len(os.fsencode(path))
    if size > SOCKET_PATH_MAX_BYTES:
        _fail(
            "socket_path_too_long",
            f"socket path is {size} bytes; at most {SOCKET_PATH_MAX_BYTES} are allowed "
            "because the kernel's sun_path field holds 108 bytes on Linux and 104 on "
            "macOS - pick a shorter directory",
        )
    return path


def _path_schema(description: str) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "format": "path", "description": description})


AbsPath = Annotated[
    Path,
    PlainValidator(_abs_path),
    PlainSerializer(str, return_type=str),
    _path_schema("absolute path; a leading ~/ is expanded"),
]
#: ``pin_file``/``passphrase_file``: errors never repeat the value (a PIN written there
#: by mistake must not reach `config validate` output, CI logs or the journal).
SecretPath = Annotated[
    Path,
    PlainValidator(_secret_path),
    PlainSerializer(str, return_type=str),
    _path_schema("absolute path; a leading ~/ is expanded"),
]
SocketPath = Annotated[
    Path,
    PlainValidator(_socket_path),
    PlainSerializer(str, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "format": "socket-path",
            "maxLength": SOCKET_PATH_MAX_BYTES,
            "description": (
                f"absolute Unix socket path (~/ expanded), at most {SOCKET_PATH_MAX_BYTES} bytes"
            ),
        }
    ),
]


def _to_matcher(value: Any) -> Matcher:
    if isinstance(value, Matcher):
        return value
    if not isinstance(value, str):
        _fail("matcher_type", f"a matcher must be a string, not {_type_name(value)}")
    try:
        return parse_matcher(value)
    except MatcherError as exc:
        _fail("matcher", str(exc))


MatcherField = Annotated[
    Matcher,
    PlainValidator(_to_matcher),
    PlainSerializer(str, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "format": "key-matcher",
            "pattern": r"^\s*(SHA256:[A-Za-z0-9+/]{43}=?|comment:.+|type:.+)\s*$",
            "description": "SHA256:<fingerprint>, comment:<glob> or type:<key type>",
        }
    ),
]


def _int_to_str(value: Any) -> Any:
    """YAML reads ``token_label: 1234`` as a number; accept it as the text the user wrote."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


Text = Annotated[str, BeforeValidator(_int_to_str)]

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _env_name(value: Any) -> str:
    # Only *_env keys (pin_env, passphrase_env) are EnvNames: the value is never shown,
    # since a PIN or passphrase written there by mistake would reach CI logs.
    if not isinstance(value, str) or not _ENV_NAME.fullmatch(value):
        _fail(
            "env_name",
            "must name an environment variable (letters, digits and _, not starting with "
            "a digit) that holds the secret, not the secret itself; the value given is "
            "not shown",
        )
    return value


EnvName = Annotated[
    str,
    PlainValidator(_env_name),
    WithJsonSchema({"type": "string", "format": "env-var", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"}),
]

_STORE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_ACCOUNT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?")


def _account(value: Any, kind: Literal["user", "group"]) -> int | str | None:
    """A numeric id, or a name that must resolve on this host when host checks are on."""
    if value is None:
        return None
    if isinstance(value, bool):
        _fail("account_type", f"{kind} must be a name or a number, not a boolean")
    if isinstance(value, int):
        if value < 0:
            _fail("account_id", f"a numeric {kind} id must be >= 0")
        return value
    if not isinstance(value, str):
        _fail("account_type", f"{kind} must be a name or a number, not {_type_name(value)}")
    if value.isdigit():
        return int(value)
    if not _ACCOUNT_NAME.fullmatch(value):
        _fail("account_name", f"{value!r} is not a valid {kind} name")
    if host_checks_enabled():
        try:
            if kind == "user":
                pwd.getpwnam(value)
            else:
                grp.getgrnam(value)
        except KeyError:
            _fail(
                "account_unknown",
                f"no {kind} named {value!r} on this host (use a numeric id, or "
                "--no-path-checks to validate for another machine)",
            )
    return value


Owner = Annotated[
    int | str | None,
    PlainValidator(lambda v: _account(v, "user")),
    WithJsonSchema(
        {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}, {"type": "null"}]}
    ),
]
Group = Annotated[
    int | str | None,
    PlainValidator(lambda v: _account(v, "group")),
    WithJsonSchema(
        {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}, {"type": "null"}]}
    ),
]


def _lifetime(value: Any) -> int:
    if not isinstance(value, (int, str)) or isinstance(value, bool):
        _fail("lifetime", f"lifetime must be seconds or a time like 1h30m, not {_type_name(value)}")
    try:
        return parse_lifetime(value)
    except ValueError as exc:
        _fail("lifetime", str(exc))


Lifetime = Annotated[
    int,
    PlainValidator(_lifetime),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": "^([0-9]+[smhdwSMHDW]?)+$"},
            ]
        }
    ),
]


def _peer_account(value: Any, kind: Literal["user", "group"]) -> int | str:
    if value is None:
        _fail("account_type", f"{kind} must be a name or a number, not null")
    resolved = _account(value, kind)
    assert resolved is not None
    return resolved


_ACCOUNT_SCHEMA = {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}]}
PeerUser = Annotated[
    int | str,
    PlainValidator(lambda v: _peer_account(v, "user")),
    WithJsonSchema(_ACCOUNT_SCHEMA),
]
PeerGroup = Annotated[
    int | str,
    PlainValidator(lambda v: _peer_account(v, "group")),
    WithJsonSchema(_ACCOUNT_SCHEMA),
]


class _Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        validate_default=True,
    )


# --------------------------------------------------------------------------- agent


def _from_profile(key: str) -> Any:
    """Default factory: the default profile's value on this machine.

    The loader always layers a profile over these, so they matter only when the model
    is built directly; the schema shows no fixed default for them.
    """
    return lambda: profile_defaults(DEFAULT_PROFILE, detect_cpu_count())[key]


class AgentSection(_Section):
    """The main agent socket and its limits."""

    socket: SocketPath = Field(
        default_factory=default_socket_path,
        description=(
            "Unix socket the agent listens on (what SSH_AUTH_SOCK points to). "
            "Default: $XDG_RUNTIME_DIR/secretivex/agent.sock, else ~/.secretivex/agent.sock."
        ),
        examples=["/run/user/1000/secretivex/agent.sock"],
    )
    profile: ProfileName = Field(
        default=DEFAULT_PROFILE,
        description=(
            "Workload preset ("
            + ", ".join(PROFILE_NAMES)
            + ") that supplies max_connections, max_signers, sign_timeout_ms, "
            "idle_timeout_ms, identity_cache_ms and listen_backlog unless they are set."
        ),
        examples=["fanout"],
    )
    max_connections: int = Field(
        default_factory=_from_profile("max_connections"),
        ge=1,
        description="Most client connections served at once (all sockets); more wait in the "
        "listen backlog.",
        examples=[4096],
    )
    max_signers: int = Field(
        default_factory=_from_profile("max_signers"),
        ge=1,
        description="Most sign operations running at once; the rest wait in a queue.",
        examples=[16],
    )
    sign_timeout_ms: int = Field(
        default_factory=_from_profile("sign_timeout_ms"),
        ge=0,
        description="Fail a sign request that waited this long for a signer slot; 0 = wait "
        "as long as the client does.",
        examples=[500],
    )
    idle_timeout_ms: int = Field(
        default_factory=_from_profile("idle_timeout_ms"),
        ge=0,
        description="Close a client connection idle this long; 0 = never.",
        examples=[10000],
    )
    identity_cache_ms: int = Field(
        default_factory=_from_profile("identity_cache_ms"),
        ge=0,
        description="How long a listing fetched from elsewhere (an upstream agent) is reused "
        "before it is fetched again: the default of each upstream store's refresh_ms "
        "(at least 100).",
        examples=[5000],
    )
    listen_backlog: int = Field(
        default_factory=_from_profile("listen_backlog"),
        ge=1,
        description="listen(2) backlog of each socket: connections the kernel holds while "
        "the agent is busy (capped by net.core.somaxconn).",
        examples=[2048],
    )
    allow_add: bool = Field(
        default=True,
        description="Let ssh-add add keys to the in-memory store through the main socket.",
        examples=[False],
    )
    allow_lock: bool = Field(
        default=True,
        description="Let ssh-add -x/-X lock and unlock the agent through the main socket.",
        examples=[False],
    )
    max_added_keys: int = Field(
        default=1000,
        ge=0,
        description="Most keys ssh-add may hold in the in-memory store (all sockets "
        "together); an add beyond it fails. The keys of one identities answer must also "
        "fit in 256 KiB, which caps large keys and certificates earlier.",
        examples=[100],
    )
    max_added_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=0,
        description="Most bytes the in-memory store may hold for ssh-add'ed keys (key "
        "material, certificates, comments, destination constraints); an add beyond it "
        "fails.",
        examples=[1048576],
    )
    pkcs11_allowlist: list[str] = Field(
        default=list(PKCS11_ALLOWLIST),
        description="Globs of PKCS#11 modules that ssh-add -s may load (like ssh-agent -P); "
        "[] forbids ssh-add -s.",
        examples=[["/usr/lib/x86_64-linux-gnu/*"]],
    )
    max_connections_per_uid: int | None = Field(
        default=None,
        ge=1,
        description="Most connections one peer uid may hold at once (all sockets together; "
        "the agent's own uid is exempt on the main socket only); more are refused. "
        "null = a quarter of max_connections.",
        examples=[64],
    )
    reserved_connections: int = Field(
        default=16,
        ge=0,
        description="Slots of max_connections that only the agent's own uid may use, on "
        "the main socket, so peers on listeners (root in a container included) can never "
        "lock the owner out (at most half of max_connections is reserved).",
        examples=[32],
    )
    max_buffered_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=64 * 1024,
        description="Bytes of unfinished requests (frames still arriving) the agent buffers "
        "for all connections together, beyond the first 8 KiB of each (small requests are "
        "never refused); the connection whose bytes would pass it is closed.",
        examples=[8388608],
    )
    frame_timeout_ms: int = Field(
        default=10_000,
        ge=0,
        description="Close a connection that does not finish a request within this long "
        "after its first byte arrived (slow senders); 0 = no deadline.",
        examples=[5000],
    )

    default_lifetime: Lifetime = Field(
        default=0,
        description="Lifetime given to keys added by ssh-add without -t, in seconds or "
        "OpenSSH's time format (1h30m, 2d); 0 = until removed. Like ssh-agent -t.",
        examples=["1h30m"],
    )

    @field_validator("pkcs11_allowlist")
    @classmethod
    def _absolute_globs(cls, value: list[str]) -> list[str]:
        out = []
        for pattern in value:
            expanded = str(Path(pattern).expanduser())
            if not expanded.startswith("/"):
                _fail(
                    "glob_relative",
                    f"allowlist pattern {pattern!r} must be an absolute path glob",
                )
            out.append(expanded)
        return out


# --------------------------------------------------------------------------- stores


def _at_most_one(model: BaseModel, *names: str, what: str = "") -> None:
    present = [name for name in names if getattr(model, name) is not None]
    if len(present) > 1:
        listed = " and ".join(names) if len(names) == 2 else ", ".join(names)
        suffix = f" ({what})" if what else ""
        _fail("conflict", f"set only one of {listed}{suffix}", field=present[0])


_STORE_NAME_DESCRIPTION = (
    "Name used in logs, metrics and `client health`; default <type>-<index>, e.g. file-0."
)


def _store_name(value: Any) -> str:
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or not _STORE_NAME.fullmatch(value):
        _fail(
            "store_name",
            f"store name {value!r} must be 1-64 letters, digits, '_', '.', '@' or '-', "
            "starting with a letter or digit",
        )
    return value


StoreName = Annotated[
    str,
    PlainValidator(_store_name),
    WithJsonSchema({"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"}),
]


class FileStore(_Section):
    """OpenSSH private key files (and directories of them)."""

    type: Literal["file"] = Field(description="Store kind.", examples=["file"])
    name: StoreName = Field(default="", description=_STORE_NAME_DESCRIPTION, examples=["laptop"])
    paths: list[AbsPath] = Field(
        default=[Path("~/.ssh")],
        min_length=1,
        description="OpenSSH private key files, or directories holding them.",
        examples=[["~/.ssh/id_ed25519", "/etc/secretivex/keys"]],
    )
    passphrase_env: EnvName | None = Field(
        default=None,
        description="Environment variable holding the passphrase of encrypted keys.",
        examples=["SECRETIVEX_KEY_PASSPHRASE"],
    )
    passphrase_file: SecretPath | None = Field(
        default=None,
        description="File whose first line is the passphrase (e.g. a systemd credential).",
        examples=["/run/credentials/secretivex.service/passphrase"],
    )

    @model_validator(mode="after")
    def _one_passphrase(self) -> Self:
        _at_most_one(self, "passphrase_env", "passphrase_file")
        return self


class Pkcs11Store(_Section):
    """Keys on a PKCS#11 token (SoftHSM, YubiKey PIV, HSMs)."""

    type: Literal["pkcs11"] = Field(description="Store kind.", examples=["pkcs11"])
    name: StoreName = Field(default="", description=_STORE_NAME_DESCRIPTION, examples=["hsm"])
    module: AbsPath = Field(
        description="The PKCS#11 module (.so) to load; must exist unless path checks are off.",
        examples=["/usr/lib/softhsm/libsofthsm2.so"],
    )
    token_label: Text | None = Field(
        default=None,
        description="Pick the token by label. Set at most one of token_label, token_serial, "
        "slot; none = the first slot with a token.",
        examples=["ci"],
    )
    token_serial: Text | None = Field(
        default=None, description="Pick the token by serial number.", examples=["a1b2c3d4e5f6"]
    )
    slot: int | None = Field(
        default=None, ge=0, description="Pick the token by slot id.", examples=[0]
    )
    pin_env: EnvName | None = Field(
        default=None,
        description="Environment variable holding the user PIN. Set at most one of pin_env, "
        "pin_file, pin_command and pin_prompt; none = the token needs no login.",
        examples=["SECRETIVEX_PKCS11_PIN"],
    )
    pin_file: SecretPath | None = Field(
        default=None,
        description="File whose first line is the user PIN.",
        examples=["/run/credentials/secretivex.service/pin"],
    )
    pin_command: list[Text] | None = Field(
        default=None,
        description="argv of a program (no shell) run when the token first needs its PIN; "
        "the first line of its stdout is the PIN, kept in memory only. It gets the confirm "
        "hook's minimal environment plus SECRETIVEX_PIN_PROMPT. A non-zero exit, a timeout "
        "or empty output leaves the store degraded until SIGHUP.",
        examples=[["/usr/local/bin/token-pin", "ci"]],
    )
    pin_prompt: bool | None = Field(
        default=None,
        description="true = ask $SSH_ASKPASS for the PIN when the token first needs it "
        "(prompt 'Enter PIN for token ...'), kept in memory only; cancelled or timed out = "
        "store degraded until SIGHUP, which asks again.",
        examples=[True],
    )
    pin_timeout_ms: int = Field(
        default=60000,
        ge=1,
        description="How long pin_command or the pin_prompt may take.",
        examples=[120000],
    )

    @field_validator("module")
    @classmethod
    def _module_exists(cls, value: Path) -> Path:
        if host_checks_enabled() and not value.is_file():
            _fail(
                "module_missing",
                f"PKCS#11 module {str(value)!r} does not exist (install it, fix the path, or "
                "use --no-path-checks to validate for another machine)",
            )
        return value

    @model_validator(mode="after")
    def _selectors(self) -> Self:
        _at_most_one(self, "token_label", "token_serial", "slot", what="they pick the token")
        _at_most_one(self, "pin_env", "pin_file")
        _at_most_one(
            self, "pin_env", "pin_file", "pin_command", "pin_prompt", what="one PIN source"
        )
        return self

    @field_validator("pin_prompt")
    @classmethod
    def _prompt_off_is_unset(cls, value: bool | None) -> bool | None:
        return value or None  # false = no prompt, same as leaving it out

    @field_validator("pin_command")
    @classmethod
    def _pin_program(cls, value: list[str] | None) -> list[str] | None:
        if not value:
            return None
        program = _expand_absolute(value[0], "the PIN program (pin_command[0])")
        if host_checks_enabled() and not (program.is_file() and os.access(program, os.X_OK)):
            _fail(
                "program_missing",
                f"PIN program {str(program)!r} is not an executable file (or use "
                "--no-path-checks to validate for another machine)",
            )
        return [str(program), *value[1:]]


class UpstreamStore(_Section):
    """Another SSH agent whose keys are re-served (filtered by policy and scopes).

    Its key listing is refreshed in the background every refresh_ms and served from
    memory, so a hung or slow upstream never delays listings or signs of other stores.
    When a refresh times out or gets garbage, the last good listing keeps being served
    (client health shows the store degraded, stale, with its age) until it is
    stale_expiry_ms old; when the upstream's socket is gone or refuses connections, its
    keys are withdrawn at once.
    """

    type: Literal["upstream"] = Field(description="Store kind.", examples=["upstream"])
    name: StoreName = Field(default="", description=_STORE_NAME_DESCRIPTION, examples=["forwarded"])
    socket: SocketPath = Field(
        description="The upstream agent's socket.", examples=["/run/user/1000/ssh-agent.sock"]
    )
    timeout_ms: int = Field(
        default=5000,
        ge=0,
        description="Give up on an upstream request after this long; 0 = no timeout.",
        examples=[2000],
    )
    refresh_ms: int | None = Field(
        default=None,
        ge=100,
        description="Re-read the upstream's key listing this often, in the background; "
        "null = agent.identity_cache_ms (at least 100).",
        examples=[5000],
    )
    stale_expiry_ms: int = Field(
        default=300000,
        ge=0,
        description="Keep serving the last good listing of an unresponsive upstream for "
        "this long after its last successful refresh; 0 = drop it at the first failure.",
        examples=[60000],
    )
    max_signers: int = Field(
        default=4,
        ge=1,
        description="Signs sent to this upstream at once; more wait (within timeout_ms). "
        "Kept apart from agent.max_signers so a hung upstream never starves other stores.",
        examples=[8],
    )


StoreConfig = Annotated[FileStore | Pkcs11Store | UpstreamStore, Field(discriminator="type")]

# --------------------------------------------------------------------------- policy


class ConfirmSection(_Section):
    """Ask an external program before a sign; other clients are never blocked meanwhile."""

    command: list[Text] = Field(
        default=[],
        description="argv of the approval program (no shell); exit 0 allows, anything else "
        "denies. Empty = no confirmation.",
        examples=[["/usr/local/bin/approve", "--title", "SSH sign"]],
    )
    timeout_ms: int = Field(
        default=30000,
        ge=1,
        description="Deny when the program has not answered after this long.",
        examples=[15000],
    )
    cache_ms: int = Field(
        default=0,
        ge=0,
        description="After an approval, skip asking again for the same key and peer for this "
        "long; 0 = ask every time.",
        examples=[300000],
    )
    keys: list[MatcherField] = Field(
        default=[],
        description="Which keys need confirmation (matchers); empty = every key.",
        examples=[["comment:prod-*"]],
    )
    max_concurrent: int = Field(
        default=4,
        ge=1,
        le=1024,
        description="How many confirm programs may run at once; further requests queue, "
        "and one still queued when timeout_ms runs out is denied (confirm_timeout).",
        examples=[2],
    )

    @field_validator("command")
    @classmethod
    def _program(cls, value: list[str]) -> list[str]:
        if not value:
            return value
        program = _expand_absolute(value[0], "the confirm program (command[0])")
        if host_checks_enabled() and not (program.is_file() and os.access(program, os.X_OK)):
            _fail(
                "program_missing",
                f"confirm program {str(program)!r} is not an executable file (or use "
                "--no-path-checks to validate for another machine)",
            )
        return [str(program), *value[1:]]


class PolicySection(_Section):
    """Which keys may be used, and which need a confirmation."""

    allow: list[MatcherField] = Field(
        default=[],
        description="If not empty, only keys matching one of these are listed and used.",
        examples=[["comment:*@example.com", "type:ssh-ed25519"]],
    )
    deny: list[MatcherField] = Field(
        default=[],
        description="Keys matching any of these are never listed or used (deny wins over allow).",
        examples=[["SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"]],
    )
    confirm: ConfirmSection = Field(
        default_factory=ConfirmSection,
        description="Confirmation hook.",
    )

    @model_validator(mode="after")
    def _confirm_needs_command(self) -> Self:
        if self.confirm.keys and not self.confirm.command:
            _fail(
                "confirm_without_command",
                "confirm.keys is set but confirm.command is empty: name the approval program",
                field="confirm.keys",
            )
        return self


# --------------------------------------------------------------------------- listeners

_MODE = re.compile(r"[0-7]{3,4}")


def _mode(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        _fail(
            "mode_type",
            'write mode as a quoted octal string, e.g. mode: "0660" (YAML reads an '
            f"unquoted 0660 as the number 432; got {value})",
        )
    if not isinstance(value, str) or not _MODE.fullmatch(value):
        _fail("mode", f'mode must be 3 or 4 octal digits like "0660", got {value!r}')
    bits = int(value, 8)
    if bits > 0o777:
        _fail("mode", f"mode {value} sets setuid/setgid/sticky bits, which sockets ignore")
    if bits & 0o600 != 0o600:
        _fail("mode", f"mode {value} must give the owner read and write (0600 at least)")
    return f"{bits:04o}"


OctalMode = Annotated[
    str,
    PlainValidator(_mode),
    WithJsonSchema({"type": "string", "pattern": "^[0-7]{3,4}$"}),
]


class PeersSection(_Section):
    """Who may connect, checked with SO_PEERCRED on every connection. Setting either
    list narrows the listener to exactly these peers (plus the agent's own uid and
    root); names are resolved when the config is loaded and on every reload."""

    uids: list[PeerUser] = Field(
        default=[],
        description="Peer users allowed: user names or uids. When uids and gids are both "
        "empty: the agent's own uid, root and members of the listener's group.",
        examples=[["alice", 1001]],
    )
    gids: list[PeerGroup] = Field(
        default=[],
        description="Peer groups allowed: group names or gids; a peer is in a group when "
        "it is its primary or one of its supplementary groups.",
        examples=[["team", 998]],
    )


class ListenerSection(_Section):
    """An extra socket with its own key scope and peer checks."""

    socket: SocketPath = Field(
        description="Path of this socket; unique, and not the agent's main socket.",
        examples=["/run/secretivex/ci.sock"],
    )
    mode: OctalMode = Field(
        default="0600",
        description='Permission bits of the socket file, as a quoted octal string ("0660").',
        examples=["0660"],
    )
    owner: Owner = Field(
        default=None,
        description="Owner of the socket file: user name or uid; null = the agent's user.",
        examples=[1000],
    )
    group: Group = Field(
        default=None,
        description="Group of the socket file: group name or gid; null = the agent's group. "
        "Its members (primary or supplementary) are admitted unless `peers` narrows it.",
        examples=["docker"],
    )
    keys: list[MatcherField] = Field(
        default=[],
        description="Keys this socket can see and use (matchers); empty = every key the "
        "policy allows.",
        examples=[["comment:ci-*"]],
    )
    peers: PeersSection = Field(
        default_factory=PeersSection, description="Peer credential allowlist."
    )
    allow_add: bool = Field(
        default=False, description="Let clients of this socket add keys (ssh-add).", examples=[True]
    )
    allow_lock: bool = Field(
        default=False,
        description="Let clients of this socket lock/unlock the agent.",
        examples=[True],
    )
    max_connections: int | None = Field(
        default=None,
        ge=1,
        description="Most connections this socket serves at once (within agent.max_connections "
        "and agent.max_connections_per_uid); more are refused. null = no separate limit.",
        examples=[64],
    )

    @property
    def mode_bits(self) -> int:
        return int(self.mode, 8)


# --------------------------------------------------------------------------- observability


class MetricsSection(_Section):
    """Metrics snapshots (JSON) and Prometheus text."""

    path: AbsPath | None = Field(
        default=None,
        description="Write a JSON metrics snapshot here (atomically); null = off.",
        examples=["/run/secretivex/metrics.json"],
    )
    interval_ms: int = Field(
        default=1000,
        ge=100,
        description="How often snapshots are written.",
        examples=[5000],
    )
    prometheus_textfile: AbsPath | None = Field(
        default=None,
        description="Also write Prometheus text here (node_exporter textfile collector); "
        "must end in .prom; null = off.",
        examples=["/var/lib/node_exporter/textfile/secretivex.prom"],
    )

    @field_validator("prometheus_textfile")
    @classmethod
    def _prom_suffix(cls, value: Path | None) -> Path | None:
        if value is not None and value.suffix != ".prom":
            _fail(
                "prom_suffix",
                "node_exporter's textfile collector only reads files ending in .prom",
            )
        return value

    @field_validator("path", "prometheus_textfile")
    @classmethod
    def _replaceable(cls, value: Path | None) -> Path | None:
        if value is not None and host_checks_enabled():
            # What another uid could do to the file the agent renames into place
            # (config.filechecks), creating nothing.
            problem = check_replace(value)
            if problem:
                _fail(
                    "metrics_unsafe",
                    f"{problem} (fix the path or its permissions, or use --no-path-checks "
                    "to validate for another machine)",
                )
        return value


def _audit_path(value: Any) -> str | None:
    if value is None:
        return None
    if value == "-":
        return "-"
    path = _expand_absolute(value, "audit path")
    if host_checks_enabled():
        # What the agent's open would refuse (config.filechecks), creating nothing.
        problem = check_append(path)
        if problem:
            _fail(
                "audit_unwritable",
                f"{problem} (fix the path or its permissions, or use --no-path-checks to "
                "validate for another machine)",
            )
    return str(path)


class AuditSection(_Section):
    """Audit log: one JSON object per request decision."""

    path: Annotated[
        str | None,
        PlainValidator(_audit_path),
        WithJsonSchema(
            {"anyOf": [{"const": "-"}, {"type": "string", "format": "path"}, {"type": "null"}]}
        ),
    ] = Field(
        default=None,
        description='JSON-lines audit log file; "-" = stderr; null = off.',
        examples=["/var/log/secretivex/audit.jsonl"],
    )


_LEVEL_ALIASES = {"warn": "warning", "fatal": "critical"}


def _level(value: Any) -> Any:
    if isinstance(value, str):
        lowered = value.strip().lower()
        return _LEVEL_ALIASES.get(lowered, lowered)
    return value


class LoggingSection(_Section):
    """Diagnostic logs on stderr."""

    level: Annotated[
        Literal["debug", "info", "warning", "error", "critical"], BeforeValidator(_level)
    ] = Field(default="info", description="Least severe level logged.", examples=["debug"])
    format: Literal["text", "json"] = Field(
        default="text",
        description="text for people, json (one object per line) for log collectors.",
        examples=["json"],
    )


# --------------------------------------------------------------------------- root


def _default_stores() -> list[StoreConfig]:
    return [FileStore(type="file", name="file-0")]


def with_store_names(data: Mapping[str, Any]) -> dict[str, Any]:
    """Config data with the default name (``file-0``, ``pkcs11-1``...) given to every
    store that has none; the model and the loader's cross-key checks both use it."""
    stores = data.get("stores")
    if not isinstance(stores, list):
        return dict(data)
    named = []
    for index, item in enumerate(stores):
        if isinstance(item, dict) and item.get("name") in (None, ""):
            kind = item.get("type")
            prefix = kind if isinstance(kind, str) and kind in STORE_TYPES else "store"
            item = {**item, "name": f"{prefix}-{index}"}
        named.append(item)
    return {**data, "stores": named}


class SecretivexConfig(BaseModel):
    """The whole effective configuration.

    Build it with ``secretivex.config.load_config`` (all layers, with sources) rather
    than directly: constructing it directly gives built-in defaults plus what you pass,
    without profile defaults, files or environment.
    """

    # A plain model, not pydantic-settings: the layered loader reads files and
    # SECRETIVEX_* variables itself because it must record file:line / env:NAME for
    # every value, report unknown variables, and read env values as YAML - none of
    # which a settings source exposes. The model only validates.
    model_config = ConfigDict(extra="forbid", frozen=True, title="secretivex configuration")

    agent: AgentSection = Field(default_factory=AgentSection, description="The agent itself.")
    stores: list[StoreConfig] = Field(
        default_factory=_default_stores,
        description="Key stores, in listing order. Default: one file store over ~/.ssh. "
        "Keys added with ssh-add live in an implicit memory store listed last.",
    )
    policy: PolicySection = Field(default_factory=PolicySection, description="Key policy.")
    listeners: list[ListenerSection] = Field(
        default=[], description="Extra sockets, e.g. one per container or team."
    )
    metrics: MetricsSection = Field(default_factory=MetricsSection, description="Metrics.")
    audit: AuditSection = Field(default_factory=AuditSection, description="Audit log.")
    logging: LoggingSection = Field(default_factory=LoggingSection, description="Logging.")

    @model_validator(mode="before")
    @classmethod
    def _derive_store_names(cls, data: Any) -> Any:
        return with_store_names(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _cross_checks(self) -> Self:
        problems = cross_key_problems(self.model_dump(mode="json"))
        if problems:
            _fail(
                "cross_check",
                "; ".join(f"{_dotted(loc)}: {msg}" for loc, msg in problems),
                problems=problems,
            )
        return self


def _path_key(value: Any) -> str | None:
    """A socket path as compared across keys (``~`` expanded, normalised)."""
    if not isinstance(value, str) or not value.strip():
        return None
    return os.path.normpath(os.path.expanduser(value))


def cross_key_problems(data: Any) -> list[tuple[tuple[str | int, ...], str]]:
    """Rules across keys (unique store names, one socket per listener, no upstream loop).

    Works on raw merged data as well as on a validated model's dump, so the loader can
    report these in the same run as field errors; entries it cannot read are skipped
    (their own field errors say why).
    """
    if not isinstance(data, dict):
        return []
    problems: list[tuple[tuple[str | int, ...], str]] = []
    stores: list[Any] = data["stores"] if isinstance(data.get("stores"), list) else []
    listeners: list[Any] = data["listeners"] if isinstance(data.get("listeners"), list) else []
    agent: dict[str, Any] = data["agent"] if isinstance(data.get("agent"), dict) else {}
    names: dict[str, int] = {}
    for index, store in enumerate(stores):
        name = store.get("name") if isinstance(store, dict) else None
        if not isinstance(name, str) or not name:
            continue
        if name in names:
            problems.append(
                (
                    ("stores", index, "name"),
                    f"store name {name!r} is already used by stores[{names[name]}]",
                )
            )
        else:
            names[name] = index
    own = _path_key(agent.get("socket"))
    sockets: dict[str, int] = {}
    for index, listener in enumerate(listeners):
        path = _path_key(listener.get("socket")) if isinstance(listener, dict) else None
        if path is None:
            continue
        where: tuple[str | int, ...] = ("listeners", index, "socket")
        if path == own:
            problems.append((where, "this is the agent's main socket (agent.socket)"))
        elif path in sockets:
            problems.append((where, f"socket already used by listeners[{sockets[path]}]"))
        else:
            sockets[path] = index
    for index, store in enumerate(stores):
        if not isinstance(store, dict) or store.get("type") != "upstream":
            continue
        path = _path_key(store.get("socket"))
        if path is not None and (path == own or path in sockets):
            problems.append(
                (
                    ("stores", index, "socket"),
                    "upstream socket is one of this agent's own sockets: requests would "
                    "loop back into the agent",
                )
            )
    return problems


def _dotted(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out
