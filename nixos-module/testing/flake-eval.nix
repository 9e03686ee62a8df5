# Evaluate flake.nix's outputs against the fake nixpkgs (tests/nix/test_flake.py).
#
#   nix-instantiate --eval --strict --json nixos-module/testing/flake-eval.nix
#
# Reports the shape of every output, the package's build inputs (compared with
# pyproject.toml by the test), the VM tests' nodes and scripts, and the NixOS
# configurations of the VM test nodes evaluated through the module (whose settings
# the test feeds to the real `secretivex config validate`).
let
  b = builtins;
  lib = import ./lib.nix;
  nixpkgs = { inherit lib; outPath = ./nixpkgs; };
  flake = import ../../flake.nix;
  self = flake.outputs { inherit self nixpkgs; } // { outPath = toString ../..; };
  pkgs = import ./nixpkgs { system = "x86_64-linux"; overlays = [ self.overlays.default ]; };

  describePackage = p: {
    inherit (p) pname version pyproject dependencies build-system nativeCheckInputs;
    installCheckPhase = p.installCheckPhase or null;
    pythonImportsCheck = p.pythonImportsCheck or [ ];
    disabledTestPaths = p.disabledTestPaths or [ ];
    enabledTestPaths = p.enabledTestPaths or [ ];
    pytestFlagsArray = p.pytestFlagsArray or null;
    mainProgram = p.meta.mainProgram;
    platforms = p.meta.platforms;
  };

  # a VM test node, evaluated through the module with the NixOS stub
  evalNode =
    node:
    let
      e = lib.evalModules {
        modules = [ ./nixos-stub.nix node ];
        specialArgs = { inherit pkgs; };
      };
      c = e.config;
    in
    {
      inherit (e) undeclared;
      failedAssertions = map (a: a.message) (b.filter (a: !a.assertion) c.assertions);
      settings = c.environment.etc."secretivex/config.yaml".source.settings;
      mode = c.services.secretivex.mode;
      package = toString c.services.secretivex.package;
      userSockets = b.attrNames c.systemd.user.sockets;
      systemSockets = b.mapAttrs (_: s: s.listenStreams) c.systemd.sockets;
      loadCredential = (c.systemd.services.secretivex or { serviceConfig = { }; }).serviceConfig.LoadCredential or [ ];
    };
  vm = self.checks.x86_64-linux;
in
{
  description = flake.description;
  inputs = b.mapAttrs (_: i: i.url or null) flake.inputs;
  outputs = b.attrNames (b.removeAttrs self [ "outPath" ]);
  systems = b.mapAttrs (_: v: b.attrNames v) {
    inherit (self) packages apps devShells checks;
  };
  checks = b.mapAttrs (_: v: b.attrNames v) self.checks;
  package = describePackage self.packages.x86_64-linux.default;
  packageDarwin = describePackage self.packages.aarch64-darwin.default;
  # which repository paths the package's source filter keeps
  sourceFilter = b.listToAttrs (map (rel: {
    name = rel;
    value = self.packages.x86_64-linux.default.src.filter (toString ../.. + "/" + rel) "regular";
  }) [
    "pyproject.toml"
    "README.md"
    "secretivex/__init__.py"
    "secretivex/agent/systemd.py"
    "tests/unit/test_systemd.py"
    ".venv/bin/python"
    ".git/config"
    "secretivex/__pycache__/systemd.cpython-311.pyc"
    "secretivex.egg-info"
    "result"
    "flake.nix"
  ]);
  sameAsOverlay = toString self.packages.x86_64-linux.default == toString pkgs.secretivex;
  app = self.apps.x86_64-linux.default;
  versionCheck = { inherit (self.checks.x86_64-linux.version) command version; };
  devShell = self.devShells.x86_64-linux.default.packages;
  nixosModuleIsFunction = b.isFunction self.nixosModules.default;
  overlayIsFunction = b.isFunction self.overlays.default;
  vmTests = {
    user-mode = { inherit (vm.vm-user-mode) name testScript nodeNames; };
    shared-host = { inherit (vm.vm-shared-host) name testScript nodeNames; };
    config-rejected = { inherit (vm.config-rejected) script; };
  };
  nodes = {
    client = evalNode vm.vm-user-mode.nodes.client;
    shared = evalNode vm.vm-shared-host.nodes.shared;
  };
}
