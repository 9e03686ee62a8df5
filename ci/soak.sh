#!/usr/bin/env bash
# Soak: a bounded-time bench against a fresh agent while its RSS and open fds are
# sampled from /proc. Fails on failed requests, on RSS growth between the start and the
# end of the run beyond a tolerance, and on fds left open once the load stops.
#
# Knobs (defaults): AGENT (secretivex), SOAK_DURATION (30, seconds), SOAK_CONCURRENCY
# (64), SOAK_RECONNECT (1), SOAK_PROCESSES (1), SOAK_SAMPLE_INTERVAL (1, seconds),
# SOAK_MAX_RSS_GROWTH_KB (8192), SOAK_MAX_FD_GROWTH (4), SOAK_MAX_FAILURE_RATE (0),
# SOAK_OUTPUT (copy the report here), SOAK_SAMPLES_CSV (copy the samples here).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
sx_init soak
sx_require ssh-keygen

agent="${AGENT:-secretivex}"
duration="${SOAK_DURATION:-30}"
concurrency="${SOAK_CONCURRENCY:-64}"
interval="${SOAK_SAMPLE_INTERVAL:-1}"
max_rss_growth="${SOAK_MAX_RSS_GROWTH_KB:-8192}"
max_fd_growth="${SOAK_MAX_FD_GROWTH:-4}"
[[ "$duration" =~ ^[0-9]+$ ]] || sx_die "SOAK_DURATION is whole seconds, got '$duration'"

sx_keys "$SX_TMP/keys"
socket="$SX_RUN/agent.sock"
config=""
if [[ "$agent" == secretivex ]]; then
  config="$SX_TMP/agent.yaml"
  sx_config "$config" "$SX_TMP/metrics.json"
fi
sx_start_agent "$agent" "$socket" "$SX_TMP/keys" "$config"
pid="$SX_AGENT_PID"

sleep 0.5
idle_rss_before="$(sx_rss_kb "$pid")"
idle_fd_before="$(sx_fd_count "$pid")"
sx_log "idle before: rss ${idle_rss_before} kB, ${idle_fd_before} fds"

bench_args=(--socket "$socket" --concurrency "$concurrency" --duration "${duration}s"
  --processes "${SOAK_PROCESSES:-1}" --key gate-ed25519 --out "$SX_TMP/soak.json" --no-progress)
if [[ "${SOAK_RECONNECT:-1}" == 1 ]]; then bench_args+=(--reconnect); fi
sx bench run "${bench_args[@]}" >"$SX_TMP/bench.txt" 2>&1 &
bench_pid=$!
sx_on_exit "kill $bench_pid"

samples="$SX_TMP/samples.csv"
printf 'elapsed_s,rss_kb,fds\n' >"$samples"
rss=()
start=$SECONDS
while kill -0 "$bench_pid" 2>/dev/null; do
  kill -0 "$pid" 2>/dev/null || sx_die "the agent died during the soak"
  value="$(sx_rss_kb "$pid")"
  rss+=("$value")
  printf '%d,%d,%d\n' "$((SECONDS - start))" "$value" "$(sx_fd_count "$pid")" >>"$samples"
  sleep "$interval"
done
bench_status=0
wait "$bench_pid" || bench_status=$?
cat "$SX_TMP/bench.txt" >&2
[[ "$bench_status" -eq 0 ]] || sx_die "bench exited with $bench_status"

sleep 1
idle_rss_after="$(sx_rss_kb "$pid")"
idle_fd_after="$(sx_fd_count "$pid")"
sx_log "idle after: rss ${idle_rss_after} kB, ${idle_fd_after} fds (${#rss[@]} samples)"
if [[ -n "${SOAK_OUTPUT:-}" ]]; then cp -f "$SX_TMP/soak.json" "$SOAK_OUTPUT"; fi
if [[ -n "${SOAK_SAMPLES_CSV:-}" ]]; then cp -f "$samples" "$SOAK_SAMPLES_CSV"; fi
sx_artifact "$SX_TMP/soak.json" "$samples"

status=0
sx_check "$SX_TMP/soak.json" --max-failure-rate "${SOAK_MAX_FAILURE_RATE:-0}" || status=$?

# RSS growth: the highest sample of the first quarter (after the first, warm-up sample)
# against the highest of the last quarter.
n=${#rss[@]}
if ((n >= 4)); then
  quarter=$(((n - 1) / 4))
  ((quarter >= 1)) || quarter=1
  early=0
  late=0
  for ((i = 1; i <= quarter; i++)); do ((rss[i] > early)) && early=${rss[i]}; done
  for ((i = n - quarter; i < n; i++)); do ((rss[i] > late)) && late=${rss[i]}; done
  growth=$((late - early))
  sx_log "rss under load: early max ${early} kB, late max ${late} kB (growth ${growth} kB, max ${max_rss_growth})"
  if ((growth > max_rss_growth)); then
    sx_log "FAIL rss grew by ${growth} kB under steady load"
    status=3
  fi
else
  sx_log "only $n samples: RSS trend not judged (raise SOAK_DURATION)"
fi
fd_growth=$((idle_fd_after - idle_fd_before))
if ((fd_growth > max_fd_growth)); then
  sx_log "FAIL ${fd_growth} more fds open after the load than before (max ${max_fd_growth})"
  status=3
fi
if [[ "$status" -ne 0 ]]; then
  sx_agent_log_tail 30
  exit "$status"
fi
sx_log "PASS"
