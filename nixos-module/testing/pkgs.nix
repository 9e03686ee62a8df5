# A fake `pkgs` for evaluating the module and the flake without nixpkgs (tests only).
# Derivations are plain attribute sets ({ type = "derivation"; outPath; ... }) that
# record what they were built from, so tests can look at build scripts and inputs:
#   formats.yaml.generate -> { text = <JSON of the value> (JSON is YAML); value; }
#   runCommand            -> { script; env attrs; passthru merged in }
#   buildPythonApplication-> { pname; version; dependencies = [ names ]; ... }
{ lib, packagePath ? null, coreutilsPath ? null, system ? "x86_64-linux" }:

let
  b = builtins;
  hash = s: b.substring 0 32 (b.hashString "sha256" s);
  drv =
    name: attrs:
    {
      type = "derivation";
      inherit name;
      outPath = "/nix/store/${hash (name + (attrs._hashInput or ""))}-${name}";
      drvPath = "/nix/store/${hash ("drv" + name)}-${name}.drv";
      meta = { };
    }
    // b.removeAttrs attrs [ "_hashInput" ];
  pkgOf = name: drv name { pname = name; };
  isLinux = lib.hasSuffix "-linux" system;

  callPackageWith =
    autoArgs: fn: args:
    let
      f = if b.isFunction fn then fn else import fn;
    in
    f (b.intersectAttrs (b.functionArgs f) autoArgs // args);

  yamlValue = with lib.types;
    nullOr (oneOf [ bool int float str path (attrsOf yamlValue) (listOf yamlValue) ]) // { description = "YAML value"; };

  pythonNames = [
    "anyio" "cryptography" "pynacl" "bcrypt" "python-pkcs11" "pyyaml" "pydantic" "pydantic-settings"
    "typer" "orjson" "rich" "jsonschema" "uvloop" "setuptools" "wheel" "pytest" "pytestCheckHook"
    "pytest-timeout" "hypothesis" "paramiko" "asyncssh" "build" "mypy" "types-pyyaml"
    "types-jsonschema" "testcontainers" "ruff"
  ];
  python3Packages = lib.genAttrs pythonNames pkgOf // {
    callPackage = callPackageWith (pkgs // python3Packages);
    buildPythonApplication =
      attrs:
      drv "${attrs.pname}-${attrs.version}" (attrs // {
        dependencies = map (d: d.pname or d.name) (attrs.dependencies or [ ]);
        build-system = map (d: d.pname or d.name) (attrs.build-system or [ ]);
        nativeCheckInputs = map (d: d.pname or d.name) (attrs.nativeCheckInputs or [ ]);
        srcPath = toString (attrs.src or "");
        passthru = attrs.passthru or { };
      } // (attrs.passthru or { }));
  };
  python3 = pkgOf "python3" // {
    pkgs = python3Packages;
    withPackages = f: drv "python3-env" { packages = map (d: d.pname or d.name) (f python3Packages); };
  };

  pkgs = {
    inherit lib system python3 python3Packages;
    python311 = python3;
    stdenv = {
      inherit isLinux;
      isDarwin = lib.hasSuffix "-darwin" system;
      hostPlatform = { inherit system isLinux; };
    };
    callPackage = callPackageWith pkgs;
    coreutils = if coreutilsPath == null then pkgOf "coreutils" else pkgOf "coreutils" // { outPath = coreutilsPath; };
    openssh = pkgOf "openssh";
    softhsm = pkgOf "softhsm";
    opensc = pkgOf "opensc";
    docker-client = pkgOf "docker-client";
    shellcheck = pkgOf "shellcheck";
    ruff = pkgOf "ruff";
    nix = pkgOf "nix";
    systemd = pkgOf "systemd";
    gnused = pkgOf "gnused";
    formats.yaml =
      { }:
      {
        type = yamlValue;
        generate =
          name: value:
          let text = b.toJSON value; in
          drv name { inherit text value; _hashInput = text; };
      };
    writeText = name: text: drv name { inherit text; _hashInput = text; };
    runCommand =
      name: env: script:
      drv name ({ inherit script env; _hashInput = script; } // (env.passthru or { }));
    runCommandLocal = pkgs.runCommand;
    mkShell = attrs: drv "nix-shell" { packages = map (d: d.pname or d.name) (attrs.packages or [ ]); shellHook = attrs.shellHook or ""; };
    testers = {
      runNixOSTest = test: drv "vm-test-run-${test.name}" { inherit (test) name testScript; nodeNames = b.attrNames test.nodes; nodes = test.nodes; };
      testBuildFailure = d: drv "${d.name}-failure" { failed = d; };
      testVersion = args: drv "${args.package.name}-test-version" { inherit (args) command version; };
    };
  }
  // lib.optionalAttrs (packagePath != null) {
    secretivex = drv "secretivex-0.0.0" { pname = "secretivex"; outPath = packagePath; meta.mainProgram = "secretivex"; };
  };
in
pkgs
