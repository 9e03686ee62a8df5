# NixOS VM tests for services.secretivex (need nixpkgs and KVM; run by `nix flake check`).
#
#   user-mode       client + sshd server: alice logs in to the server over SSH with a key
#                   that only secretivex holds (socket-activated user service, exported
#                   SSH_AUTH_SOCK); reload keeps serving; the hardening is in force.
#   shared-host     one system agent; a team listener (group `team`, 0660, no peers:
#                   the group decides): a member signs, a non-member cannot connect;
#                   every socket keeps its owner and group once the service is active
#                   (no RuntimeDirectory= re-own, systemd#8635) and members connect
#                   again; the key's passphrase comes in as a systemd credential; a
#                   missing credential fails the unit with the path in its status.
#   config-rejected settings the agent rejects fail the build with the validator's line.
#
# Usage: import ./test.nix { pkgs = <nixpkgs with the secretivex overlay>; module = ...; }
{ pkgs, module ? ./default.nix }:

let
  runTest = pkgs.testers.runNixOSTest or pkgs.nixosTest;

  # Throwaway test keys, made at build time (never use store keys for anything real).
  keys = pkgs.runCommand "secretivex-test-keys" { nativeBuildInputs = [ pkgs.openssh ]; } ''
    mkdir "$out"
    ssh-keygen -q -t ed25519 -N "" -C alice@secretivex -f "$out/alice_ed25519"
    ssh-keygen -q -t ed25519 -N test-passphrase -C team@secretivex -f "$out/team_ed25519"
    printf 'test-passphrase\n' > "$out/team_passphrase"
  '';

  validate = import ./validate-config.nix { inherit pkgs; };
in
{
  user-mode = runTest {
    name = "secretivex-user-mode";

    nodes.server = {
      services.openssh = {
        enable = true;
        settings.PasswordAuthentication = false;
        settings.KbdInteractiveAuthentication = false;
      };
      users.users.alice = {
        isNormalUser = true;
        openssh.authorizedKeys.keyFiles = [ "${keys}/alice_ed25519.pub" ];
      };
    };

    nodes.client = {
      imports = [ module ];
      services.secretivex = {
        enable = true;
        # the key lives outside ~/.ssh, so ssh can only get it through the agent
        settings.stores = [
          { type = "file"; paths = [ "~/agent-keys/alice_ed25519" ]; }
        ];
        settings.logging.level = "debug";
      };
      users.users.alice = {
        isNormalUser = true;
        uid = 1000;
      };
      programs.ssh.extraConfig = ''
        StrictHostKeyChecking no
        UserKnownHostsFile /dev/null
        BatchMode yes
      '';
    };

    testScript = ''
      # a login-like shell for alice: clean environment, /etc/profile runs extraInit
      def as_alice(cmd):
          return (
              "runuser -u alice -- env -i HOME=/home/alice USER=alice LOGNAME=alice "
              "XDG_RUNTIME_DIR=/run/user/1000 PATH=/run/current-system/sw/bin "
              f"bash -lc '{cmd}'"
          )

      start_all()
      server.wait_for_unit("sshd.service")
      client.wait_for_unit("multi-user.target")

      with subtest("the key is only in secretivex's file store"):
          client.succeed(
              "install -d -o alice -m 700 /home/alice/agent-keys",
              "install -o alice -m 600 ${keys}/alice_ed25519 /home/alice/agent-keys/",
              "test ! -e /home/alice/.ssh/id_ed25519",
          )

      with subtest("alice's user manager listens on the agent socket (socket activation)"):
          client.succeed("loginctl enable-linger alice")
          client.wait_for_unit("secretivex.socket", "alice")
          client.wait_for_file("/run/user/1000/secretivex/agent.sock")
          client.succeed("stat -c '%a %U' /run/user/1000/secretivex/agent.sock | grep -x '600 alice'")

      with subtest("SSH_AUTH_SOCK is exported to login shells"):
          sock = client.succeed(as_alice("echo $SSH_AUTH_SOCK")).strip()
          assert sock == "/run/user/1000/secretivex/agent.sock", sock

      with subtest("the agent lists the key and alice logs in to the server with it"):
          client.succeed(as_alice("ssh-add -l") + " | grep alice@secretivex")
          client.wait_for_unit("secretivex.service", "alice")
          out = client.succeed(as_alice("ssh alice@server echo logged-in-as-\\$USER"))
          assert "logged-in-as-alice" in out, out

      with subtest("reload (SIGHUP, Type=notify) keeps the agent serving"):
          client.succeed(as_alice("systemctl --user reload secretivex.service"))
          client.wait_for_unit("secretivex.service", "alice")
          client.succeed(as_alice("ssh alice@server true"))

      with subtest("hardening is in force"):
          props = client.succeed(as_alice(
              "systemctl --user show secretivex.service -p NoNewPrivileges -p ProtectSystem "
              "-p PrivateUsers -p MemoryDenyWriteExecute -p RestrictAddressFamilies -p UMask -p Type"
          ))
          for want in ["NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateUsers=yes",
                       "MemoryDenyWriteExecute=yes", "RestrictAddressFamilies=AF_UNIX",
                       "UMask=0177", "Type=notify"]:
              assert want in props, props
          print(client.succeed(as_alice("systemd-analyze --user security secretivex.service || true")))
    '';
  };

  shared-host = runTest {
    name = "secretivex-shared-host";

    nodes.shared = {
      imports = [ module ];
      users.groups.team.gid = 2000;
      users.users.bob = {
        isNormalUser = true;
        extraGroups = [ "team" ];
      };
      users.users.dave = {
        isNormalUser = true;
        group = "team";
      };
      users.users.mallory.isNormalUser = true;
      services.secretivex = {
        enable = true;
        mode = "system";
        credentials.team-passphrase = "/run/keys/secretivex-team-passphrase";
        settings = {
          stores = [
            {
              type = "file";
              paths = [ "/var/lib/secretivex/keys/team_ed25519" ];
              passphrase_file = "/run/credentials/secretivex.service/team-passphrase";
            }
          ];
          listeners = [
            {
              socket = "/run/secretivex/team.sock";
              mode = "0660";
              group = "team";
            }
          ];
        };
      };
    };

    testScript = ''
      shared.wait_for_unit("sockets.target")

      with subtest("sockets are set up by systemd before the agent runs"):
          shared.succeed("stat -c '%a %U %G' /run/secretivex/agent.sock | grep -x '660 secretivex secretivex'")
          shared.succeed("stat -c '%a %G' /run/secretivex/team.sock | grep -x '660 team'")

      shared.succeed(
          "install -d -m 700 /run/keys",
          "install -m 600 ${keys}/team_passphrase /run/keys/secretivex-team-passphrase",
          "install -d -o secretivex -g secretivex -m 700 /var/lib/secretivex/keys",
          "install -o secretivex -g secretivex -m 600 ${keys}/team_ed25519 /var/lib/secretivex/keys/",
          "echo 'release notes' > /tmp/message",
          "chmod 644 /tmp/message",
      )

      with subtest("a team member can list and sign through the team socket"):
          shared.succeed("su bob -c 'SSH_AUTH_SOCK=/run/secretivex/team.sock ssh-add -l' | grep team@secretivex")
          shared.succeed(
              "su bob -c 'cp /tmp/message /tmp/bob-message && "
              "SSH_AUTH_SOCK=/run/secretivex/team.sock "
              "ssh-keygen -Y sign -f ${keys}/team_ed25519.pub -n file /tmp/bob-message'"
          )
          shared.succeed(
              "ssh-keygen -Y check-novalidate -n file -s /tmp/bob-message.sig < /tmp/bob-message"
          )
          shared.wait_for_unit("secretivex.service")

      with subtest("activation left every socket as its unit made it; members connect again"):
          shared.succeed("stat -c '%a %U %G' /run/secretivex | grep -x '755 root root'")
          shared.succeed("stat -c '%a %U %G' /run/secretivex/agent.sock | grep -x '660 secretivex secretivex'")
          shared.succeed("stat -c '%a %U %G' /run/secretivex/team.sock | grep -x '660 secretivex team'")
          shared.succeed("su bob -c 'SSH_AUTH_SOCK=/run/secretivex/team.sock ssh-add -l' | grep team@secretivex")
          shared.succeed("su dave -c 'SSH_AUTH_SOCK=/run/secretivex/team.sock ssh-add -l' | grep team@secretivex")

      with subtest("a non-member cannot use it"):
          shared.fail("su mallory -c 'SSH_AUTH_SOCK=/run/secretivex/team.sock ssh-add -l'")
          shared.fail("su mallory -c 'SSH_AUTH_SOCK=/run/secretivex/agent.sock ssh-add -l'")

      with subtest("root uses the main socket"):
          shared.succeed("SSH_AUTH_SOCK=/run/secretivex/agent.sock ssh-add -l | grep team@secretivex")

      with subtest("the credential is private to the unit"):
          shared.fail("su bob -c 'cat /run/credentials/secretivex.service/team-passphrase'")

      with subtest("a missing credential stops the unit, naming the path"):
          shared.succeed("systemctl stop secretivex.service")
          shared.succeed("rm /run/keys/secretivex-team-passphrase")
          shared.fail("systemctl start secretivex.service")
          status = shared.succeed("systemctl status secretivex.service || true")
          assert "/run/keys/secretivex-team-passphrase" in status, status
    '';
  };

  # Bad input: `agent.max_connections = 0` must fail the build, and the log must carry
  # the validator's line naming the key.
  config-rejected =
    let
      failure = pkgs.testers.testBuildFailure (validate {
        package = pkgs.secretivex;
        settings.agent.max_connections = 0;
      });
    in
    pkgs.runCommand "secretivex-config-rejected" { } ''
      grep -F "services.secretivex.settings" ${failure}/testBuildFailure.log
      grep -F "agent.max_connections" ${failure}/testBuildFailure.log
      touch "$out"
    '';
}
