"""The agent's config, validated in a child process: the same settings, problems and
warnings as an in-process load, through a fork (start) and a fresh interpreter (reload)."""

from __future__ import annotations

import marshal
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from secretivex.config.errors import ConfigError
from secretivex.config.isolated import (
    AgentConfigRequest,
    ConfigLoaderError,
    _decode,
    _dumps,
    _encode,
    _loads,
    load_in_subprocess,
    loader_environment,
    start_load,
)
from secretivex.config.matchers import parse_matcher
from secretivex.config.runtime import (
    FileStoreSettings,
    Pkcs11StoreSettings,
    RuntimeSettings,
    UpstreamStoreSettings,
)

FULL = """\
agent:
  profile: fanout
  default_lifetime: 1h
stores:
  - type: file
    paths: [{keys}]
    passphrase_env: SOME_PASSPHRASE
  - type: pkcs11
    module: /bin/sh
    token_label: ci
    pin_command: [/bin/echo, "1234"]
  - type: upstream
    socket: /run/other/agent.sock
policy:
  allow: ["comment:ci-*", "type:ssh-ed25519"]
  confirm:
    command: [/bin/true]
    keys: ["SHA256:{fp}"]
listeners:
  - socket: {tmp}/team.sock
    mode: "0660"
    owner: 0
    keys: ["comment:team-*"]
    peers: {{uids: [0], gids: [root]}}
metrics:
  path: {tmp}/metrics.json
audit:
  path: "-"
logging:
  level: debug
  format: json
"""
FINGERPRINT = "A" * 43


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for name in list(os.environ):
        if name.startswith("SECRETIVEX_"):
            monkeypatch.delenv(name)


def _request(tmp_path: Path, text: str = FULL, **kw: object) -> AgentConfigRequest:
    config = tmp_path / "agent.yaml"
    config.write_text(text.format(keys=tmp_path / "keys", fp=FINGERPRINT, tmp=tmp_path))
    return AgentConfigRequest(
        config_files=(config,),
        socket=tmp_path / "agent.sock",
        keys=(tmp_path / "id_ed25519",),
        **kw,  # type: ignore[arg-type]
    )


def test_every_kind_of_setting_crosses_the_wire_unchanged(tmp_path: Path) -> None:
    settings, warnings = _request(tmp_path, default_lifetime_s=90).load()
    assert [type(s) for s in settings.stores] == [
        FileStoreSettings,
        Pkcs11StoreSettings,
        UpstreamStoreSettings,
        FileStoreSettings,  # --key: the "cli" store, listed last
    ]
    assert settings.stores[-1] == FileStoreSettings("cli", (tmp_path / "id_ed25519",))
    assert settings.agent.default_lifetime_s == 90  # -t wins over the file
    assert settings.policy.confirm.keys == (parse_matcher("SHA256:" + FINGERPRINT),)
    assert settings.listeners[0].mode == 0o660
    assert _loads(_dumps(settings)) == settings
    assert _loads(_dumps(("ok", settings, warnings))) == ("ok", settings, warnings)


def test_the_wire_carries_plain_values_and_known_dataclasses_only() -> None:
    value = ("T", "not a tag", ["L"], None, True, 3, 2.5, b"x")
    assert _decode(_encode(value)) == value
    assert _decode(_encode([("a",), Path("/p")])) == [("a",), Path("/p")]

    class Stranger:
        pass

    with pytest.raises(TypeError):
        _encode(Stranger())
    with pytest.raises(KeyError):
        _decode(("D", "Stranger"))


def _only_this_thread() -> None:
    """These tests need ``start_load`` to fork, which it does only in a process without
    other threads. A thread an earlier test left running would make it load in process
    (and ``os._exit`` in a "loader" would then end pytest itself): name it instead."""
    others = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
    assert not others, f"threads left running by an earlier test: {others}"


def test_a_forked_load_returns_what_an_in_process_load_does(tmp_path: Path) -> None:
    _only_this_thread()
    request = _request(tmp_path)
    pending = start_load(request)
    assert pending._pid is not None  # pytest runs no other thread here: it forked
    assert pending.result() == request.load()


def test_config_problems_and_warnings_come_back_as_the_same_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRETIVEX_AGENT_MAX_SIGNERS", "1")  # one "_": a warning
    bad = "agent:\n  max_connections: 0\n  bogus: 1\n"
    request = _request(tmp_path, bad)
    with pytest.raises(ConfigError) as direct:
        request.load()
    with pytest.raises(ConfigError) as forked:
        start_load(request).result()
    with pytest.raises(ConfigError) as fresh:
        load_in_subprocess(request)
    for caught in (forked, fresh):
        assert caught.value.problems == direct.value.problems
        assert caught.value.warnings == direct.value.warnings
        assert str(caught.value) == str(direct.value)
    assert len(direct.value.problems) == 2 and direct.value.warnings


def test_a_reload_runs_in_a_fresh_interpreter_with_the_same_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = _request(tmp_path, "agent:\n  profile: pssh\n")
    monkeypatch.setenv("SECRETIVEX_AGENT__MAX_SIGNERS", "3")
    settings, warnings = load_in_subprocess(request)
    assert (settings, warnings) == request.load()
    assert settings.agent.profile == "pssh" and settings.agent.max_signers == 3


def test_the_reload_loader_gets_only_what_a_config_load_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loader is a dumpable process of the agent's uid: a PIN variable (for a store
    the new config adds) or another secret of the agent's environment stays behind,
    while every variable the load reads still gets through."""
    from secretivex.config.isolated import _SECTIONS
    from secretivex.config.loader import SECTIONS

    assert set(_SECTIONS) == set(SECTIONS)
    env = {
        "HOME": "/h",
        "XDG_CONFIG_HOME": "/h/c",
        "XDG_RUNTIME_DIR": "/r",
        "LC_ALL": "C",
        "SECRETIVEX_CONFIG": "/c.yaml",
        "SECRETIVEX_AGENT__MAX_SIGNERS": "3",
        "SECRETIVEX_STORES": "[]",
        "SECRETIVEX_AGENT_MAX_SIGNERS": "3",  # misspelt: still warned about on reload
        "SECRETIVEX_PKCS11_PIN": "1234",
        "SECRETIVEX_KEY_PASSPHRASE": "hunter2",
        "AWS_SECRET_ACCESS_KEY": "x",
    }
    kept = loader_environment(env)
    assert set(env) - set(kept) == {
        "SECRETIVEX_PKCS11_PIN",
        "SECRETIVEX_KEY_PASSPHRASE",
        "AWS_SECRET_ACCESS_KEY",
    }
    request = _request(tmp_path, "agent:\n  profile: pssh\n")
    monkeypatch.setenv("SECRETIVEX_AGENT_MAX_SIGNERS", "3")
    monkeypatch.setenv("SECRETIVEX_PKCS11_PIN", "1234")
    assert load_in_subprocess(request) == request.load()


def test_a_loader_that_dies_is_a_loader_error_not_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = _request(tmp_path)

    # The loader process runs ``derive`` (``load`` is ``derive`` with the real classes).
    def crash(self: AgentConfigRequest, make: object) -> object:
        raise RuntimeError("boom")

    monkeypatch.setattr(AgentConfigRequest, "derive", crash)
    with pytest.raises(ConfigLoaderError, match="RuntimeError: boom"):
        start_load(request).result()

    def die(self: AgentConfigRequest, make: object) -> object:
        os._exit(9)

    _only_this_thread()

    monkeypatch.setattr(AgentConfigRequest, "derive", die)
    with pytest.raises(ConfigLoaderError, match="status 9"):
        start_load(request).result()
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    with pytest.raises(ConfigLoaderError, match="cannot start"):
        load_in_subprocess(request)


def test_a_process_with_threads_loads_in_process(tmp_path: Path) -> None:
    request = _request(tmp_path)
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        pending = start_load(request)
    finally:
        stop.set()
        thread.join()
    assert pending._pid is None
    assert pending.result() == request.load()


def test_the_loader_process_keeps_stray_output_off_the_answer(tmp_path: Path) -> None:
    # Whatever the loader prints goes to stderr; stdout carries only the answer.
    code = (
        "import marshal, sys\n"
        "from secretivex.config import isolated\n"
        "real = isolated.AgentConfigRequest.derive\n"
        "def noisy(self, make):\n"
        "    print('noise on stdout')\n"
        "    return real(self, make)\n"
        "isolated.AgentConfigRequest.derive = noisy\n"
        "isolated.serve(marshal.load(sys.stdin.buffer))\n"
    )
    request = _request(tmp_path)
    proc = _run_child(code, request)
    assert b"noise on stdout" in proc.stderr
    kind, settings, _ = _loads(proc.stdout)
    assert kind == "ok" and isinstance(settings, RuntimeSettings)


#: A loader process (as ``serve`` sets one up) that loads, answers as it does (the
#: answer decoded here too) and reports what it imported.
LOADER_IMPORTS = (
    "import marshal, sys\n"
    "from secretivex.config import isolated\n"
    "isolated._as_loader_process()\n"
    "request = isolated._decode(marshal.load(sys.stdin.buffer))\n"
    "assert isolated._loads(isolated._dumps(isolated._outcome(request)))[0] == 'ok'\n"
    "print(sorted(sys.modules))\n"
)


def _run_child(
    code: str, request: AgentConfigRequest, *, check: bool = True, **env: str
) -> subprocess.CompletedProcess[bytes]:
    """``code`` in a fresh interpreter with the encoded ``request`` on its stdin, as the
    agent hands it to the loader child."""
    return subprocess.run(
        [sys.executable, "-c", code],
        input=marshal.dumps(_encode(request)),
        capture_output=True,
        timeout=60,
        check=check,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **env},
    )


def _loader_modules(request: AgentConfigRequest, **env: str) -> list[str]:
    import ast

    proc = _run_child(LOADER_IMPORTS, request, **env)
    names: list[str] = ast.literal_eval(proc.stdout.decode())
    return names


def test_the_loader_process_skips_pydantic_plugin_discovery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = _request(tmp_path)
    monkeypatch.delenv("PYDANTIC_DISABLE_PLUGINS", raising=False)
    names = _loader_modules(request)
    assert "secretivex.config.models" in names
    assert "importlib.metadata" not in names  # the stand-in plugin loader, not pydantic's
    # Only some plugins disabled: pydantic's own loader, which reads package metadata.
    assert "importlib.metadata" in _loader_modules(request, PYDANTIC_DISABLE_PLUGINS="x")


def test_the_stand_in_plugin_loader_answers_as_pydantics_own_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pydantic.plugin import _loader

    from secretivex.config import isolated

    monkeypatch.setenv("PYDANTIC_DISABLE_PLUGINS", "__all__")
    assert list(_loader.get_plugins()) == []
    assert _loader.__name__ == isolated._PLUGIN_LOADER
    monkeypatch.delitem(sys.modules, _loader.__name__)
    isolated._without_plugin_discovery()
    assert list(sys.modules[_loader.__name__].get_plugins()) == []


def test_the_loader_process_sends_settings_without_building_the_settings_classes(
    tmp_path: Path,
) -> None:
    code = (
        "import marshal, sys\n"
        "from secretivex.config import isolated\n"
        "request = isolated._decode(marshal.load(sys.stdin.buffer))\n"
        "sys.stdout.buffer.write(isolated._dumps(isolated._outcome(request)))\n"
        "assert 'secretivex.config.runtime' not in sys.modules, 'the child built them'\n"
    )
    request = _request(tmp_path)
    proc = _run_child(code, request, check=False)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert _loads(proc.stdout) == ("ok", *request.load())
