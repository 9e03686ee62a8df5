#!/usr/bin/env bash
# SLO gate: a fan-out bench against a fresh agent, judged on throughput, p95 latency,
# failure rate and the agent's queue-wait envelope. attempted=0 is reported first as a
# setup/warmup/config problem; the metrics snapshot must be fresh.
#
# Knobs (defaults): AGENT (secretivex), SLO_PROFILE (balanced), SLO_CONCURRENCY (64),
# SLO_DURATION (3s), SLO_WARMUP (0), SLO_RECONNECT (1), SLO_WORKER_START_SPREAD_MS (0),
# SLO_PROCESSES (1), SLO_MIN_RPS (20), SLO_MAX_P95_US (300000), SLO_MAX_FAILURE_RATE
# (0.01), SLO_QUEUE_WAIT_TAIL_NS + SLO_QUEUE_WAIT_TAIL_MAX_RATIO (default: the
# profile's suggested guardrail), SLO_MAX_QUEUE_WAIT_P99_NS (unset), SLO_METRICS_MAX_AGE_MS
# (5000), SLO_OUTPUT (copy the report here).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
sx_init slo
sx_require ssh-keygen

agent="${AGENT:-secretivex}"
profile="${SLO_PROFILE:-balanced}"
concurrency="${SLO_CONCURRENCY:-64}"
duration="${SLO_DURATION:-3s}"
warmup="${SLO_WARMUP:-0}"
reconnect="${SLO_RECONNECT:-1}"
spread="${SLO_WORKER_START_SPREAD_MS:-0}"
processes="${SLO_PROCESSES:-1}"
min_rps="${SLO_MIN_RPS:-20}"
max_p95="${SLO_MAX_P95_US:-300000}"
max_failure_rate="${SLO_MAX_FAILURE_RATE:-0.01}"
max_age="${SLO_METRICS_MAX_AGE_MS:-5000}"

sx_keys "$SX_TMP/keys"
socket="$SX_RUN/agent.sock"
metrics="$SX_TMP/metrics.json"
config=""
if [[ "$agent" == secretivex ]]; then
  config="$SX_TMP/agent.yaml"
  sx_config "$config" "$metrics" "$profile"
fi
sx_start_agent "$agent" "$socket" "$SX_TMP/keys" "$config"

bench_args=(--socket "$socket" --concurrency "$concurrency" --duration "$duration"
  --warmup "$warmup" --worker-start-spread-ms "$spread" --processes "$processes"
  --key gate-ed25519 --out "$SX_TMP/slo.json" --no-progress)
if [[ "$reconnect" == 1 ]]; then bench_args+=(--reconnect); fi

guardrail=()
if [[ -n "${SLO_QUEUE_WAIT_TAIL_NS:-}" || -n "${SLO_QUEUE_WAIT_TAIL_MAX_RATIO:-}" ]]; then
  guardrail=(--queue-wait-tail-ns "${SLO_QUEUE_WAIT_TAIL_NS:?set both SLO_QUEUE_WAIT_TAIL_* knobs}"
    --queue-wait-tail-max-ratio "${SLO_QUEUE_WAIT_TAIL_MAX_RATIO:?set both SLO_QUEUE_WAIT_TAIL_* knobs}")
else
  guardrail=(--queue-wait-tail-profile "$profile")
fi

check_args=(--min-rps "$min_rps" --max-p95-us "$max_p95" --max-failure-rate "$max_failure_rate")
if [[ "$agent" == secretivex ]]; then
  bench_args+=(--metrics-file "$metrics" "${guardrail[@]}")
  check_args+=(--require-queue-wait --require-fresh-metrics "${guardrail[@]}")
  if [[ -n "${SLO_MAX_QUEUE_WAIT_P99_NS:-}" ]]; then
    check_args+=(--max-queue-wait-p99-ns "$SLO_MAX_QUEUE_WAIT_P99_NS")
  fi
fi

sx_log "bench: $concurrency workers, $duration, reconnect=$reconnect, warmup=$warmup"
sx bench run "${bench_args[@]}"
if [[ -n "${SLO_OUTPUT:-}" ]]; then cp -f "$SX_TMP/slo.json" "$SLO_OUTPUT"; fi
sx_artifact "$SX_TMP/slo.json"

status=0
sx_check "$SX_TMP/slo.json" "${check_args[@]}" || status=$?
if [[ "$agent" == secretivex && "$status" -eq 0 ]]; then
  # The snapshot the gate judged must still be fresh: a stalled metrics writer fails here.
  sx client metrics "$metrics" --queue-wait-max-age-ms "$max_age" "${guardrail[@]}" >&2 ||
    status=$?
fi
if [[ "$status" -ne 0 ]]; then
  sx_log "FAIL (exit $status)"
  exit "$status"
fi
sx_log "PASS"
