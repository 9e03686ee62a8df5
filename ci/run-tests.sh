#!/usr/bin/env bash
# The whole suite, as `make test` runs it: unit, real OpenSSH tools, SoftHSM, Nix
# checks, containers, then short gate runs. Extra arguments go to pytest.
#
# SECRETIVEX_REQUIRE_ALL=1 (set by .ci/run) turns "tool missing, skipped" into a failure.
# SECRETIVEX_SKIP_CONTAINERS=1 skips the engine start and image build (local quick runs).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV:-.venv}/bin
export TESTCONTAINERS_RYUK_DISABLED=true

if [[ "${SECRETIVEX_SKIP_CONTAINERS:-0}" != 1 ]]; then
  if [[ -f ci/docker-engine.sh ]]; then
    if ! bash ci/docker-engine.sh; then
      echo "run-tests: no Docker engine; container tests will skip (or fail under SECRETIVEX_REQUIRE_ALL=1)" >&2
    fi
  fi
  if [[ -f ci/build-image.sh ]] && docker info >/dev/null 2>&1; then
    bash ci/build-image.sh
    # tests/systemd boots this one (systemd as PID 1, the agent from the image above)
    if [[ -f ci/build-systemd-image.sh ]]; then
      bash ci/build-systemd-image.sh
    fi
  fi
fi

status=0
"$BIN/pytest" -q -p no:randomly "$@" || status=$?
if [[ $status -eq 5 ]]; then
  echo "run-tests: pytest collected no tests" >&2
  exit 1
fi
if [[ $status -ne 0 ]]; then
  exit "$status"
fi

# The gates themselves ran inside pytest (tests/integration/test_gates.py); finish with
# the short side-by-side comparison so every CI log carries the ratios vs OpenSSH.
echo "run-tests: short comparison with OpenSSH's ssh-agent"
COMPARE_SHORT=1 bash ci/compare-openssh.sh
