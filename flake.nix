{
  description = "secretivex: an SSH agent appliance (key files, PKCS#11 tokens, upstream agents)";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;

      linuxSystems = [ "x86_64-linux" "aarch64-linux" ];
      darwinSystems = [ "x86_64-darwin" "aarch64-darwin" ];
      # the package and its tools everywhere; NixOS bits only where NixOS runs
      allSystems = linuxSystems ++ darwinSystems;

      pkgsFor =
        system:
        import nixpkgs {
          inherit system;
          overlays = [ self.overlays.default ];
        };
      forSystems = systems: f: lib.genAttrs systems (system: f (pkgsFor system));
    in
    {
      overlays.default = final: _prev: {
        secretivex = final.python3Packages.callPackage ./nixos-module/package.nix { };
      };

      packages = forSystems allSystems (pkgs: {
        default = pkgs.secretivex;
        secretivex = pkgs.secretivex;
      });

      apps = forSystems allSystems (pkgs: {
        default = {
          type = "app";
          program = "${pkgs.secretivex}/bin/secretivex";
          meta.description = "Run secretivex (e.g. `nix run . -- agent --print-env`)";
        };
      });

      devShells = forSystems allSystems (pkgs: {
        default = pkgs.mkShell {
          packages = [
            (pkgs.python3.withPackages (
              ps: with ps; [
                # runtime (pyproject.toml [project.dependencies])
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
                # tests and tooling (rich: the bench extra)
                rich
                setuptools
                build
                pytest
                pytest-timeout
                hypothesis
                paramiko
                asyncssh
                mypy
                types-pyyaml
              ]
            ))
            pkgs.softhsm
            pkgs.opensc
            pkgs.openssh
            pkgs.docker-client
            pkgs.ruff
            pkgs.shellcheck
          ];
          shellHook = ''
            export SECRETIVEX_SOFTHSM_MODULE=${pkgs.softhsm}/lib/softhsm/libsofthsm2.so
            echo "secretivex dev shell: python -m pytest, ruff check, mypy secretivex"
          '';
        };
      });

      nixosModules.default = import ./nixos-module;
      nixosModules.secretivex = self.nixosModules.default;

      checks = forSystems allSystems (
        pkgs:
        {
          package = pkgs.secretivex;
          # the installed CLI reports the version pyproject.toml declares
          version = pkgs.testers.testVersion {
            package = pkgs.secretivex;
            command = "secretivex --version";
            version = "secretivex ${pkgs.secretivex.version}";
          };
        }
        // lib.optionalAttrs pkgs.stdenv.isLinux (
          let
            vm = import ./nixos-module/test.nix {
              inherit pkgs;
              module = self.nixosModules.default;
            };
          in
          {
            vm-user-mode = vm.user-mode;
            vm-shared-host = vm.shared-host;
            # a setting the agent rejects must fail the build, with the validator's words
            config-rejected = vm.config-rejected;
          }
        )
      );
    };
}
