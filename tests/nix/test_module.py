"""The NixOS module, evaluated here without nixpkgs (nixos-module/testing/ shim).

What this proves: option paths, types and priorities are right (the shim type-checks
and merges like the module system, and reports undeclared definitions); the generated
units carry the ExecStart, socket activation and hardening we promise; the rendered
settings are accepted by the real `secretivex config validate --no-path-checks`; the
build-time validation script passes good settings and fails bad ones with the
validator's message; and the generated units pass `systemd-analyze verify`.

What it cannot prove: that nixpkgs' real module system and systemd unit rendering
agree with the shim (nixos-module/test.nix, run by `nix flake check` on a machine with
nixpkgs, does that).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nixtools import REAL_LIB, TESTING, NixEvalError, require_tool
from nixunits import render_unit

pytestmark = pytest.mark.nix

EVAL = TESTING / "eval.nix"
Eval = Callable[..., Any]

# Every unit gets these, in both modes: seccomp and no_new_privs need no namespaces.
HARDENING = {
    "NoNewPrivileges": True,
    "RestrictAddressFamilies": "AF_UNIX",
    "RestrictNamespaces": True,
    "RestrictRealtime": True,
    "RestrictSUIDSGID": True,
    "LockPersonality": True,
    "MemoryDenyWriteExecute": True,
    "SystemCallArchitectures": "native",
    "SystemCallFilter": ["@system-service"],
    "UMask": "0177",
    "Type": "notify",
    "KillMode": "mixed",  # SIGTERM to the agent only: it drains
    "RestartPreventExitStatus": "2",
}
# The mount/capability sandbox: system mode always, user mode where user namespaces
# are allowed (security.allowUserNamespaces, the NixOS default).
SANDBOX = {
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "ProtectSystem": "strict",
    "PrivateTmp": True,
    "ProtectKernelTunables": True,
    "ProtectKernelModules": True,
    "ProtectKernelLogs": True,
    "ProtectClock": True,
    "ProtectHostname": True,
}
START_LIMIT = {"StartLimitIntervalSec": "60s", "StartLimitBurst": 3}

FILE_STORE = {"stores": [{"type": "file", "paths": ["~/agent-keys/id_ed25519"]}]}

SHARED = {
    "enable": True,
    "mode": "system",
    "credentials": {"team-passphrase": "/run/keys/team-passphrase"},
    "settings": {
        "stores": [
            {
                "type": "file",
                "paths": ["/var/lib/secretivex/keys/team_ed25519"],
                "passphrase_file": "/run/credentials/secretivex.service/team-passphrase",
            }
        ],
        "listeners": [
            {
                "socket": "/run/secretivex/team.sock",
                "mode": "0660",
                "group": "team",
                "peers": {"gids": [2000]},
            }
        ],
    },
}


def evaluate(nix_eval: Eval, secretivex: dict[str, Any], world: Any = None, **args: str) -> Any:
    scenario = json.dumps({"secretivex": secretivex, "world": world or {}})
    result = nix_eval(EVAL, scenario=scenario, **args)
    assert result["undeclared"] == [], result["undeclared"]
    return result


# --------------------------------------------------------------------------- modes


def test_disabled_defines_nothing(nix_eval: Eval) -> None:
    out = evaluate(nix_eval, {"enable": False})
    assert out["etc"] == []
    assert out["systemd"] == {
        "services": {},
        "sockets": {},
        "user": {"services": {}, "sockets": {}},
    }
    assert out["users"] == {"users": {}, "groups": {}}
    assert out["extraInit"] == ""


def test_user_mode_units(nix_eval: Eval) -> None:
    out = evaluate(nix_eval, {"enable": True, "settings": FILE_STORE})
    assert out["failedAssertions"] == []
    assert out["warnings"] == []
    pkg = out["package"]
    user = out["systemd"]["user"]
    assert out["systemd"]["services"] == {} and out["systemd"]["sockets"] == {}

    sock = user["sockets"]["secretivex"]
    assert sock["listenStreams"] == ["%t/secretivex/agent.sock"]
    assert sock["wantedBy"] == ["sockets.target"]
    assert sock["socketConfig"] == {
        "FileDescriptorName": "agent",
        "SocketMode": "0600",
        "DirectoryMode": "0700",
        "Service": "secretivex.service",
    }
    assert sock["unitConfig"] == {"ConditionUser": "!@system"}

    svc = user["services"]["secretivex"]
    cfg = svc["serviceConfig"]
    assert cfg["ExecStart"] == f"{pkg}/bin/secretivex agent --socket %t/secretivex/agent.sock"
    assert cfg["ExecReload"].endswith("/bin/kill -HUP $MAINPID")
    for key, value in {**HARDENING, **SANDBOX}.items():
        assert cfg.get(key) == value, key
    assert cfg["PrivateUsers"] is True  # said out loud: user units need it for the sandbox
    assert cfg["ProtectHome"] == "read-only"  # keys under ~/.ssh are read, never written
    assert cfg["PrivateDevices"] is True  # no PKCS#11: no devices
    assert "RuntimeDirectory" not in cfg  # the socket unit makes the directory
    assert "User" not in cfg and "LoadCredential" not in cfg
    assert svc["unitConfig"] == {"ConditionUser": "!@system", **START_LIMIT}
    # nixos-rebuild switch restarts no user units: running agents are reloaded
    (script,) = out["userActivationScripts"].values()
    assert "systemctl --user try-reload-or-restart secretivex.service" in script
    assert svc["requires"] == ["secretivex.socket"] and svc["after"] == ["secretivex.socket"]
    assert svc["wantedBy"] == []  # socket-activated only

    assert 'export SSH_AUTH_SOCK="$XDG_RUNTIME_DIR/secretivex/agent.sock"' in out["extraInit"]
    assert '[ -z "${SSH_AUTH_SOCK-}" ]' in out["extraInit"]  # agent forwarding wins
    assert out["etc"] == ["secretivex/config.yaml"]
    assert out["systemPackages"] == [pkg]
    assert out["users"] == {"users": {}, "groups": {}}
    assert out["settings"] == {**FILE_STORE, "agent": {"pkcs11_allowlist": []}}


def test_user_mode_without_user_namespaces_leaves_the_sandbox_out(nix_eval: Eval) -> None:
    """Where user namespaces are off, a user unit with the sandbox never starts
    (218/CAPABILITIES): the module leaves it out, knowingly; seccomp stays."""
    world = {"security": {"allowUserNamespaces": False}}
    out = evaluate(nix_eval, {"enable": True}, world)
    cfg = out["systemd"]["user"]["services"]["secretivex"]["serviceConfig"]
    for key, value in HARDENING.items():
        assert cfg.get(key) == value, key
    for key in [*SANDBOX, "PrivateUsers", "ProtectHome", "PrivateDevices"]:
        assert key not in cfg, key


def test_user_mode_can_leave_ssh_auth_sock_alone(nix_eval: Eval) -> None:
    out = evaluate(nix_eval, {"enable": True, "setSshAuthSock": False})
    assert out["extraInit"] == ""


def test_system_mode_units(nix_eval: Eval) -> None:
    out = evaluate(nix_eval, SHARED)
    assert out["failedAssertions"] == []
    pkg = out["package"]
    assert out["systemd"]["user"] == {"services": {}, "sockets": {}}
    assert out["extraInit"] == ""

    sockets = out["systemd"]["sockets"]
    main = sockets.pop("secretivex")
    assert main["listenStreams"] == ["/run/secretivex/agent.sock"]
    assert main["socketConfig"] == {
        "FileDescriptorName": "agent",
        "SocketUser": "secretivex",
        "SocketGroup": "secretivex",
        "SocketMode": "0660",
        "DirectoryMode": "0755",
        "Service": "secretivex.service",
    }
    ((listener_name, listener),) = sockets.items()
    assert listener_name.startswith("secretivex-listener-")
    assert listener["listenStreams"] == ["/run/secretivex/team.sock"]
    assert listener["wantedBy"] == ["sockets.target"]
    assert listener["socketConfig"] == {
        # a label: the agent matches inherited sockets by path; a path may not be one
        "FileDescriptorName": "listener-0",
        "SocketUser": "secretivex",
        "SocketGroup": "team",
        "SocketMode": "0660",
        "DirectoryMode": "0755",
        "Service": "secretivex.service",
    }

    svc = out["systemd"]["services"]["secretivex"]
    cfg = svc["serviceConfig"]
    units = ["secretivex.socket", f"{listener_name}.socket"]
    assert cfg["ExecStart"] == f"{pkg}/bin/secretivex agent --socket /run/secretivex/agent.sock"
    for key, value in {**HARDENING, **SANDBOX}.items():
        assert cfg.get(key) == value, key
    assert cfg["ProtectControlGroups"] is True
    # the sockets live in /run/secretivex, made by the socket units: no
    # RuntimeDirectory= that systemd would re-own on start (systemd#8635)
    assert "RuntimeDirectory" not in cfg
    assert svc["unitConfig"] == {"AssertPathExists": ["/run/keys/team-passphrase"], **START_LIMIT}
    assert cfg["User"] == "secretivex" and cfg["Group"] == "secretivex"
    assert cfg["ProtectHome"] is True
    assert cfg["IPAddressDeny"] == "any"
    assert cfg["PrivateDevices"] is True
    assert cfg["StateDirectory"] == "secretivex"
    assert cfg["Sockets"] == units
    assert svc["requires"] == units and svc["after"] == units
    assert cfg["LoadCredential"] == ["team-passphrase:/run/keys/team-passphrase"]
    assert svc["reloadTriggers"] == [out["configFile"]["path"]]
    assert svc["environment"] == {"HOME": "/var/lib/secretivex"}

    assert out["users"]["users"]["secretivex"]["isSystemUser"] is True
    assert out["users"]["users"]["secretivex"]["group"] == "secretivex"
    assert "secretivex" in out["users"]["groups"]
    assert out["settings"]["agent"]["socket"] == "/run/secretivex/agent.sock"
    assert out["settings"]["listeners"] == SHARED["settings"]["listeners"]


def test_system_mode_socket_follows_settings(nix_eval: Eval) -> None:
    cfg = {**SHARED, "settings": {"agent": {"socket": "/run/secretivex/main.sock"}}}
    out = evaluate(nix_eval, cfg)
    assert out["systemd"]["sockets"]["secretivex"]["listenStreams"] == ["/run/secretivex/main.sock"]
    exec_start = out["systemd"]["services"]["secretivex"]["serviceConfig"]["ExecStart"]
    assert exec_start.endswith("--socket /run/secretivex/main.sock")


@pytest.mark.parametrize("mode", ["user", "system"])
def test_pkcs11_modules_open_devices_and_fill_the_allowlist(nix_eval: Eval, mode: str) -> None:
    module = "/nix/store/0000-opensc/lib/opensc-pkcs11.so"
    extra = ["/nix/store/0000-yubico/lib/*"]
    out = evaluate(
        nix_eval,
        {
            "enable": True,
            "mode": mode,
            "pkcs11Modules": [module],
            "settings": {"agent": {"pkcs11_allowlist": extra}},
        },
    )
    # both count, merged sorted and without duplicates
    assert out["settings"]["agent"]["pkcs11_allowlist"] == sorted([module, *extra])
    units = out["systemd"]["user" if mode == "user" else "services"]
    if mode == "user":
        units = units["services"]
    cfg = units["secretivex"]["serviceConfig"]
    assert cfg["PrivateDevices"] is False
    if mode == "system":
        assert cfg["DevicePolicy"] == "closed"
        assert cfg["DeviceAllow"] == ["char-usb_device rw", "char-hidraw rw"]


def test_pkcs11_store_alone_also_opens_devices(nix_eval: Eval) -> None:
    store = {"type": "pkcs11", "module": "/nix/store/x/lib/libsofthsm2.so", "token_label": "t"}
    out = evaluate(nix_eval, {"enable": True, "settings": {"stores": [store]}})
    cfg = out["systemd"]["user"]["services"]["secretivex"]["serviceConfig"]
    assert cfg["PrivateDevices"] is False
    assert out["pcscd"] is True  # smart cards behind PKCS#11 need pcscd


def test_own_allowlist_alone_counts_as_pkcs11(nix_eval: Eval) -> None:
    settings = {"agent": {"pkcs11_allowlist": ["/nix/store/y/lib/*"]}}
    out = evaluate(nix_eval, {"enable": True, "mode": "system", "settings": settings})
    cfg = out["systemd"]["services"]["secretivex"]["serviceConfig"]
    assert cfg["PrivateDevices"] is False and cfg["DevicePolicy"] == "closed"
    assert out["pcscd"] is True
    out = evaluate(nix_eval, {"enable": True})
    assert out["pcscd"] is False


def test_allowlist_merge_does_not_depend_on_module_order(nix_eval: Eval) -> None:
    """Definitions from two modules (the scenario's and the world's) in either order
    render the same list: sorted, no duplicates."""
    a, b = "/nix/store/a/lib/a.so", "/nix/store/b/lib/b.so"
    results = []
    for first, second in [(a, b), (b, a)]:
        world = {"services": {"secretivex": {"settings": {"agent": {"pkcs11_allowlist": [first]}}}}}
        mine = {"enable": True, "pkcs11Modules": [second, first]}
        mine["settings"] = {"agent": {"pkcs11_allowlist": [second]}}
        results.append(evaluate(nix_eval, mine, world)["settings"]["agent"]["pkcs11_allowlist"])
    assert results == [[a, b], [a, b]]


def test_settings_declare_the_keys_the_module_sets(nix_eval: Eval) -> None:
    """settings is a submodule: agent.socket and agent.pkcs11_allowlist are typed
    options (a wrong type fails evaluation), everything else is freeform YAML."""
    with pytest.raises(NixEvalError, match=r"settings.agent.socket' is not of type"):
        evaluate(nix_eval, {"enable": True, "mode": "system", "settings": {"agent": {"socket": 5}}})
    with pytest.raises(NixEvalError, match=r"pkcs11_allowlist' is not of type"):
        evaluate(nix_eval, {"enable": True, "settings": {"agent": {"pkcs11_allowlist": "/x"}}})
    out = evaluate(nix_eval, {"enable": True, "settings": {"agent": {"max_connections": 64}}})
    # user mode: no socket key rendered at all (the unit passes --socket)
    assert out["settings"]["agent"] == {"max_connections": 64, "pkcs11_allowlist": []}


def test_environment_file(nix_eval: Eval) -> None:
    out = evaluate(nix_eval, {"enable": True, "environmentFile": "/run/secrets/sx.env"})
    cfg = out["systemd"]["user"]["services"]["secretivex"]["serviceConfig"]
    assert cfg["EnvironmentFile"] == "/run/secrets/sx.env"


# --------------------------------------------------------------------------- guards


@pytest.mark.parametrize(
    ("world", "needle"),
    [
        ({"programs": {"ssh": {"startAgent": True}}}, "programs.ssh.startAgent"),
        (
            {"programs": {"gnupg": {"agent": {"enableSSHSupport": True}}}},
            "programs.gnupg.agent.enableSSHSupport",
        ),
        (
            {"services": {"gnome": {"gcr-ssh-agent": {"enable": True}}}},
            "services.gnome.gcr-ssh-agent.enable",
        ),
        ({"services": {"yubikey-agent": {"enable": True}}}, "services.yubikey-agent.enable"),
        ({"services": {"ssh-tpm-agent": {"enable": True}}}, "services.ssh-tpm-agent.enable"),
    ],
)
def test_user_mode_refuses_a_second_ssh_agent(nix_eval: Eval, world: Any, needle: str) -> None:
    out = evaluate(nix_eval, {"enable": True}, world)
    assert any(needle in m for m in out["failedAssertions"]), out["failedAssertions"]
    # a shared-host agent does not set SSH_AUTH_SOCK, so it coexists
    out = evaluate(nix_eval, {**SHARED}, world)
    assert out["failedAssertions"] == []


def test_agents_missing_from_an_older_nixpkgs_are_skipped(nix_eval: Eval) -> None:
    """`options ? ...` guards: a nixpkgs without gcr-ssh-agent & co. still evaluates."""
    out = evaluate(nix_eval, {"enable": True}, stubBare="true")
    assert out["failedAssertions"] == [] and out["pcscd"] is None


# ------------------------------------------- the stand-in knows systemd's semantics


def test_stand_in_rejects_a_socket_inside_a_reowned_runtime_directory(nix_eval: Eval) -> None:
    """What the module did before: listener sockets in RuntimeDirectory=secretivex of a
    User= service. systemd re-owns that directory on start (systemd#8635)."""
    world = {
        "systemd": {
            "services": {"secretivex": {"serviceConfig": {"RuntimeDirectory": "secretivex"}}}
        }
    }
    out = evaluate(nix_eval, SHARED, world)
    (message,) = out["failedAssertions"]
    assert "systemd#8635" in message and "secretivex:team" in message, message


@pytest.mark.parametrize("name", ["/run/secretivex/a:b.sock", "x" * 256])
def test_stand_in_rejects_fd_names_systemd_ignores(nix_eval: Eval, name: str) -> None:
    """What the module did before: FileDescriptorName = the socket path."""
    world = {"systemd": {"sockets": {"other": {"socketConfig": {"FileDescriptorName": name}}}}}
    out = evaluate(nix_eval, {"enable": False}, world)
    (message,) = out["failedAssertions"]
    assert "FileDescriptorName=" in message and "systemd ignores it" in message


def test_listener_paths_systemd_cannot_name_still_work(nix_eval: Eval) -> None:
    listener = {"socket": "/run/secretivex/team:a.sock", "mode": "0660", "group": "team"}
    out = evaluate(nix_eval, {**SHARED, "settings": {"listeners": [listener]}})
    assert out["failedAssertions"] == []
    names = {u["socketConfig"]["FileDescriptorName"] for u in out["systemd"]["sockets"].values()}
    assert names == {"agent", "listener-0"}


def test_credentials_need_system_mode_and_valid_names(nix_eval: Eval) -> None:
    out = evaluate(nix_eval, {"enable": True, "credentials": {"bad/name": "/run/keys/x"}})
    messages = " | ".join(out["failedAssertions"])
    assert 'credentials needs mode = "system"' in messages
    assert "bad/name" in messages


def test_secrets_in_settings_fail_evaluation_without_being_shown(nix_eval: Eval) -> None:
    """Settings land in /nix/store, readable by every user: a PIN where its variable's
    name belongs, a `pin` key, or a PIN file in the store is refused before anything is
    built, and the messages never repeat the value (build logs, CI)."""
    stores = [
        {"type": "pkcs11", "module": "/m.so", "pin_env": "424242-secret"},
        {"type": "pkcs11", "module": "/m.so", "pin_env": 73515151},
        {"type": "pkcs11", "module": "/m.so", "pin": "990011-secret"},
        {"type": "file", "paths": ["/k"], "passphrase": "hunter2-secret"},
        {"type": "file", "paths": ["/k"], "passphrase_file": "/nix/store/0000-pw"},
        {"type": "pkcs11", "module": "/m.so", "pin_env": "SECRETIVEX_PKCS11_PIN"},
    ]
    out = evaluate(nix_eval, {"enable": True, "settings": {"stores": stores}})
    messages = "\n".join(out["failedAssertions"])
    for index, key in enumerate(["pin_env", "pin_env", "pin", "passphrase", "passphrase_file"]):
        assert f"settings.stores[{index}].{key}" in messages, messages
    assert "stores[5]" not in messages
    for secret in ("424242", "73515151", "990011", "hunter2"):
        assert secret not in messages
    system = {**SHARED, "credentials": {"pin": "/nix/store/0000-pin"}}
    out = evaluate(nix_eval, system)
    assert any("credentials: a file in the Nix store" in m for m in out["failedAssertions"])
    assert evaluate(nix_eval, {**SHARED})["failedAssertions"] == []


@pytest.mark.parametrize("mode", ["user", "system"])
def test_a_pin_variable_in_the_units_environment_fails_evaluation(
    nix_eval: Eval, mode: str
) -> None:
    """`systemd.services.secretivex.environment.PIN = "..."` writes the PIN into the
    unit file in /nix/store (and `systemctl show` shows it to every user)."""
    store = {"type": "pkcs11", "module": "/m.so", "pin_env": "SECRETIVEX_PKCS11_PIN"}
    cfg = {"enable": True, "mode": mode, "settings": {"stores": [store]}}
    services = {"secretivex": {"environment": {"SECRETIVEX_PKCS11_PIN": "424242-secret"}}}
    world = {
        "systemd": {"user": {"services": services}} if mode == "user" else {"services": services}
    }
    out = evaluate(nix_eval, cfg, world)
    messages = " | ".join(out["failedAssertions"])
    assert "SECRETIVEX_PKCS11_PIN (named by pin_env/passphrase_env)" in messages, messages
    assert "424242" not in messages
    assert evaluate(nix_eval, cfg)["failedAssertions"] == []


def test_relative_listener_socket_is_refused(nix_eval: Eval) -> None:
    cfg = {**SHARED, "settings": {"listeners": [{"socket": "team.sock"}]}}
    out = evaluate(nix_eval, cfg)
    assert any("absolute `socket`" in m for m in out["failedAssertions"])


def test_user_mode_warns_about_agent_socket(nix_eval: Eval) -> None:
    out = evaluate(nix_eval, {"enable": True, "settings": {"agent": {"socket": "/tmp/x.sock"}}})
    assert len(out["warnings"]) == 1 and "ignored in user mode" in out["warnings"][0]


@pytest.mark.parametrize(
    ("secretivex", "needle"),
    [
        ({"enable": True, "mode": "both"}, "services.secretivex.mode' is not of type"),
        ({"enable": "yes"}, "services.secretivex.enable' is not of type"),
        ({"enable": True, "pkcs11Modules": "/x.so"}, "pkcs11Modules' is not of type"),
        ({"enable": True, "environmentFile": "relative.env"}, "environmentFile' is not of type"),
    ],
)
def test_type_errors_fail_evaluation(nix_eval: Eval, secretivex: Any, needle: str) -> None:
    with pytest.raises(NixEvalError, match=needle):
        evaluate(nix_eval, secretivex)


def test_shim_reports_misspelt_options(nix_eval: Eval) -> None:
    """The shim has teeth: an option nobody declares is reported, not ignored."""
    scenario = json.dumps({"secretivex": {"enable": True, "setting": {}}})
    if REAL_LIB:  # the real module system refuses it outright
        with pytest.raises(NixEvalError, match=r"services\.secretivex\.setting' does not exist"):
            nix_eval(EVAL, scenario=scenario)
    else:
        out = nix_eval(EVAL, scenario=scenario)
        assert out["undeclared"] == ["services.secretivex.setting"]
    world = {"systemd": {"user": {"services": {"secretivex": {"serviceconfig": {}}}}}}
    with pytest.raises(NixEvalError, match="serviceconfig' does not exist"):
        evaluate(nix_eval, {"enable": True}, world)


# ------------------------------------------------------- settings -> real validator


def run_validator(secretivex_bin: Path, path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECRETIVEX_")}
    return subprocess.run(
        [str(secretivex_bin), "config", "validate", "--no-path-checks", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.mark.parametrize(
    "secretivex",
    [
        {"enable": True, "settings": FILE_STORE},
        SHARED,
        {
            "enable": True,
            "pkcs11Modules": ["/nix/store/0000-opensc/lib/opensc-pkcs11.so"],
            "settings": {
                "stores": [
                    {
                        "type": "pkcs11",
                        "module": "/nix/store/0000-softhsm/lib/softhsm/libsofthsm2.so",
                        "token_label": "ci",
                        "pin_env": "SECRETIVEX_PKCS11_PIN",
                    }
                ],
                "logging": {"format": "json"},
            },
        },
    ],
    ids=["user-file-store", "shared-host", "pkcs11"],
)
def test_rendered_settings_pass_the_real_validator(
    nix_eval: Eval, secretivex_bin: Path, tmp_path: Path, secretivex: Any
) -> None:
    out = evaluate(nix_eval, secretivex)
    rendered = out["configFile"]["rendered"]
    assert json.loads(rendered["text"]) == out["settings"]
    path = tmp_path / "config.yaml"
    path.write_text(rendered["text"])  # JSON is YAML; nixpkgs renders the same data
    proc = run_validator(secretivex_bin, path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "OK"


def run_build_script(
    out: Any, secretivex_bin: Path, tmp_path: Path
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run the configFile derivation's builder script as Nix would, minus the sandbox."""
    config = out["configFile"]
    assert "secretivex config validate --no-path-checks" in config["script"]
    assert config["nativeBuildInputs"] == [out["package"]]
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(config["rendered"]["text"])
    script = config["script"].replace(config["rendered"]["path"], str(rendered))
    build = tmp_path / "build"
    build.mkdir()
    result = tmp_path / "out.yaml"
    env = {
        "PATH": f"{secretivex_bin.parent}:/usr/bin:/bin",
        "TMPDIR": str(build),
        "out": str(result),
    }
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=build,
    )
    return proc, result


def test_build_time_validation_accepts_good_settings(
    nix_eval: Eval, secretivex_bin: Path, tmp_path: Path
) -> None:
    out = evaluate(nix_eval, SHARED)
    proc, result = run_build_script(out, secretivex_bin, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(result.read_text()) == out["settings"]


@pytest.mark.parametrize(
    ("settings", "needles"),
    [
        ({"agent": {"max_connections": 0}}, ["agent.max_connections"]),
        (
            {"stores": [{"type": "file", "paths": ["/k"], "passphrase_env": "not a var"}]},
            ["stores[0].passphrase_env"],
        ),
        ({"agent": {"sockett": "/x"}}, ["agent.sockett"]),
    ],
    ids=["range", "env-name", "unknown-key"],
)
def test_build_time_validation_fails_with_the_validators_message(
    nix_eval: Eval, secretivex_bin: Path, tmp_path: Path, settings: Any, needles: list[str]
) -> None:
    out = evaluate(nix_eval, {"enable": True, "settings": settings})
    proc, result = run_build_script(out, secretivex_bin, tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert not result.exists()
    assert "services.secretivex.settings is not a valid secretivex config" in proc.stderr
    # the validator's own line, with the store path replaced by the option name
    assert "services.secretivex.settings:" in proc.stderr
    assert "/nix/store" not in proc.stderr and str(tmp_path) not in proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------- generated units -> systemd


def verify_units(
    units: list[tuple[str, str, dict[str, Any]]], directory: Path, user: bool
) -> subprocess.CompletedProcess[str]:
    """Write (name, kind, unit) as name.kind files and `systemd-analyze verify` them all."""
    analyze = require_tool("systemd-analyze", "Debian: apt-get install systemd")
    paths = []
    for name, kind, unit in units:
        path = directory / f"{name}.{kind}"
        path.write_text(render_unit(kind, unit))
        paths.append(str(path))
    runtime = directory / "xdg-runtime"
    runtime.mkdir(mode=0o700)
    cmd = [analyze, "verify", "--man=no", *(["--user"] if user else []), *paths]
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_LOG_LEVEL": "info"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    if proc.returncode != 0 and "Failed to initialize manager" in proc.stderr:
        reason = f"systemd-analyze verify cannot run here: {proc.stderr.strip()}"
        if os.environ.get("SECRETIVEX_REQUIRE_ALL") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return proc


@pytest.fixture
def unit_dir(tmp_path: Path) -> Path:
    d = tmp_path / "units"
    d.mkdir()
    return d


def test_generated_user_units_verify(nix_eval: Eval, fake_package: Path, unit_dir: Path) -> None:
    if not Path("/usr/bin/kill").exists():
        pytest.skip("/usr/bin/kill is needed to stand in for coreutils' kill")
    out = evaluate(
        nix_eval,
        {"enable": True, "settings": FILE_STORE},
        packagePath=str(fake_package),
        coreutilsPath="/usr",
    )
    user = out["systemd"]["user"]
    units = [
        ("secretivex", "socket", user["sockets"]["secretivex"]),
        ("secretivex", "service", user["services"]["secretivex"]),
    ]
    proc = verify_units(units, unit_dir, user=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_generated_system_units_verify(nix_eval: Eval, fake_package: Path, unit_dir: Path) -> None:
    if not Path("/usr/bin/kill").exists():
        pytest.skip("/usr/bin/kill is needed to stand in for coreutils' kill")
    out = evaluate(nix_eval, SHARED, packagePath=str(fake_package), coreutilsPath="/usr")
    system = out["systemd"]
    units = [(name, "socket", unit) for name, unit in system["sockets"].items()]
    units.append(("secretivex", "service", system["services"]["secretivex"]))
    assert len(units) == 3  # main socket, team listener socket, service
    proc = verify_units(units, unit_dir, user=False)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_unit_verification_has_teeth(unit_dir: Path, fake_package: Path) -> None:
    """A misspelt hardening key is reported by systemd-analyze (so '' above means clean)."""
    unit = {
        "description": "x",
        "serviceConfig": {
            "ExecStart": f"{fake_package}/bin/secretivex agent",
            "ProtectHme": True,
        },
    }
    proc = verify_units([("typo", "service", unit)], unit_dir, user=True)
    assert "Unknown key 'ProtectHme'" in proc.stderr, proc.stderr
