# secretivex as a Python application. Used by the flake (packages, overlay) and as the
# module's default package when pkgs has no `secretivex`.
#
#   python3Packages.callPackage ./nixos-module/package.nix { }
#
# The version comes from pyproject.toml (the single source); so does the dependency
# list below, which tests/nix/test_flake.py compares with pyproject.toml.
{
  lib,
  buildPythonApplication,
  setuptools,
  anyio,
  cryptography,
  pynacl,
  bcrypt,
  python-pkcs11,
  pyyaml,
  pydantic,
  typer,
  orjson,
  jsonschema,
  uvloop,
  pytestCheckHook,
  pytest-timeout,
  hypothesis,
  paramiko,
  asyncssh,
  src ? null,
}:

let
  root = ../.;
  pyproject = builtins.fromTOML (builtins.readFile (root + "/pyproject.toml"));
  fs = lib.fileset;
  # only what the build and the unit tests need: no .venv, .git, caches or results
  source = fs.toSource {
    inherit root;
    fileset = fs.difference (fs.unions [
      (root + "/pyproject.toml")
      (root + "/README.md")
      (fs.maybeMissing (root + "/LICENSE"))
      (root + "/CHANGELOG.md")
      (root + "/secretivex")
      (root + "/tests")
      (root + "/config")
    ]) (fs.fileFilter (file: file.hasExt "pyc") root);
  };
  runtimeDeps = [
    anyio
    cryptography
    pynacl
    bcrypt
    python-pkcs11
    pyyaml
    pydantic
    typer
    orjson
    jsonschema
    uvloop
  ];
in
buildPythonApplication {
  pname = pyproject.project.name;
  inherit (pyproject.project) version;
  pyproject = true;
  src = if src != null then src else source;

  build-system = [ setuptools ];
  dependencies = runtimeDeps;

  # the unit tests; the ones needing OpenSSH tools, SoftHSM, Docker or Nix skip
  # themselves when those are absent, as they are in the build sandbox
  nativeCheckInputs = [ pytestCheckHook pytest-timeout hypothesis paramiko asyncssh ];
  enabledTestPaths = [ "tests/unit" ];
  # builds a wheel and a venv (slow marker); the Nix build is that check already
  disabledTestPaths = [ "tests/unit/test_release.py" ];
  preCheck = ''
    export HOME="$TMPDIR"
  '';
  pythonImportsCheck = [ "secretivex" "secretivex.agent.systemd" ];

  # (`secretivex --version` is checked by the flake's `checks.<system>.version`.)

  meta = {
    description = pyproject.project.description;
    license = lib.licenses.mit;
    mainProgram = "secretivex";
    platforms = lib.platforms.linux ++ lib.platforms.darwin;
  };
}
