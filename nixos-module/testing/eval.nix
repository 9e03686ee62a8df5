# Evaluate the secretivex NixOS module against the shim (tests/nix/test_module.py).
#
#   nix-instantiate --eval --strict --json nixos-module/testing/eval.nix \
#     --argstr scenario '{"secretivex": {"enable": true}, "world": {}}'
#
# scenario: JSON; "secretivex" is services.secretivex, "world" any other NixOS config
# (e.g. {"programs": {"ssh": {"startAgent": true}}}).
#
# libPath: a nixpkgs lib directory (e.g. a checkout of nix-community/nixpkgs.lib's
# lib/) to evaluate with the real module system instead of the stand-in lib.nix; the
# real lib refuses undeclared options itself, so `undeclared` is then always [].
# tests/nix passes it from SECRETIVEX_NIXPKGS_LIB.
#
# extraModule: the path of one more NixOS module file (e.g. an example from
# docs/nixos.md, tests/nix/test_docs_nixos.py), evaluated with the scenario.
{ scenario ? "{}"
, libPath ? ""
, extraModule ? ""
, stubBare ? "false"
, packagePath ? "/nix/store/00000000000000000000000000000000-secretivex-0.0.0"
, coreutilsPath ? null
}:

let
  realLib = libPath != "";
  lib = if realLib then import (/. + libPath) else import ./lib.nix;
  pkgs = import ./pkgs.nix { inherit lib packagePath coreutilsPath; };
  s = builtins.fromJSON scenario;
  evaluated = lib.evalModules {
    modules = [
      ./nixos-stub.nix
      ../default.nix
      { _file = "scenario"; config.services.secretivex = s.secretivex or { }; }
      { _file = "world"; config = s.world or { }; }
    ] ++ (if extraModule == "" then [ ] else [ (/. + extraModule) ]);
    specialArgs = { inherit pkgs; stubBare = stubBare == "true"; };
  };
  c = evaluated.config;
  cfg = c.services.secretivex;
  etc = c.environment.etc;
  configFile = etc."secretivex/config.yaml".source or null;
  units = sys: builtins.mapAttrs (_: u: builtins.removeAttrs u [ ]) sys;
in
{
  undeclared = if realLib then [ ] else evaluated.undeclared;
  failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) c.assertions);
  warnings = c.warnings;
  package = toString cfg.package;
  # what /etc/secretivex/config.yaml holds (the module's keys filled in)
  settings = if configFile == null then cfg.settings else configFile.settings;
  userActivationScripts = c.system.userActivationScripts;
  pcscd = c.services.pcscd.enable or null;
  etc = builtins.attrNames etc;
  configFile =
    if configFile == null then null
    else {
      inherit (configFile) name script;
      path = toString configFile;
      nativeBuildInputs = map toString configFile.env.nativeBuildInputs;
      rendered = { inherit (configFile.rendered) name text; path = toString configFile.rendered; };
    };
  systemd = {
    services = units c.systemd.services;
    sockets = units c.systemd.sockets;
    user = {
      services = units c.systemd.user.services;
      sockets = units c.systemd.user.sockets;
    };
  };
  users = c.users;
  extraInit = c.environment.extraInit;
  systemPackages = map toString c.environment.systemPackages;
}
