#!/usr/bin/env bash
# Smoke gate: start an agent with fresh test keys, list and sign through the client,
# run a small persistent and a small reconnect bench, validate both reports strictly.
#
# Knobs: AGENT (secretivex|openssh), SMOKE_CONCURRENCY (16), SMOKE_REQUESTS (20 per
# worker), SMOKE_MIN_RPS (1), SMOKE_MAX_FAILURE_RATE (0), plus those in ci/lib.sh.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
sx_init smoke
sx_require ssh-keygen

agent="${AGENT:-secretivex}"
concurrency="${SMOKE_CONCURRENCY:-16}"
requests="${SMOKE_REQUESTS:-20}"
min_rps="${SMOKE_MIN_RPS:-1}"
max_failure_rate="${SMOKE_MAX_FAILURE_RATE:-0}"

sx_keys "$SX_TMP/keys"
socket="$SX_RUN/agent.sock"
metrics="$SX_TMP/metrics.json"
config=""
if [[ "$agent" == secretivex ]]; then
  config="$SX_TMP/agent.yaml"
  sx_config "$config" "$metrics"
fi
sx_start_agent "$agent" "$socket" "$SX_TMP/keys" "$config"
sx_log "agent $agent ready on $socket"

listed="$(sx client list --socket "$socket" | wc -l)"
[[ "$listed" -eq 3 ]] || sx_die "expected 3 keys listed, got $listed"
sx client health --socket "$socket" >&2

printf 'secretivex smoke gate\n' >"$SX_TMP/data"
for comment in gate-ed25519 gate-ecdsa-p256 gate-rsa-3072; do
  sx client sign --socket "$socket" --comment "$comment" --data "$SX_TMP/data" \
    --flags rsa-sha2-512 --out "$SX_TMP/sig-$comment" 2>/dev/null ||
    sx_die "client sign with $comment failed"
done

sx_log "persistent bench: $concurrency workers x $requests requests"
sx bench run --socket "$socket" --concurrency "$concurrency" --requests "$requests" \
  --key gate-ed25519 --out "$SX_TMP/smoke-persistent.json" --no-progress
sx_check "$SX_TMP/smoke-persistent.json" --min-rps "$min_rps" \
  --max-failure-rate "$max_failure_rate"

sx_log "reconnect bench: $concurrency workers x $requests requests"
sx bench run --socket "$socket" --concurrency "$concurrency" --requests "$requests" \
  --reconnect --key gate-ecdsa-p256 --out "$SX_TMP/smoke-reconnect.json" --no-progress
sx_check "$SX_TMP/smoke-reconnect.json" --min-rps "$min_rps" \
  --max-failure-rate "$max_failure_rate"

if [[ "$agent" == secretivex ]]; then
  sx client metrics "$metrics" --queue-wait-max-age-ms 10000 ||
    sx_die "metrics snapshot check failed"
fi
sx_artifact "$SX_TMP"/smoke-*.json
sx_log "PASS"
