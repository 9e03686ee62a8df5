#!/usr/bin/env bash
# Failure-budget trend: judge a bench report's failure rate against a budget and, when a
# previous report exists, against that report's rate. Without TREND_CURRENT it runs a
# short reconnect bench against a fresh agent to produce one.
#
# Knobs (defaults): TREND_CURRENT (run a bench), TREND_PREVIOUS (none: trend skipped),
# TREND_OUTPUT (save the current report here for the next run), TREND_BUDGET (0.01),
# TREND_MAX_INCREASE (0.005), TREND_CONCURRENCY (32), TREND_DURATION (2s), AGENT.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
sx_init trend

current="${TREND_CURRENT:-}"
if [[ -z "$current" ]]; then
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
  current="$SX_TMP/current.json"
  sx bench run --socket "$socket" --reconnect --warmup 0 \
    --concurrency "${TREND_CONCURRENCY:-32}" --duration "${TREND_DURATION:-2s}" \
    --key gate-ed25519 --out "$current" --no-progress
fi
[[ -f "$current" ]] || sx_die "no report at $current"
sx bench validate "$current" >/dev/null || sx_die "$current does not match the bench schema"

trend_args=(--budget "${TREND_BUDGET:-0.01}" --max-increase "${TREND_MAX_INCREASE:-0.005}")
previous="${TREND_PREVIOUS:-}"
if [[ -n "$previous" && -f "$previous" ]]; then
  sx bench validate "$previous" >/dev/null || sx_die "$previous does not match the bench schema"
  trend_args+=(--previous "$previous")
elif [[ -n "$previous" ]]; then
  sx_log "no previous report at $previous: judging the budget only"
fi

status=0
sx bench trend "$current" "${trend_args[@]}" || status=$?
if [[ -n "${TREND_OUTPUT:-}" ]]; then
  mkdir -p "$(dirname "$TREND_OUTPUT")"
  cp -f "$current" "$TREND_OUTPUT"
fi
sx_artifact "$current"
if [[ "$status" -ne 0 ]]; then
  sx_log "FAIL (exit $status)"
  exit "$status"
fi
sx_log "PASS"
