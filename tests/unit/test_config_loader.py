"""The layered loader: precedence, merging, provenance, and every error with its location."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from secretivex.config import (
    ConfigError,
    ConfigPaths,
    ConfigProblem,
    LoadRequest,
    load_config,
    redacted_dict,
)
from secretivex.config.loader import _redact, parse_env_value, user_config_file
from secretivex.config.models import AgentSection, FileStore, Pkcs11Store, UpstreamStore
from secretivex.config.profiles import system_listen_backlog


@dataclass
class Tree:
    """A fake filesystem root: /etc/secretivex, XDG config home, and a work dir."""

    root: Path

    @property
    def paths(self) -> ConfigPaths:
        return ConfigPaths(
            system_file=self.root / "etc" / "config.yaml",
            system_dir=self.root / "etc" / "config.d",
            user_file=self.root / "xdg" / "secretivex" / "config.yaml",
        )

    def write(self, rel: str, text: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    def load(
        self,
        *files: Path,
        env: Mapping[str, str] | None = None,
        cli: Mapping[str, Any] | None = None,
        flags: Mapping[str, str] | None = None,
        check_paths: bool = False,
        cpus: int = 2,
    ) -> Any:
        return load_config(
            config_files=files,
            cli_overrides=cli,
            cli_flags=flags,
            env={} if env is None else env,
            paths=self.paths,
            check_paths=check_paths,
            cpu_count=cpus,
        )

    def problems(self, *files: Path, **kwargs: Any) -> list[ConfigProblem]:
        with pytest.raises(ConfigError) as info:
            self.load(*files, **kwargs)
        return info.value.problems

    def lines(self, *files: Path, **kwargs: Any) -> list[str]:
        return [str(p) for p in self.problems(*files, **kwargs)]


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path)


def rel(tree: Tree, source: str) -> str:
    return source.replace(str(tree.root) + "/", "")


# --------------------------------------------------------------------------- precedence


def test_zero_config(tree: Tree) -> None:
    loaded = tree.load(env={"XDG_RUNTIME_DIR": "/run/user/1000"})
    config = loaded.config
    assert config.agent.socket == Path("/run/user/1000/secretivex/agent.sock")
    assert [type(s) for s in config.stores] == [FileStore]
    assert config.stores[0].paths == [Path("~/.ssh").expanduser()]
    assert loaded.files == []
    assert loaded.profile == "balanced"
    assert loaded.sources["agent.socket"] == "default"
    assert loaded.sources["agent.max_connections"] == "profile:balanced"
    assert loaded.sources["stores[0].paths[0]"] == "default"
    assert loaded.sources["agent.allow_add"] == "default"


def test_default_socket_without_runtime_dir(tree: Tree) -> None:
    loaded = tree.load(env={})
    assert loaded.config.agent.socket == Path("~/.secretivex/agent.sock").expanduser()


# One value per layer, lowest first; each test drops the layers above `top`.
STACK = ["etc", "d10", "d20", "xdg", "file_a", "file_b", "env", "cli"]


def build_stack(tree: Tree, top: str) -> tuple[list[Path], dict[str, str], dict[str, Any]]:
    included = STACK[: STACK.index(top) + 1]
    files: list[Path] = []
    env: dict[str, str] = {}
    cli: dict[str, Any] = {}
    for index, layer in enumerate(included):
        value = (index + 1) * 10
        body = f"agent:\n  max_connections: {value}\n"
        if layer == "etc":
            tree.write("etc/config.yaml", body)
        elif layer in {"d10", "d20"}:
            tree.write(f"etc/config.d/{layer[1:]}-frag.yaml", body)
        elif layer == "xdg":
            tree.write("xdg/secretivex/config.yaml", body)
        elif layer.startswith("file_"):
            files.append(tree.write(f"work/{layer}.yaml", body))
        elif layer == "env":
            env["SECRETIVEX_AGENT__MAX_CONNECTIONS"] = str(value)
        else:
            cli["agent.max_connections"] = value
    return files, env, cli


@pytest.mark.parametrize("top", STACK)
def test_each_layer_overrides_the_ones_below(tree: Tree, top: str) -> None:
    files, env, cli = build_stack(tree, top)
    loaded = tree.load(*files, env=env, cli=cli, flags={"agent.max_connections": "--max-conn"})
    expected_value = (STACK.index(top) + 1) * 10
    assert loaded.config.agent.max_connections == expected_value
    source = rel(tree, loaded.sources["agent.max_connections"])
    expected_source = {
        "etc": "etc/config.yaml:2",
        "d10": "etc/config.d/10-frag.yaml:2",
        "d20": "etc/config.d/20-frag.yaml:2",
        "xdg": "xdg/secretivex/config.yaml:2",
        "file_a": "work/file_a.yaml:2",
        "file_b": "work/file_b.yaml:2",
        "env": "env:SECRETIVEX_AGENT__MAX_CONNECTIONS",
        "cli": "cli:--max-conn",
    }[top]
    assert source == expected_source


def test_profile_overrides_builtin_defaults_and_files_override_profile(tree: Tree) -> None:
    path = tree.write("work/a.yaml", "agent:\n  profile: fanout\n  sign_timeout_ms: 5\n")
    loaded = tree.load(path, cpus=4)
    agent = loaded.config.agent
    assert (agent.max_connections, agent.max_signers) == (8192, 32)
    assert agent.listen_backlog == system_listen_backlog()
    assert agent.sign_timeout_ms == 5
    assert loaded.sources["agent.max_signers"] == "profile:fanout"
    assert loaded.sources["agent.listen_backlog"] == "profile:fanout (net.core.somaxconn)"
    assert rel(tree, loaded.sources["agent.sign_timeout_ms"]) == "work/a.yaml:3"
    assert loaded.profile == "fanout" and loaded.cpu_count == 4


def test_profile_chosen_by_environment_applies_below_files(tree: Tree) -> None:
    tree.write("etc/config.yaml", "agent:\n  idle_timeout_ms: 1\n")
    loaded = tree.load(env={"SECRETIVEX_AGENT__PROFILE": "pssh"})
    assert loaded.profile == "pssh"
    assert loaded.config.agent.max_connections == 32768
    assert loaded.config.agent.idle_timeout_ms == 1  # the file still wins over the profile
    assert loaded.sources["agent.profile"] == "env:SECRETIVEX_AGENT__PROFILE"


def test_fragments_are_read_in_name_order_and_others_ignored(tree: Tree) -> None:
    tree.write("etc/config.d/b.yaml", "logging:\n  level: error\n")
    tree.write("etc/config.d/a.yaml", "logging:\n  level: debug\n  format: json\n")
    tree.write("etc/config.d/c.yml", "logging: [broken")
    tree.write("etc/config.d/.z.yaml", "logging: [broken")
    tree.write("etc/config.d/README", "not yaml: [")
    loaded = tree.load()
    assert (loaded.config.logging.level, loaded.config.logging.format) == ("error", "json")
    assert [p.name for p in loaded.files] == ["a.yaml", "b.yaml"]


def test_secretivex_config_env_names_files_when_no_config_flag(tree: Tree) -> None:
    a = tree.write("work/a.yaml", "agent:\n  max_connections: 11\n")
    b = tree.write("work/b.yaml", "agent:\n  max_connections: 22\n")
    c = tree.write("work/c.yaml", "agent:\n  max_connections: 33\n")
    env = {"SECRETIVEX_CONFIG": f"{a}::{b}"}
    loaded = tree.load(env=env)
    assert loaded.config.agent.max_connections == 22
    assert loaded.files == [a, b]
    # --config replaces SECRETIVEX_CONFIG entirely
    loaded = tree.load(c, env=env)
    assert loaded.config.agent.max_connections == 33
    assert loaded.files == [c]


def test_mappings_merge_and_lists_replace(tree: Tree) -> None:
    tree.write(
        "etc/config.yaml",
        """
        agent:
          allow_add: false
          pkcs11_allowlist: [/opt/a/*, /opt/b/*]
        stores:
          - type: file
            paths: [/keys/a]
          - type: file
            paths: [/keys/b]
        policy:
          allow: ["comment:a*", "comment:b*"]
          confirm:
            command: [/bin/true]
            cache_ms: 5
        """,
    )
    tree.write(
        "xdg/secretivex/config.yaml",
        """
        agent:
          max_connections: 99
          pkcs11_allowlist: [/opt/c/*]
        stores:
          - type: upstream
            socket: /run/up.sock
        policy:
          confirm:
            timeout_ms: 7
        """,
    )
    loaded = tree.load()
    config = loaded.config
    # mapping merge: keys from both files
    assert (config.agent.allow_add, config.agent.max_connections) == (False, 99)
    assert (config.policy.confirm.command, config.policy.confirm.cache_ms) == (["/bin/true"], 5)
    assert config.policy.confirm.timeout_ms == 7
    # lists replace, never append or merge by index
    assert config.agent.pkcs11_allowlist == ["/opt/c/*"]
    assert [type(s) for s in config.stores] == [UpstreamStore]
    assert [str(m) for m in config.policy.allow] == ["comment:a*", "comment:b*"]
    assert rel(tree, loaded.sources["stores"]) == "xdg/secretivex/config.yaml:4"
    assert rel(tree, loaded.sources["stores[0].socket"]) == "xdg/secretivex/config.yaml:6"
    assert "stores[1].paths" not in loaded.sources
    assert rel(tree, loaded.sources["policy.confirm.cache_ms"]) == "etc/config.yaml:13"


def test_empty_section_changes_nothing_and_null_resets_a_value(tree: Tree) -> None:
    tree.write("etc/config.yaml", "agent:\n  max_connections: 5\naudit:\n  path: /var/a.jsonl\n")
    path = tree.write("work/a.yaml", "agent:\naudit:\n  path: null\n")
    loaded = tree.load(path)
    assert loaded.config.agent.max_connections == 5
    assert loaded.config.audit.path is None
    assert rel(tree, loaded.sources["audit.path"]) == "work/a.yaml:3"


def test_empty_file_is_an_empty_layer(tree: Tree) -> None:
    path = tree.write("work/empty.yaml", "# nothing here\n")
    assert tree.load(path).files == [path]


def test_yaml_anchors_and_merge_keys(tree: Tree) -> None:
    path = tree.write(
        "work/a.yaml",
        """
        listeners:
          - &base
            socket: /run/a.sock
            mode: "0660"
            keys: ["comment:ci-*"]
          - <<: *base
            socket: /run/b.sock
        """,
    )
    loaded = tree.load(path)
    a, b = loaded.config.listeners
    assert (b.socket, b.mode, b.keys) == (Path("/run/b.sock"), "0660", a.keys)
    assert rel(tree, loaded.sources["listeners[1].socket"]) == "work/a.yaml:7"
    assert rel(tree, loaded.sources["listeners[1].mode"]) == "work/a.yaml:4"


# --------------------------------------------------------------------------- env and cli


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("64", 64),
        ("true", True),
        ("", None),
        ("null", None),
        ("/run/x.sock", "/run/x.sock"),
        ("-", "-"),
        ("a: b", "a: b"),
        ("- x", "- x"),
        ("[a, 'b c']", ["a", "b c"]),
        ("{k: 1}", {"k": 1}),
        ("'0660'", "0660"),
        ("comment:ci-*", "comment:ci-*"),
    ],
)
def test_env_values_are_yaml_scalars_or_flow_collections(raw: str, value: Any) -> None:
    assert parse_env_value(raw) == value


def test_env_nested_keys_lists_and_sections(tree: Tree) -> None:
    env = {
        "SECRETIVEX_POLICY__CONFIRM__TIMEOUT_MS": "15000",
        "SECRETIVEX_POLICY__DENY": "['type:ssh-dss']",
        "SECRETIVEX_STORES": "[{type: upstream, socket: /run/u.sock, name: up}]",
        "SECRETIVEX_LOGGING": "{level: debug}",
        "SECRETIVEX_LOGGING__FORMAT": "json",
        "SECRETIVEX_AUDIT__PATH": "-",
        # not config keys: ignored
        "SECRETIVEX_CONFIG": "",
        "SECRETIVEX_PKCS11_PIN": "1234",
        "OTHER__AGENT": "x",
    }
    loaded = tree.load(env=env)
    config = loaded.config
    assert config.policy.confirm.timeout_ms == 15000
    assert [str(m) for m in config.policy.deny] == ["type:ssh-dss"]
    assert [s.name for s in config.stores] == ["up"]
    assert (config.logging.level, config.logging.format) == ("debug", "json")
    assert config.audit.path == "-"
    assert loaded.sources["stores[0].socket"] == "env:SECRETIVEX_STORES"
    assert loaded.sources["logging.level"] == "env:SECRETIVEX_LOGGING"
    assert loaded.sources["logging.format"] == "env:SECRETIVEX_LOGGING__FORMAT"


def test_cli_overrides_dotted_nested_and_unset(tree: Tree) -> None:
    loaded = tree.load(
        cli={
            "agent.socket": Path("/run/cli.sock"),
            "agent.max_signers": None,  # a flag that was not given
            "stores": [{"type": "file", "paths": [Path("/k/id_ed25519")]}],
            "logging": {"level": "error"},
        },
        flags={"agent.socket": "--socket", "stores": "--key"},
    )
    config = loaded.config
    assert config.agent.socket == Path("/run/cli.sock")
    assert config.stores[0].paths == [Path("/k/id_ed25519")]
    assert config.logging.level == "error"
    assert loaded.sources["agent.socket"] == "cli:--socket"
    assert loaded.sources["stores[0].paths[0]"] == "cli:--key"
    assert loaded.sources["logging.level"] == "cli:logging"
    assert loaded.sources["agent.max_signers"] == "profile:balanced"


def test_cli_override_of_unknown_key(tree: Tree) -> None:
    assert tree.lines(cli={"nope.x": 1}) == ["cli:nope.x: nope.x: not a config key: 'nope.x'"]
    assert tree.lines(cli={"agent.nope": 1}, flags={"agent.nope": "--nope"}) == [
        "cli:--nope: agent.nope: unknown key 'nope' (expected one of: "
        + ", ".join(AgentSection.model_fields)
        + ")"
    ]


# --------------------------------------------------------------------------- bad input


def test_unknown_keys_with_line_and_suggestion(tree: Tree) -> None:
    path = tree.write(
        "work/a.yaml",
        """
        agent:
          max_conections: 64
        stores:
          - type: pkcs11
            module: /m.so
            pin: 1234
        polcy: {}
        """,
    )
    assert [rel(tree, line) for line in tree.lines(path)] == [
        "work/a.yaml:2: agent.max_conections: unknown key 'max_conections' - did you mean "
        "'max_connections'?",
        "work/a.yaml:6: stores[0].pin: unknown key 'pin' - did you mean 'pin_env'?",
        "work/a.yaml:7: polcy: unknown section 'polcy' - did you mean 'policy'?",
    ]


def test_keys_are_case_sensitive(tree: Tree) -> None:
    path = tree.write("work/a.yaml", "AGENT:\n  max_connections: 1\n")
    assert [rel(tree, line) for line in tree.lines(path)] == [
        "work/a.yaml:1: AGENT: unknown section 'AGENT' - did you mean 'agent'? (keys are lower "
        "case)"
    ]


def test_unknown_key_values_are_never_echoed(tree: Tree) -> None:
    path = tree.write("work/a.yaml", "stores:\n  - type: file\n    passphrase: hunter2\n")
    text = "\n".join(tree.lines(path))
    assert "passphrase" in text and "hunter2" not in text


def test_wrong_types(tree: Tree) -> None:
    path = tree.write(
        "work/a.yaml",
        """
        agent:
          max_connections: lots
          allow_add: maybe
          profile: turbo
        stores:
          - type: file
            paths: /just/one
        listeners: {socket: /run/x.sock}
        logging: []
        """,
    )
    assert [rel(tree, line) for line in tree.lines(path)] == [
        "work/a.yaml:2: agent.max_connections: expected a whole number, got 'lots'",
        "work/a.yaml:3: agent.allow_add: expected true or false, got 'maybe'",
        "work/a.yaml:4: agent.profile: must be one of 'balanced', 'fanout', 'pssh' or "
        "'low-memory', got 'turbo'",
        "work/a.yaml:7: stores[0].paths: expected a list, got '/just/one' - write [item] for "
        "a single item",
        "work/a.yaml:8: listeners: expected a list, got a mapping",
        "work/a.yaml:9: logging: expected a mapping (key: value), got a list",
    ]


def test_store_type_missing_or_unknown(tree: Tree) -> None:
    path = tree.write("work/a.yaml", "stores:\n  - paths: [/k]\n  - type: gpg\n")
    assert [rel(tree, line) for line in tree.lines(path)] == [
        "work/a.yaml:2: stores[0].type: each store needs a type: file, pkcs11, upstream",
        "work/a.yaml:3: stores[1].type: unknown store type 'gpg': use file, pkcs11, upstream",
    ]


def test_cross_key_problem_points_at_the_key(tree: Tree) -> None:
    path = tree.write(
        "work/a.yaml",
        """
        stores:
          - type: file
          - type: pkcs11
            module: /usr/lib/softhsm/libsofthsm2.so
            pin_file: /run/pin
            pin_env: SECRETIVEX_PKCS11_PIN
        """,
    )
    (problem,) = tree.problems(path)
    assert (problem.key_path, problem.line) == ("stores[1].pin_env", 6)
    assert rel(tree, str(problem)) == (
        "work/a.yaml:6: stores[1].pin_env: set only one of pin_env and pin_file"
    )


def test_missing_required_key_points_at_the_item(tree: Tree) -> None:
    path = tree.write("work/a.yaml", "listeners:\n  - mode: '0660'\n")
    assert [rel(tree, line) for line in tree.lines(path)] == [
        "work/a.yaml:2: listeners[0].socket: required key is missing"
    ]


def test_listener_socket_clash_across_layers_names_the_upper_file(tree: Tree) -> None:
    tree.write("etc/config.yaml", "agent:\n  socket: /run/secretivex/agent.sock\n")
    tree.write(
        "etc/config.d/20-team.yaml",
        "# team socket\nlisteners:\n  - mode: '0660'\n    socket: /run/secretivex/agent.sock\n",
    )
    assert [rel(tree, line) for line in tree.lines()] == [
        "etc/config.d/20-team.yaml:4: listeners[0].socket: this is the agent's main socket "
        "(agent.socket)"
    ]


def test_yaml_syntax_error_has_line_and_column(tree: Tree) -> None:
    path = tree.write("work/a.yaml", "agent:\n  socket: /run/x.sock\n   profile: fanout\n")
    (problem,) = tree.problems(path)
    assert (problem.line, problem.column, problem.key_path) == (3, 11, "")
    assert rel(tree, str(problem)) == (
        "work/a.yaml:3:11: YAML syntax error: mapping values are not allowed here"
    )


def test_unclosed_flow_list_is_a_syntax_error(tree: Tree) -> None:
    path = tree.write("work/a.yaml", "stores: [\n")
    (line,) = tree.lines(path)
    assert rel(tree, line).startswith("work/a.yaml:2:1: YAML syntax error:")


def test_duplicate_keys_are_errors(tree: Tree) -> None:
    path = tree.write("work/a.yaml", "agent:\n  max_signers: 1\n  max_signers: 2\n")
    assert [rel(tree, line) for line in tree.lines(path)] == [
        "work/a.yaml:3: agent.max_signers: duplicate key 'max_signers' (first set on line 2); "
        "YAML would silently keep only the last one"
    ]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("- a\n- b\n", "a.yaml:1:1: the top level must be a mapping of sections"),
        ("just text\n", "a.yaml:1:1: the top level must be a mapping"),
        (
            "a: 1\n---\nb: 2\n",
            "a.yaml:2:1: YAML syntax error: expected a single document in the stream, but found "
            "another document",
        ),
        ("agent: !!python/object:os.system {}\n", "unsupported YAML tag"),
        ("agent: !!python/name:os.system\n", "YAML syntax error: could not determine a"),
        ("agent: !!set {a}\n", "unsupported YAML tag 'tag:yaml.org,2002:set'"),
        ("? [a, b]\n: 1\n", "keys must be plain names"),
        ("a: &x [*x]\n", "nesting is too deep"),
    ],
)
def test_other_yaml_problems(tree: Tree, text: str, needle: str) -> None:
    path = tree.write("work/a.yaml", text)
    (line,) = tree.lines(path)
    assert needle in line


def test_missing_files(tree: Tree) -> None:
    # System and user files are optional; files named explicitly are not.
    assert tree.load().files == []
    missing = tree.root / "work" / "missing.yaml"
    assert [rel(tree, line) for line in tree.lines(missing)] == [
        "work/missing.yaml: file not found"
    ]
    env = {"SECRETIVEX_CONFIG": str(missing)}
    assert [rel(tree, line) for line in tree.lines(env=env)] == [
        "work/missing.yaml: file not found (named by SECRETIVEX_CONFIG)"
    ]


def test_directory_instead_of_file(tree: Tree) -> None:
    (tree.root / "work").mkdir()
    assert [rel(tree, line) for line in tree.lines(tree.root / "work")] == [
        "work: is a directory, expected a YAML file"
    ]


def test_config_d_that_is_a_file(tree: Tree) -> None:
    tree.write("etc/config.d", "oops")
    assert [rel(tree, line) for line in tree.lines()] == ["etc/config.d: is not a directory"]


def test_unreadable_file(tree: Tree, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tree.write("work/secret.yaml", "agent: {}\n")
    if os.geteuid() != 0:
        path.chmod(0)
    else:  # root reads anything: simulate the kernel's answer
        real = Path.open

        def deny(self: Path, *args: Any, **kwargs: Any) -> Any:
            if self == path:
                raise PermissionError(13, "Permission denied", str(self))
            return real(self, *args, **kwargs)

        monkeypatch.setattr(Path, "open", deny)
    assert [rel(tree, line) for line in tree.lines(path)] == [
        "work/secret.yaml: cannot read file: permission denied"
    ]


def test_not_utf8(tree: Tree) -> None:
    path = tree.root / "a.yaml"
    path.write_bytes(b"agent:\n  socket: /run/\xff.sock\n")
    assert [rel(tree, line) for line in tree.lines(path)] == [
        "a.yaml: not UTF-8 text (bad byte at offset 22)"
    ]


def test_one_bad_fragment_is_named(tree: Tree) -> None:
    tree.write("etc/config.d/10-good.yaml", "agent:\n  max_connections: 5\n")
    tree.write("etc/config.d/20-bad.yaml", "agent:\n  max_connections: [oops\n")
    tree.write("etc/config.d/30-good.yaml", "logging:\n  level: debug\n")
    (line,) = tree.lines()
    assert rel(tree, line).startswith("etc/config.d/20-bad.yaml:3:1: YAML syntax error:")


def test_one_bad_fragment_value_is_named(tree: Tree) -> None:
    tree.write("etc/config.d/10-good.yaml", "agent:\n  max_connections: 5\n")
    tree.write("etc/config.d/20-bad.yaml", "# comment\nmetrics:\n  interval_ms: 0\n")
    assert [rel(tree, line) for line in tree.lines()] == [
        "etc/config.d/20-bad.yaml:3: metrics.interval_ms: must be at least 100, got 0"
    ]


def test_env_problems(tree: Tree) -> None:
    assert tree.lines(env={"SECRETIVEX_AGENT__MAX_CONNECTIONS": "[1, 2"}) == [
        "env:SECRETIVEX_AGENT__MAX_CONNECTIONS: agent.max_connections: cannot parse value as "
        "YAML at character 6: expected ',' or ']', but got '<stream end>' (quote it, e.g. "
        "'value')"
    ]
    assert tree.lines(env={"SECRETIVEX_AGENT__MAX_CONNECTIONS": "lots"}) == [
        "env:SECRETIVEX_AGENT__MAX_CONNECTIONS: agent.max_connections: expected a whole "
        "number, got 'lots'"
    ]
    assert tree.lines(env={"SECRETIVEX_AGNET__SOCKET": "/x"}) == [
        "env:SECRETIVEX_AGNET__SOCKET: unknown section 'agnet' - did you mean 'agent'?"
    ]
    assert tree.lines(env={"SECRETIVEX_AGENT__MAX_CONECTIONS": "1"}) == [
        "env:SECRETIVEX_AGENT__MAX_CONECTIONS: agent.max_conections: unknown key "
        "'max_conections' - did you mean 'max_connections'?"
    ]
    assert tree.lines(env={"SECRETIVEX_AGENT____SOCKET": "/x"}) == [
        "env:SECRETIVEX_AGENT____SOCKET: empty key in the variable name (one __ between keys)"
    ]
    (line,) = tree.lines(env={"SECRETIVEX_STORES__0__PATHS": "[/k]"})
    assert line.startswith("env:SECRETIVEX_STORES__0__PATHS: stores.0.paths: stores is a list")


def test_layer_read_problems_are_all_reported_together(tree: Tree) -> None:
    tree.write("etc/config.yaml", "agent: [\n")
    missing = tree.root / "nope.yaml"
    lines = tree.lines(missing, env={"SECRETIVEX_LOGGING__LEVEL": "'x"})
    assert len(lines) == 3


def test_path_checks_can_be_turned_off(tree: Tree) -> None:
    path = tree.write("work/a.yaml", "stores:\n  - type: pkcs11\n    module: /no/such.so\n")
    (line,) = tree.lines(path, check_paths=True)
    assert "does not exist" in line and "--no-path-checks" in line
    loaded = tree.load(path, check_paths=False)
    assert isinstance(loaded.config.stores[0], Pkcs11Store)


def test_problem_formatting() -> None:
    assert str(ConfigProblem("c.yaml", "stores[1].pin_env", 12, 5, "m")) == (
        "c.yaml:12: stores[1].pin_env: m"
    )
    assert str(ConfigProblem("c.yaml", "", 3, 7, "syntax")) == "c.yaml:3:7: syntax"
    assert str(ConfigProblem("env:X", "agent.a", None, None, "m")) == "env:X: agent.a: m"
    error = ConfigError(
        [ConfigProblem("a", "", None, None, "x"), ConfigProblem("b", "", 1, 1, "y")]
    )
    assert str(error) == "a: x\nb:1:1: y"


# --------------------------------------------------------------------------- API


def test_sources_cover_every_leaf_and_list_item(tree: Tree) -> None:
    path = tree.write(
        "work/a.yaml",
        """
        stores:
          - type: file
          - type: pkcs11
            module: /m.so
            pin_env: PIN
        """,
    )
    loaded = tree.load(path)
    assert rel(tree, loaded.sources["stores[1].pin_env"]) == "work/a.yaml:5"
    assert rel(tree, loaded.sources["stores[1]"]) == "work/a.yaml:3"
    assert loaded.sources["stores[1].name"] == "default"  # derived: pkcs11-1
    assert loaded.config.stores[1].name == "pkcs11-1"
    assert "agent" not in loaded.sources  # sections are not values
    assert rel(tree, loaded.source_of("stores[1].pin_env")) == "work/a.yaml:5"
    assert loaded.source_of("logging.level") == "default"
    assert rel(tree, loaded.source_of("stores[1].nothing[3]")) == "work/a.yaml:3"


def test_load_request_reloads_from_the_same_inputs(tree: Tree) -> None:
    path = tree.write("work/a.yaml", "agent:\n  max_connections: 5\n")
    request = LoadRequest(
        config_files=(path,), env={}, paths=tree.paths, check_paths=False, cpu_count=2
    )
    first = request.load()
    path.write_text("agent:\n  max_connections: 6\n")
    second = request.load()
    assert (first.config.agent.max_connections, second.config.agent.max_connections) == (5, 6)
    path.write_text("agent:\n  max_connections: -6\n")
    with pytest.raises(ConfigError):
        request.load()
    assert second.config.agent.max_connections == 6  # an old result is never touched


def test_load_request_defaults_read_the_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRETIVEX_LOGGING__LEVEL", "error")
    loaded = LoadRequest(paths=ConfigPaths.isolated(), check_paths=False).load()
    assert loaded.config.logging.level == "error"


def test_config_paths_default(tmp_path: Path) -> None:
    assert ConfigPaths.default({"XDG_CONFIG_HOME": "/x"}).user_file == Path(
        "/x/secretivex/config.yaml"
    )
    paths = ConfigPaths.default({"HOME": "/home/u"})
    assert paths.user_file == Path("/home/u/.config/secretivex/config.yaml")
    assert paths.system_file == Path("/etc/secretivex/config.yaml")
    assert paths.system_dir == Path("/etc/secretivex/config.d")
    assert user_config_file({"XDG_CONFIG_HOME": "rel", "HOME": "/h"}) == Path(
        "/h/.config/secretivex/config.yaml"
    )


def test_redacted_dict_has_no_secret_values(tree: Tree) -> None:
    path = tree.write(
        "work/a.yaml",
        "stores:\n  - type: pkcs11\n    module: /m.so\n    pin_env: PIN\n",
    )
    data = redacted_dict(tree.load(path, env={"PIN": "123456"}))
    assert data["stores"][0]["pin_env"] == "PIN"
    assert "123456" not in repr(data)
    assert _redact(
        {"a": {"pin": "1", "passphrase": None, "pin_env": "X"}, "l": [{"secret": 2}]}
    ) == {
        "a": {"pin": "<redacted>", "passphrase": None, "pin_env": "X"},
        "l": [{"secret": "<redacted>"}],
    }


def test_problems_are_listed_in_layer_order(tree: Tree) -> None:
    tree.write("etc/config.yaml", "logging:\n  level: loud\n")
    path = tree.write("a.yaml", "agent:\n  max_signers: 0\n")
    lines = [rel(tree, line) for line in tree.lines(path, env={"SECRETIVEX_METRICS__PATH": "x"})]
    assert [line.split(":")[0] for line in lines] == ["etc/config.yaml", "a.yaml", "env"]


@pytest.mark.parametrize("profile", ["balanced", "fanout", "pssh", "low-memory"])
def test_every_profile_listens_with_the_system_maximum_backlog(tree: Tree, profile: str) -> None:
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    path = tree.write("work/a.yaml", f"agent:\n  profile: {profile}\n")
    assert tree.load(path, cpus=2).config.agent.listen_backlog == somaxconn
    explicit = tree.write("work/b.yaml", f"agent:\n  profile: {profile}\n  listen_backlog: 77\n")
    assert tree.load(explicit, cpus=2).config.agent.listen_backlog == 77


# --------------------------------------------------------------------------- who can write it


@pytest.mark.parametrize(
    ("layer", "mode", "who"),
    [
        ("etc/config.yaml", 0o664, "its group"),
        ("etc/config.d/10-team.yaml", 0o646, "other users"),
        ("xdg/secretivex/config.yaml", 0o666, "its group and other users"),
        ("work/c.yaml", 0o666, "its group and other users"),
    ],
)
def test_a_config_file_others_can_write_is_refused(
    tree: Tree, layer: str, mode: int, who: str
) -> None:
    """As ssh refuses a group/world-writable ~/.ssh/config: every layer, named, with the
    fix; the refused file's settings are not used."""
    path = tree.write(layer, "policy:\n  confirm:\n    command: [/bin/true]\n")
    path.chmod(mode)
    files = (path,) if layer.startswith("work/") else ()
    assert [rel(tree, line) for line in tree.lines(*files, check_paths=True)] == [
        f"{layer}: file is writable by {who} (mode {mode:04o}), who could then decide what "
        f"the agent runs and whom it serves: refusing it; fix: chmod go-w {layer}"
    ]
    path.chmod(0o644)
    assert tree.load(*files, check_paths=True).config.policy.confirm.command == ["/bin/true"]


def test_a_config_file_named_by_the_environment_is_checked_too(tree: Tree) -> None:
    path = tree.write("work/env.yaml", "agent: {}\n")
    path.chmod(0o606)
    lines = tree.lines(env={"SECRETIVEX_CONFIG": str(path)}, check_paths=True)
    assert lines and "chmod go-w" in lines[0] and str(path) in lines[0]


def test_a_config_d_others_can_add_fragments_to_is_refused(tree: Tree) -> None:
    tree.write("etc/config.d/10-a.yaml", "agent: {}\n")
    (tree.root / "etc" / "config.d").chmod(0o1777)
    lines = [rel(tree, line) for line in tree.lines(check_paths=True)]
    assert len(lines) == 1 and lines[0].startswith("etc/config.d: directory is writable")


def test_without_path_checks_modes_are_not_judged(tree: Tree) -> None:
    """`config validate --no-path-checks` checks a file meant for another host."""
    path = tree.write("work/c.yaml", "agent: {}\n")
    path.chmod(0o666)
    assert tree.load(path, check_paths=False).files == [path]


def test_a_config_file_of_another_uid_is_warned_about_not_refused(tree: Tree) -> None:
    """Containers bind-mount host files, whose owner is often nobody the container
    knows: a warning names the file and the owner; the file is used."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file to another uid")
    path = tree.write("work/c.yaml", "agent:\n  max_connections: 7\n")
    os.chown(path, 65534, 65534)
    loaded = tree.load(path, check_paths=True)
    assert loaded.config.agent.max_connections == 7
    assert [rel(tree, str(w)) for w in loaded.warnings] == [
        "work/c.yaml: file is owned by uid 65534, not by this agent's uid 0 or root: that "
        "uid decides what the agent runs and whom it serves (fine for a container's bind "
        "mount of a host file you trust)"
    ]
    root_owned = tree.write("work/root.yaml", "agent: {}\n")
    assert tree.load(root_owned, check_paths=True).warnings == ()
