# The slice of NixOS that the secretivex module touches, declared with the shim's
# types (tests only). Option names and types follow nixos/modules: a definition the
# module makes outside these declarations shows up in `undeclared`; one inside a unit
# submodule with a misspelt name fails evaluation ("does not exist").
{ lib, ... }:

let
  inherit (lib) mkOption types;

  atom = types.nullOr (types.oneOf [ types.bool types.str types.int types.float types.path types.package ]);
  # like nixpkgs' systemd unitOption: lists concatenate, scalars must agree
  unitOption = lib.mkOptionType {
    name = "systemd option";
    check = x: atom.check x || (builtins.isList x && builtins.all atom.check x);
    merge =
      loc: defs:
      if builtins.any (d: builtins.isList d.value) defs then builtins.concatLists (map (d: lib.toList d.value) defs)
      else lib.mergeEqualOption loc defs;
  };
  unitSection = mkOption { type = types.attrsOf unitOption; default = { }; };
  strList = mkOption { type = types.listOf types.str; default = [ ]; };

  commonUnit = {
    enable = mkOption { type = types.bool; default = true; };
    description = mkOption { type = types.str; default = ""; };
    documentation = strList;
    wantedBy = strList;
    requiredBy = strList;
    upheldBy = strList;
    requires = strList;
    wants = strList;
    upholds = strList;
    after = strList;
    before = strList;
    bindsTo = strList;
    partOf = strList;
    conflicts = strList;
    onFailure = strList;
    unitConfig = unitSection;
    restartTriggers = mkOption { type = types.listOf types.anything; default = [ ]; };
  };
  serviceUnit = commonUnit // {
    serviceConfig = unitSection;
    environment = mkOption { type = types.attrsOf (types.nullOr (types.either types.str types.package)); default = { }; };
    path = mkOption { type = types.listOf (types.either types.package types.str); default = [ ]; };
    script = mkOption { type = types.lines; default = ""; };
    preStart = mkOption { type = types.lines; default = ""; };
    postStart = mkOption { type = types.lines; default = ""; };
  };
  systemService = serviceUnit // {
    reloadTriggers = mkOption { type = types.listOf types.anything; default = [ ]; };
    restartIfChanged = mkOption { type = types.bool; default = true; };
    reloadIfChanged = mkOption { type = types.bool; default = false; };
    stopIfChanged = mkOption { type = types.bool; default = true; };
    startAt = mkOption { type = types.either types.str (types.listOf types.str); default = [ ]; };
  };
  socketUnit = commonUnit // {
    socketConfig = unitSection;
    listenStreams = strList;
    listenDatagrams = strList;
  };
  unitsOf = opts: mkOption { type = types.attrsOf (types.submodule { options = opts; }); default = { }; };

  userOpts = {
    name = mkOption { type = types.str; default = ""; };
    isSystemUser = mkOption { type = types.bool; default = false; };
    isNormalUser = mkOption { type = types.bool; default = false; };
    uid = mkOption { type = types.nullOr types.int; default = null; };
    group = mkOption { type = types.str; default = ""; };
    extraGroups = strList;
    description = mkOption { type = types.str; default = ""; };
    home = mkOption { type = types.path; default = "/var/empty"; };
    createHome = mkOption { type = types.bool; default = false; };
    shell = mkOption { type = types.nullOr (types.either types.package types.str); default = null; };
    linger = mkOption { type = types.bool; default = false; };
    openssh.authorizedKeys = {
      keys = strList;
      keyFiles = mkOption { type = types.listOf types.path; default = [ ]; };
    };
  };
  groupOpts = {
    gid = mkOption { type = types.nullOr types.int; default = null; };
    members = strList;
  };
  etcOpts = {
    enable = mkOption { type = types.bool; default = true; };
    source = mkOption { type = types.path; };
    text = mkOption { type = types.nullOr types.lines; default = null; };
    mode = mkOption { type = types.str; default = "symlink"; };
    user = mkOption { type = types.str; default = "+0"; };
    group = mkOption { type = types.str; default = "+0"; };
  };
in
{
  options = {
    assertions = mkOption { type = types.listOf types.unspecified; default = [ ]; };
    warnings = mkOption { type = types.listOf types.str; default = [ ]; };

    environment = {
      etc = mkOption { type = types.attrsOf (types.submodule { options = etcOpts; }); default = { }; };
      systemPackages = mkOption { type = types.listOf types.package; default = [ ]; };
      extraInit = mkOption { type = types.lines; default = ""; };
      sessionVariables = mkOption { type = types.attrsOf (types.either types.str (types.listOf types.str)); default = { }; };
      variables = mkOption { type = types.attrsOf (types.either types.str (types.listOf types.str)); default = { }; };
    };

    programs.ssh.startAgent = mkOption { type = types.bool; default = false; };
    programs.ssh.extraConfig = mkOption { type = types.lines; default = ""; };
    programs.gnupg.agent.enable = mkOption { type = types.bool; default = false; };
    programs.gnupg.agent.enableSSHSupport = mkOption { type = types.bool; default = false; };

    users.users = mkOption { type = types.attrsOf (types.submodule { options = userOpts; }); default = { }; };
    users.groups = mkOption { type = types.attrsOf (types.submodule { options = groupOpts; }); default = { }; };

    systemd = {
      services = unitsOf systemService;
      sockets = unitsOf socketUnit;
      tmpfiles.rules = strList;
      user = {
        services = unitsOf serviceUnit;
        sockets = unitsOf socketUnit;
      };
    };
  };
}
