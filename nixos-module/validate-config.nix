# Render secretivex settings to YAML and validate them at build time.
#
#   import ./validate-config.nix { inherit pkgs; } { package = ...; settings = { ... }; }
#
# The result is the YAML file itself (so /etc/secretivex/config.yaml only exists when
# it is valid). An invalid config fails the build and prints the validator's lines,
# with the store path replaced by "services.secretivex.settings" so they read like:
#   services.secretivex.settings: stores[0].pin_env: must name an environment variable ...
# Host-specific checks (does this module file / user exist?) are skipped
# (--no-path-checks): the build runs in a sandbox, not on the target host.
{ pkgs }:
{ package, settings, name ? "secretivex-config.yaml" }:

let
  rendered = (pkgs.formats.yaml { }).generate name settings;
in
pkgs.runCommand name
  {
    nativeBuildInputs = [ package ];
    preferLocalBuild = true;
    allowSubstitutes = false;
    passthru = { inherit rendered settings; };
  }
  ''
    export HOME="$TMPDIR" XDG_CONFIG_HOME="$TMPDIR/config" XDG_RUNTIME_DIR="$TMPDIR/run"
    if secretivex config validate --no-path-checks ${rendered} >"$TMPDIR/validate.log" 2>&1; then
      cp ${rendered} "$out"
    else
      status=$?
      echo "error: services.secretivex.settings is not a valid secretivex config (secretivex config validate exit $status):" >&2
      sed "s|${rendered}|services.secretivex.settings|g" "$TMPDIR/validate.log" >&2
      exit 1
    fi
  ''
