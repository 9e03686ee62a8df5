# NixOS module: services.secretivex
#
#   mode = "user"    a socket-activated systemd user service for every login user;
#                    SSH_AUTH_SOCK points at $XDG_RUNTIME_DIR/secretivex/agent.sock.
#   mode = "system"  one shared-host agent under the `secretivex` user; its sockets live
#                    in /run/secretivex (main socket: group `secretivex`, mode 0660) and
#                    every `settings.listeners` entry gets its own socket unit.
#
# `settings` is the agent's YAML config (RFC 42), rendered to /etc/secretivex/config.yaml
# and checked at build time with `secretivex config validate --no-path-checks`: a
# setting the agent would reject fails the build with the validator's message.
# See docs/nixos.md.
{ config, lib, pkgs, ... }:

let
  inherit (lib)
    mkEnableOption mkIf mkMerge mkOption mkDefault mkPackageOption types literalExpression
    any attrNames concatStringsSep hasPrefix listToAttrs mapAttrsToList optional
    optionalAttrs;

  cfg = config.services.secretivex;
  settingsFormat = pkgs.formats.yaml { };

  isUser = cfg.mode == "user";
  isSystem = cfg.mode == "system";

  userSocket = "%t/secretivex/agent.sock"; # %t = $XDG_RUNTIME_DIR in user units
  systemSocket = cfg.settings.agent.socket or "/run/secretivex/agent.sock";

  configFile = import ./validate-config.nix { inherit pkgs; } {
    inherit (cfg) package settings;
  };

  # PKCS#11 in use: tokens may need /dev/bus/usb or /dev/hidraw*, so no PrivateDevices.
  usesPkcs11 =
    cfg.pkcs11Modules != [ ]
    || any (store: (store.type or null) == "pkcs11") (cfg.settings.stores or [ ]);

  # system mode: one socket unit per configured listener, named after its path.
  listeners = if isSystem then cfg.settings.listeners or [ ] else [ ];
  listenerUnit =
    l: "secretivex-listener-${builtins.substring 0 12 (builtins.hashString "sha256" l.socket)}";
  socketUnits = [ "secretivex.socket" ] ++ map (l: "${listenerUnit l}.socket") listeners;

  credentialName = "^[A-Za-z0-9_][A-Za-z0-9_.@-]*$";

  kill = "${pkgs.coreutils}/bin/kill";

  # Shared by both modes. Each line is explained in docs/nixos.md ("Hardening").
  hardening = {
    NoNewPrivileges = true;
    CapabilityBoundingSet = "";
    AmbientCapabilities = "";
    ProtectSystem = "strict";
    PrivateTmp = true;
    PrivateDevices = !usesPkcs11;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    RestrictAddressFamilies = "AF_UNIX";
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    # CPython has no JIT, and cryptography/bcrypt/orjson/pydantic-core need no W+X
    # pages (tests/unit/test_systemd.py runs the stack under the same seccomp filter).
    MemoryDenyWriteExecute = true;
    SystemCallArchitectures = "native";
    SystemCallFilter = [ "@system-service" ];
    SystemCallErrorNumber = "EPERM";
    UMask = "0177";
  };

  serviceBase = {
    Type = "notify";
    NotifyAccess = "main";
    ExecReload = "${kill} -HUP $MAINPID";
    Restart = "on-failure";
    RestartSec = "2s";
    TimeoutStopSec = "15s";
    RuntimeDirectory = "secretivex";
    # the socket units own the sockets in there: keep the directory across restarts
    RuntimeDirectoryPreserve = "yes";
  }
  // optionalAttrs (cfg.environmentFile != null) { EnvironmentFile = cfg.environmentFile; }
  // hardening;
in
{
  options.services.secretivex = {
    enable = mkEnableOption "secretivex, an SSH agent serving keys from files, PKCS#11 tokens and other agents";

    package = mkPackageOption pkgs "secretivex" { } // {
      # works with or without the flake's overlay
      default = pkgs.secretivex or (pkgs.python3Packages.callPackage ./package.nix { });
    };

    mode = mkOption {
      type = types.enum [ "user" "system" ];
      default = "user";
      description = ''
        `user`: a socket-activated systemd user service for every login user, with
        `SSH_AUTH_SOCK` set to `$XDG_RUNTIME_DIR/secretivex/agent.sock`.
        `system`: one shared-host agent running as the `secretivex` user; its main
        socket is `/run/secretivex/agent.sock` (group `secretivex`, mode 0660) and each
        entry of `settings.listeners` gets its own socket unit.
      '';
    };

    settings = mkOption {
      type = settingsFormat.type;
      default = { };
      example = literalExpression ''
        {
          stores = [
            { type = "file"; paths = [ "~/.ssh/id_ed25519" ]; }
            { type = "pkcs11"; module = "''${pkgs.opensc}/lib/opensc-pkcs11.so";
              token_label = "work"; pin_file = "/run/credentials/secretivex.service/pin"; }
          ];
          policy.deny = [ "type:ssh-rsa" ];
          logging.format = "json";
        }
      '';
      description = ''
        secretivex configuration (see docs/configuration.md), written to
        `/etc/secretivex/config.yaml` and validated at build time with
        `secretivex config validate --no-path-checks`. Holds no secrets: name PINs
        and passphrases by `*_env` (see `environmentFile`) or `*_file` (see
        `credentials`).
      '';
    };

    pkcs11Modules = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = literalExpression ''[ "''${pkgs.opensc}/lib/opensc-pkcs11.so" ]'';
      description = ''
        PKCS#11 modules (paths or globs) that `ssh-add -s` may load; becomes
        `settings.agent.pkcs11_allowlist` (empty: `ssh-add -s` is refused). When any
        PKCS#11 module is in use, `PrivateDevices` is turned off so USB tokens work.
      '';
    };

    setSshAuthSock = mkOption {
      type = types.bool;
      default = true;
      description = ''
        user mode: export `SSH_AUTH_SOCK=$XDG_RUNTIME_DIR/secretivex/agent.sock` in
        login shells, unless it is already set (agent forwarding, another agent).
      '';
    };

    environmentFile = mkOption {
      type = types.nullOr (types.strMatching "/.+");
      default = null;
      example = "/run/secrets/secretivex.env";
      description = ''
        File of `NAME=value` lines (e.g. `SECRETIVEX_PKCS11_PIN=...`) loaded into the
        agent's environment, for `pin_env`/`passphrase_env`. Given as a string so it is
        never copied into the Nix store. Prefer `credentials` in system mode.
      '';
    };

    credentials = mkOption {
      type = types.attrsOf (types.strMatching "/.+");
      default = { };
      example = {
        pin = "/run/keys/secretivex-pin";
      };
      description = ''
        system mode: systemd credentials (`LoadCredential=NAME:PATH`). Each file is
        readable by the agent only, at `/run/credentials/secretivex.service/NAME`;
        point `pin_file`/`passphrase_file` there. A missing file stops the unit from
        starting, with the path in the journal.
      '';
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      assertions = [
        {
          assertion = !(isUser && config.programs.ssh.startAgent);
          message = "services.secretivex (mode = \"user\") and programs.ssh.startAgent both provide SSH_AUTH_SOCK; disable one of them.";
        }
        {
          assertion = !(isUser && config.programs.gnupg.agent.enableSSHSupport);
          message = "services.secretivex (mode = \"user\") and programs.gnupg.agent.enableSSHSupport both provide SSH_AUTH_SOCK; disable one of them.";
        }
        {
          assertion = isSystem || cfg.credentials == { };
          message = "services.secretivex.credentials needs mode = \"system\"; in user mode use environmentFile or a per-user pin_file.";
        }
        {
          assertion = builtins.all (n: builtins.match credentialName n != null) (attrNames cfg.credentials);
          message = "services.secretivex.credentials: names must be letters, digits, '_', '.', '@' or '-' (got: ${concatStringsSep ", " (attrNames cfg.credentials)}).";
        }
        {
          assertion = builtins.all (l: hasPrefix "/" (l.socket or "")) listeners;
          message = "services.secretivex.settings.listeners: in system mode every listener needs an absolute `socket` path.";
        }
      ];

      warnings = optional (isUser && (cfg.settings.agent or { }) ? socket)
        "services.secretivex.settings.agent.socket is ignored in user mode: the socket is always $XDG_RUNTIME_DIR/secretivex/agent.sock.";

      services.secretivex.settings.agent.pkcs11_allowlist = cfg.pkcs11Modules;

      environment.etc."secretivex/config.yaml".source = configFile;
      environment.systemPackages = [ cfg.package ];
    }

    (mkIf isUser {
      systemd.user.sockets.secretivex = {
        description = "secretivex SSH agent socket";
        wantedBy = [ "sockets.target" ];
        listenStreams = [ userSocket ];
        unitConfig.ConditionUser = "!@system";
        socketConfig = {
          FileDescriptorName = "agent";
          SocketMode = "0600";
          DirectoryMode = "0700";
          Service = "secretivex.service";
        };
      };

      systemd.user.services.secretivex = {
        description = "secretivex SSH agent";
        requires = [ "secretivex.socket" ];
        after = [ "secretivex.socket" ];
        unitConfig.ConditionUser = "!@system";
        serviceConfig = serviceBase // {
          ExecStart = "${cfg.package}/bin/secretivex agent --socket ${userSocket}";
          RuntimeDirectoryMode = "0700";
          # keys under ~ (e.g. ~/.ssh) are read, never written; ssh-add keys live in memory
          ProtectHome = "read-only";
        };
      };

      environment.extraInit = mkIf cfg.setSshAuthSock ''
        if [ -z "''${SSH_AUTH_SOCK-}" ] && [ -n "''${XDG_RUNTIME_DIR-}" ]; then
          export SSH_AUTH_SOCK="$XDG_RUNTIME_DIR/secretivex/agent.sock"
        fi
      '';
    })

    (mkIf isSystem {
      services.secretivex.settings.agent.socket = mkDefault "/run/secretivex/agent.sock";

      users.users.secretivex = {
        isSystemUser = true;
        group = "secretivex";
        description = "secretivex SSH agent";
        home = "/var/lib/secretivex";
      };
      users.groups.secretivex = { };

      systemd.sockets = {
        secretivex = {
          description = "secretivex SSH agent socket (shared host)";
          wantedBy = [ "sockets.target" ];
          listenStreams = [ systemSocket ];
          socketConfig = {
            FileDescriptorName = "agent";
            SocketUser = "secretivex";
            SocketGroup = "secretivex";
            SocketMode = "0660";
            DirectoryMode = "0755";
            Service = "secretivex.service";
          };
        };
      }
      // listToAttrs (map (l: {
        name = listenerUnit l;
        value = {
          description = "secretivex listener ${l.socket}";
          wantedBy = [ "sockets.target" ];
          listenStreams = [ l.socket ];
          socketConfig = {
            # the agent maps an inherited fd to the listener whose socket path it names
            FileDescriptorName = l.socket;
            SocketUser = toString (if (l.owner or null) == null then "secretivex" else l.owner);
            SocketGroup = toString (if (l.group or null) == null then "secretivex" else l.group);
            SocketMode = l.mode or "0600";
            DirectoryMode = "0755";
            Service = "secretivex.service";
          };
        };
      }) listeners);

      systemd.services.secretivex = {
        description = "secretivex SSH agent (shared host)";
        requires = socketUnits;
        after = socketUnits;
        # `nixos-rebuild switch` with new settings reloads (SIGHUP) instead of
        # restarting, so connected clients keep their sessions.
        reloadTriggers = [ configFile ];
        environment.HOME = "/var/lib/secretivex";
        unitConfig.AssertPathExists = mapAttrsToList (_: path: path) cfg.credentials;
        serviceConfig = serviceBase // {
          ExecStart = "${cfg.package}/bin/secretivex agent --socket ${systemSocket}";
          User = "secretivex";
          Group = "secretivex";
          Sockets = socketUnits;
          StateDirectory = "secretivex";
          StateDirectoryMode = "0700";
          RuntimeDirectoryMode = "0755";
          ProtectHome = true;
          IPAddressDeny = "any";
          LoadCredential = mapAttrsToList (name: path: "${name}:${path}") cfg.credentials;
        }
        // optionalAttrs usesPkcs11 {
          DevicePolicy = "closed";
          DeviceAllow = [ "char-usb_device rw" "char-hidraw rw" ];
        };
      };
    })
  ]);
}
