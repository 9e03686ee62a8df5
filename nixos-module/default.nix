# NixOS module: services.secretivex
#
#   mode = "user"    a socket-activated systemd user service for every login user;
#                    SSH_AUTH_SOCK points at $XDG_RUNTIME_DIR/secretivex/agent.sock.
#   mode = "system"  one shared-host agent under the `secretivex` user; its sockets live
#                    in /run/secretivex (main socket: group `secretivex`, mode 0660) and
#                    every `settings.listeners` entry gets its own socket unit. The
#                    socket units create that directory (root, 0755) and the service has
#                    no RuntimeDirectory=: with User=, systemd re-owns a runtime
#                    directory and all in it when the service starts (systemd#8635),
#                    which would take each listener socket's group away.
#
# `settings` is the agent's YAML config (RFC 42), rendered to /etc/secretivex/config.yaml
# and checked at build time with `secretivex config validate --no-path-checks`: a
# setting the agent would reject fails the build with the validator's message.
# See docs/nixos.md.
{ config, options, lib, pkgs, ... }:

let
  inherit (lib)
    mkEnableOption mkIf mkMerge mkOption mkDefault types literalExpression literalMD
    any attrNames concatStringsSep hasPrefix listToAttrs mapAttrsToList optional
    optionalAttrs imap0 unique filter;

  cfg = config.services.secretivex;
  settingsFormat = pkgs.formats.yaml { };

  isUser = cfg.mode == "user";
  isSystem = cfg.mode == "system";

  userSocket = "%t/secretivex/agent.sock"; # %t = $XDG_RUNTIME_DIR in user units
  systemSocket =
    if cfg.settings.agent.socket != null then cfg.settings.agent.socket else "/run/secretivex/agent.sock";

  # pkcs11Modules and the user's own allowlist, merged the same way whatever the
  # order of the modules that define them: sorted, without duplicates.
  pkcs11Allowlist = builtins.sort builtins.lessThan (
    unique (cfg.pkcs11Modules ++ cfg.settings.agent.pkcs11_allowlist)
  );

  # what /etc/secretivex/config.yaml holds: the settings with the keys the module owns
  renderedSettings = cfg.settings // {
    agent =
      builtins.removeAttrs cfg.settings.agent [ "socket" ]
      // { pkcs11_allowlist = pkcs11Allowlist; }
      // optionalAttrs isSystem { socket = systemSocket; };
  };

  configFile = import ./validate-config.nix { inherit pkgs; } {
    inherit (cfg) package;
    settings = renderedSettings;
  };

  # PKCS#11 in use: tokens may need /dev/bus/usb or /dev/hidraw*, so no PrivateDevices.
  usesPkcs11 =
    pkcs11Allowlist != [ ]
    || any (store: (store.type or null) == "pkcs11") (cfg.settings.stores or [ ]);

  # system mode: one socket unit per configured listener, named after its path. The
  # fd is named by index: a path may hold ':' or be longer than the 255 characters
  # systemd allows in FileDescriptorName= (the agent matches inherited sockets by
  # the path they are bound to anyway).
  listeners = if isSystem then cfg.settings.listeners or [ ] else [ ];
  listenerUnit =
    l: "secretivex-listener-${builtins.substring 0 12 (builtins.hashString "sha256" l.socket)}";
  socketUnits = [ "secretivex.socket" ] ++ map (l: "${listenerUnit l}.socket") listeners;

  # system mode: files the agent writes (metrics.path, audit.path). The service has
  # ProtectSystem=strict: it can write only its StateDirectory, its private /tmp and
  # what serviceConfig.ReadWritePaths adds; /run/secretivex is root's (0755), so a
  # path there passes the build (--no-path-checks) and then stops the agent (exit 2).
  extraWritable = lib.toList (config.systemd.services.secretivex.serviceConfig.ReadWritePaths or [ ]);
  writable =
    p: any (dir: p == dir || hasPrefix "${lib.removeSuffix "/" dir}/" p)
      ([ "/var/lib/secretivex" "/tmp" "/var/tmp" ] ++ map (d: lib.removePrefix "-" (toString d)) extraWritable);
  unwritablePaths =
    if !isSystem then [ ]
    else
      builtins.concatMap
        (key:
          let p = (cfg.settings.${key} or { }).path or null; in
          optional (p != null && p != "-" && !writable (toString p)) "settings.${key}.path = \"${toString p}\"")
        [ "metrics" "audit" ];

  # Other agents that export SSH_AUTH_SOCK for login sessions (options that this
  # nixpkgs may not have are skipped).
  otherAgents =
    [
      { name = "programs.ssh.startAgent"; enabled = config.programs.ssh.startAgent; }
      {
        name = "programs.gnupg.agent.enableSSHSupport";
        enabled = config.programs.gnupg.agent.enableSSHSupport;
      }
    ]
    ++ optional (options ? services.gnome.gcr-ssh-agent.enable) {
      name = "services.gnome.gcr-ssh-agent.enable";
      enabled = config.services.gnome.gcr-ssh-agent.enable;
    }
    ++ optional (options ? services.yubikey-agent.enable) {
      name = "services.yubikey-agent.enable";
      enabled = config.services.yubikey-agent.enable;
    }
    ++ optional (options ? services.ssh-tpm-agent.enable) {
      name = "services.ssh-tpm-agent.enable";
      enabled = config.services.ssh-tpm-agent.enable;
    };

  # user mode: the mount sandbox needs a user namespace (PrivateUsers=); without one
  # the unit could not start (status 218/CAPABILITIES), so it is left out there.
  userNamespaces = config.security.allowUserNamespaces or true;

  credentialName = "^[A-Za-z0-9_][A-Za-z0-9_.@-]*$";

  # `settings` end up in /nix/store, which every local user can read (and in build
  # logs, and in any binary cache the closure is pushed to). A secret written into them
  # -- a PIN where its variable's name belongs, a `pin = ...` key, a pin_file given as a
  # Nix path (which copies the file into the store) -- is refused at evaluation, before
  # anything is built, and no message repeats the value.
  envVarName = "[A-Za-z_][A-Za-z0-9_]*";
  inStore = v: builtins.isPath v || hasPrefix builtins.storeDir (toString v);
  secretKeys = [ "pin" "passphrase" "password" "secret" "user_pin" "so_pin" ];
  storeSecretProblems = builtins.concatLists (imap0
    (i: store:
      let
        at = "services.secretivex.settings.stores[${toString i}]";
        has = k: store ? ${k} && store.${k} != null;
      in
      map (k: "${at}.${k} must name an environment variable that holds the secret, not the secret itself: settings are readable by every user in /nix/store (the value is not shown). Put NAME=value in environmentFile.")
        (filter (k: has k && builtins.match envVarName (toString store.${k}) == null) [ "pin_env" "passphrase_env" ])
      ++ map (k: "${at}.${k} is in the Nix store (a Nix path is copied there), readable by every user: give the path of a file outside it as a string, e.g. from `credentials`.")
        (filter (k: has k && inStore store.${k}) [ "pin_file" "passphrase_file" ])
      ++ map (k: "${at}.${k}: settings are readable by every user in /nix/store and never hold a PIN or passphrase (the value is not shown); use pin_env/passphrase_env with environmentFile, or pin_file/passphrase_file with credentials.")
        (filter (k: builtins.elem k secretKeys) (attrNames store)))
    (cfg.settings.stores or [ ]));
  # A variable a store reads its secret from, set with `systemd.(user.)services.
  # secretivex.environment`, is written into the unit file in /nix/store (and shown by
  # `systemctl show` to every user): only environmentFile keeps it out.
  secretVarNames = builtins.concatMap
    (store: map toString (filter (v: v != null) [ (store.pin_env or null) (store.passphrase_env or null) ]))
    (cfg.settings.stores or [ ]);
  unitEnvironments =
    (config.systemd.services.secretivex.environment or { })
    // (config.systemd.user.services.secretivex.environment or { });
  secretsInUnitEnvironment = filter (n: unitEnvironments ? ${n}) secretVarNames;

  kill = "${pkgs.coreutils}/bin/kill";

  # Shared by both modes: seccomp and no_new_privs, which need no namespaces.
  # Each line is explained in docs/nixos.md ("Hardening").
  hardening = {
    NoNewPrivileges = true;
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

  # The mount/capability sandbox: always in system mode; in user mode only where user
  # namespaces are allowed, with PrivateUsers= said out loud (systemd otherwise skips
  # ProtectSystem=/ProtectHome= in user units and fails the capability drops).
  sandbox = {
    CapabilityBoundingSet = "";
    AmbientCapabilities = "";
    ProtectSystem = "strict";
    PrivateTmp = true;
    PrivateDevices = !usesPkcs11;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectClock = true;
    ProtectHostname = true;
  };

  serviceBase = {
    Type = "notify";
    NotifyAccess = "main";
    ExecReload = "${kill} -HUP $MAINPID";
    Restart = "on-failure";
    RestartSec = "1s";
    # exit 2 = invalid config: retrying cannot fix it
    RestartPreventExitStatus = "2";
    TimeoutStartSec = "30s";
    TimeoutStopSec = "15s";
    # SIGTERM to the agent only: it drains in-flight requests (and confirm hooks)
    KillMode = "mixed";
  }
  // optionalAttrs (cfg.environmentFile != null) { EnvironmentFile = cfg.environmentFile; }
  // hardening;

  # A unit that cannot start gives up (and its socket with it) instead of leaving
  # clients waiting while it restarts forever.
  startLimit = {
    StartLimitIntervalSec = "60s";
    StartLimitBurst = 3;
  };
in
{
  options.services.secretivex = {
    enable = mkEnableOption "secretivex, an SSH agent serving keys from files, PKCS#11 tokens and other agents";

    package = mkOption {
      type = types.package;
      default = pkgs.secretivex or (pkgs.python3Packages.callPackage ./package.nix { });
      defaultText = literalMD ''
        `pkgs.secretivex` when the flake's overlay is applied, else the package built
        from this module's own source (`python3Packages.callPackage ./package.nix { }`)
      '';
      description = "The secretivex package to use.";
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
      type = types.submodule {
        freeformType = settingsFormat.type;
        options.agent = mkOption {
          default = { };
          description = "The `agent` section; the module sets `socket` and `pkcs11_allowlist`.";
          type = types.submodule {
            freeformType = settingsFormat.type;
            options.socket = mkOption {
              type = types.nullOr (types.strMatching "/.+");
              default = null;
              description = ''
                system mode: the main socket (default `/run/secretivex/agent.sock`).
                Ignored in user mode, where it is `$XDG_RUNTIME_DIR/secretivex/agent.sock`.
              '';
            };
            options.pkcs11_allowlist = mkOption {
              type = types.listOf types.str;
              default = [ ];
              description = ''
                PKCS#11 modules `ssh-add -s` may load, merged with `pkcs11Modules`
                (sorted, duplicates removed).
              '';
            };
          };
        };
      };
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
      assertions =
        map (agent: {
          assertion = !(isUser && agent.enabled);
          message = "services.secretivex (mode = \"user\") and ${agent.name} both provide SSH_AUTH_SOCK; disable one of them.";
        }) otherAgents
        ++ [
        {
          assertion = isSystem || cfg.credentials == { };
          message = "services.secretivex.credentials needs mode = \"system\"; in user mode use environmentFile or a per-user pin_file.";
        }
        {
          assertion = builtins.all (n: builtins.match credentialName n != null) (attrNames cfg.credentials);
          message = "services.secretivex.credentials: names must be letters, digits, '_', '.', '@' or '-' (got: ${concatStringsSep ", " (attrNames cfg.credentials)}).";
        }
        {
          assertion = !(any inStore (builtins.attrValues cfg.credentials));
          message = "services.secretivex.credentials: a file in the Nix store is readable by every user; name a file outside it (e.g. /run/keys/...), as a string.";
        }
        {
          assertion = secretsInUnitEnvironment == [ ];
          message = "services.secretivex: ${concatStringsSep ", " secretsInUnitEnvironment} (named by pin_env/passphrase_env) is set in systemd.services.secretivex.environment or systemd.user.services.secretivex.environment, which writes it into the unit file in /nix/store, readable by every user (and shown by `systemctl show`); use services.secretivex.environmentFile.";
        }
        {
          assertion = storeSecretProblems == [ ];
          message = concatStringsSep "\n" storeSecretProblems;
        }
        {
          assertion = unwritablePaths == [ ];
          message = "services.secretivex.${concatStringsSep ", " unwritablePaths}: in system mode the agent can write only under /var/lib/secretivex (its StateDirectory), its private /tmp, or a directory added to systemd.services.secretivex.serviceConfig.ReadWritePaths; /run/secretivex belongs to root. Use e.g. /var/lib/secretivex/metrics.json (audit.path may also be \"-\", the journal).";
        }
        {
          assertion = builtins.all (l: hasPrefix "/" (l.socket or "")) listeners;
          message = "services.secretivex.settings.listeners: in system mode every listener needs an absolute `socket` path.";
        }
      ];

      warnings = optional (isUser && cfg.settings.agent.socket != null)
        "services.secretivex.settings.agent.socket is ignored in user mode: the socket is always $XDG_RUNTIME_DIR/secretivex/agent.sock.";

      environment.etc."secretivex/config.yaml".source = configFile;
      environment.systemPackages = [ cfg.package ];
    }

    # smart cards and USB tokens behind a PKCS#11 module talk to pcscd
    (optionalAttrs (options ? services.pcscd.enable) {
      services.pcscd.enable = mkIf usesPkcs11 (mkDefault true);
    })

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
        unitConfig = { ConditionUser = "!@system"; } // startLimit;
        serviceConfig =
          serviceBase
          // {
            ExecStart = "${cfg.package}/bin/secretivex agent --socket ${userSocket}";
          }
          // optionalAttrs userNamespaces (
            sandbox
            // {
              PrivateUsers = true;
              # keys under ~ (e.g. ~/.ssh) are read, never written; ssh-add keys live in memory
              ProtectHome = "read-only";
            }
          );
      };

      # `nixos-rebuild switch` restarts no user units: reload (SIGHUP) running agents so
      # a new /etc/secretivex/config.yaml takes effect, as the system service does.
      system.userActivationScripts.secretivex-reload = ''
        ${pkgs.systemd}/bin/systemctl --user try-reload-or-restart secretivex.service || true
      '';

      environment.extraInit = mkIf cfg.setSshAuthSock ''
        if [ -z "''${SSH_AUTH_SOCK-}" ] && [ -n "''${XDG_RUNTIME_DIR-}" ]; then
          export SSH_AUTH_SOCK="$XDG_RUNTIME_DIR/secretivex/agent.sock"
        fi
      '';
    })

    (mkIf isSystem {
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
      // listToAttrs (imap0 (i: l: {
        name = listenerUnit l;
        value = {
          description = "secretivex listener ${l.socket}";
          wantedBy = [ "sockets.target" ];
          listenStreams = [ l.socket ];
          socketConfig = {
            # a label only: the agent matches inherited sockets by their path
            FileDescriptorName = "listener-${toString i}";
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
        unitConfig = {
          AssertPathExists = mapAttrsToList (_: path: path) cfg.credentials;
        } // startLimit;
        serviceConfig = serviceBase // sandbox // {
          ExecStart = "${cfg.package}/bin/secretivex agent --socket ${systemSocket}";
          User = "secretivex";
          Group = "secretivex";
          Sockets = socketUnits;
          StateDirectory = "secretivex";
          StateDirectoryMode = "0700";
          # no RuntimeDirectory=: see the top of this file (systemd#8635)
          ProtectHome = true;
          ProtectControlGroups = true;
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
