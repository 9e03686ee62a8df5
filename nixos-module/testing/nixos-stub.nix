# The slice of NixOS that the secretivex module touches, declared with the shim's
# types (tests only). Option names and types follow nixos/modules: a definition the
# module makes outside these declarations shows up in `undeclared`; one inside a unit
# submodule with a misspelt name fails evaluation ("does not exist").
#
# It also knows what systemd does with the units at run time where that silently
# breaks a configuration, and fails those as assertions (tests/nix checks them):
#   - FileDescriptorName= values systemd ignores (a ':', over 255 characters, not
#     printable ASCII);
#   - a socket under a service's RuntimeDirectory= whose owner or group differs from
#     the service's User=/Group=: starting the service re-owns the directory and all
#     in it (systemd#8635), so the socket loses its group.
#
# `stubBare = true` (a specialArg) leaves out the options that only newer nixpkgs
# has (gcr-ssh-agent, yubikey-agent, ssh-tpm-agent, pcscd), like an older release.
{ lib, config, stubBare ? false, ... }:

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
  b = builtins;
  # systemd's fdname_is_valid(): printable ASCII except ':', at most 255 characters
  fdNameValid = n: b.stringLength n <= 255 && b.match "[ -9;-~]*" n != null;
  badFdNames = kind: units: lib.concatMap (name:
    let n = units.${name}.socketConfig.FileDescriptorName or null; in
    lib.optional (n != null && !(fdNameValid (toString n)))
      "${kind}.${name}: FileDescriptorName=${toString n} is not a name systemd accepts (at most 255 printable characters, no ':'); systemd ignores it"
  ) (b.attrNames units);

  # systemd#8635: RuntimeDirectory= with User= re-owns the directory recursively
  reowned = lib.concatMap (svcName:
    let
      svc = config.systemd.services.${svcName}.serviceConfig;
      dirs = lib.splitString " " (toString (svc.RuntimeDirectory or ""));
      user = svc.User or null;
      group = svc.Group or user;
      mine = sockName: sock:
        (sock.socketConfig.Service or "${sockName}.service") == "${svcName}.service";
    in
    if user == null || svc ? RuntimeDirectory == false then [ ] else
    lib.concatMap (sockName:
      let
        sock = config.systemd.sockets.${sockName};
        owner = toString (sock.socketConfig.SocketUser or "root");
        sgroup = toString (sock.socketConfig.SocketGroup or "root");
        inside = lib.any (dir: lib.any (path: lib.hasPrefix "/run/${dir}/" path) sock.listenStreams) dirs;
      in
      lib.optional (mine sockName sock && inside && (owner != toString user || sgroup != toString group))
        "systemd.sockets.${sockName}: its socket is inside RuntimeDirectory= of ${svcName}.service, which systemd re-owns to ${toString user}:${toString group} when the service starts (systemd#8635); the socket would lose ${owner}:${sgroup}"
    ) (b.attrNames config.systemd.sockets)
  ) (b.attrNames config.systemd.services);

  newerOptions = {
    services.gnome.gcr-ssh-agent.enable = mkOption { type = types.bool; default = false; };
    services.yubikey-agent.enable = mkOption { type = types.bool; default = false; };
    services.ssh-tpm-agent.enable = mkOption { type = types.bool; default = false; };
    services.pcscd.enable = mkOption { type = types.bool; default = false; };
  };
in
{
  config.assertions = map (message: { assertion = false; inherit message; }) (
    badFdNames "systemd.sockets" config.systemd.sockets
    ++ badFdNames "systemd.user.sockets" config.systemd.user.sockets
    ++ reowned
  );

  options = lib.recursiveUpdate (if stubBare then { } else newerOptions) {
    security.allowUserNamespaces = mkOption { type = types.bool; default = true; };
    system.userActivationScripts = mkOption {
      type = types.attrsOf (types.either types.str (types.submodule {
        options.text = mkOption { type = types.lines; };
        options.deps = strList;
      }));
      default = { };
    };
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
