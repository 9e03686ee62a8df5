# Evaluate the secretivex NixOS module against the shim (tests/nix/test_module.py).
#
#   nix-instantiate --eval --strict --json nixos-module/testing/eval.nix \
#     --argstr scenario '{"secretivex": {"enable": true}, "world": {}}'
#
# scenario: JSON; "secretivex" is services.secretivex, "world" any other NixOS config
# (e.g. {"programs": {"ssh": {"startAgent": true}}}).
{ scenario ? "{}"
, stubBare ? "false"
, packagePath ? "/nix/store/00000000000000000000000000000000-secretivex-0.0.0"
, coreutilsPath ? null
}:

let
  lib = import ./lib.nix;
  pkgs = import ./pkgs.nix { inherit lib packagePath coreutilsPath; };
  s = builtins.fromJSON scenario;
  evaluated = lib.evalModules {
    modules = [
      ./nixos-stub.nix
      ../default.nix
      { _file = "scenario"; config.services.secretivex = s.secretivex or { }; }
      { _file = "world"; config = s.world or { }; }
    ];
    specialArgs = { inherit pkgs; stubBare = stubBare == "true"; };
  };
  c = evaluated.config;
  cfg = c.services.secretivex;
  etc = c.environment.etc;
  configFile = etc."secretivex/config.yaml".source or null;
  units = sys: builtins.mapAttrs (_: u: builtins.removeAttrs u [ ]) sys;
in
{
  undeclared = evaluated.undeclared;
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
