#!/usr/bin/env bash
# Reconnect smoke: duration-mode reconnect bench with warmup 0 (the combination that
# once produced attempted=0 in fan-out gates). Every request must succeed.
#
# Knobs (defaults): AGENT (secretivex), RECONNECT_CONCURRENCY (32), RECONNECT_DURATION
# (2s), RECONNECT_MIN_RPS (1), RECONNECT_MAX_FAILURE_RATE (0), RECONNECT_PROCESSES (1).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
sx_init reconnect
sx_require ssh-keygen

agent="${AGENT:-secretivex}"
sx_keys "$SX_TMP/keys"
socket="$SX_RUN/agent.sock"
config=""
if [[ "$agent" == secretivex ]]; then
  config="$SX_TMP/agent.yaml"
  sx_config "$config" "$SX_TMP/metrics.json"
fi
sx_start_agent "$agent" "$socket" "$SX_TMP/keys" "$config"

concurrency="${RECONNECT_CONCURRENCY:-32}"
duration="${RECONNECT_DURATION:-2s}"
sx_log "reconnect bench: $concurrency workers for $duration, warmup 0"
sx bench run --socket "$socket" --reconnect --duration "$duration" --warmup 0 \
  --concurrency "$concurrency" --processes "${RECONNECT_PROCESSES:-1}" --key gate-ed25519 \
  --out "$SX_TMP/reconnect.json" --no-progress
sx_artifact "$SX_TMP/reconnect.json"
sx_check "$SX_TMP/reconnect.json" --min-rps "${RECONNECT_MIN_RPS:-1}" \
  --max-failure-rate "${RECONNECT_MAX_FAILURE_RATE:-0}"
sx_log "PASS"
