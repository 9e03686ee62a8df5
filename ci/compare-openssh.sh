#!/usr/bin/env bash
# Side-by-side benchmark: OpenSSH's ssh-agent and secretivex holding the same freshly
# generated keys (ssh-add into ssh-agent, --key for secretivex), the same bench against
# each, alternating runs (the order flips every round so drift hits both), then a ratio
# table of median requests/s and p99 latency, plus idle-connection memory and startup.
#
# Scenarios: ed25519, ecdsa-p256, rsa-3072 (rsa-sha2-512) with persistent connections;
# reconnect (a new connection per request); fanout-1000 (1000 reconnecting workers).
#
# Knobs (full defaults; COMPARE_SHORT=1 switches to a quick version for `make test`):
#   COMPARE_DURATION (10s | short 1s)        per run, persistent and reconnect scenarios
#   COMPARE_FANOUT_DURATION (20s | short 2s)  per run, fanout scenario
#   COMPARE_FANOUT_WORKERS (1000 | short 200)
#   COMPARE_CONCURRENCY (64)                 workers of the other scenarios
#   COMPARE_ROUNDS (3 | short 1)             runs per scenario and agent
#   COMPARE_PROCESSES (2)                    bench generator processes
#   COMPARE_SCENARIOS (all)                  comma-separated subset
#   COMPARE_IDLE_CONNECTIONS (1000 | short 200)  idle connections for the memory check
#   COMPARE_OUT (temp)                       keep reports, table and summary here
#   COMPARE_ENFORCE (0)                      exit 3 when a target ratio is missed
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
sx_init compare
sx_require ssh-keygen ssh-agent ssh-add

short="${COMPARE_SHORT:-0}"
if [[ "$short" == 1 ]]; then
  duration="${COMPARE_DURATION:-1s}"
  fanout_duration="${COMPARE_FANOUT_DURATION:-2s}"
  fanout_workers="${COMPARE_FANOUT_WORKERS:-200}"
  rounds="${COMPARE_ROUNDS:-1}"
  idle_connections="${COMPARE_IDLE_CONNECTIONS:-200}"
else
  duration="${COMPARE_DURATION:-10s}"
  fanout_duration="${COMPARE_FANOUT_DURATION:-20s}"
  fanout_workers="${COMPARE_FANOUT_WORKERS:-1000}"
  rounds="${COMPARE_ROUNDS:-3}"
  idle_connections="${COMPARE_IDLE_CONNECTIONS:-1000}"
fi
concurrency="${COMPARE_CONCURRENCY:-64}"
processes="${COMPARE_PROCESSES:-2}"
scenarios="${COMPARE_SCENARIOS:-ed25519,ecdsa-p256,rsa-3072,reconnect,fanout-1000}"
out="${COMPARE_OUT:-$SX_TMP/out}"
mkdir -p "$out/runs"
rm -f "$out"/runs/*.json

# Enough descriptors for 1000 connections on both sides.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

sx_keys "$SX_TMP/keys"

# secretivex: its own config (metrics on, listen backlog for fan-out, no sign timeout).
config="$SX_TMP/agent.yaml"
sx_config "$config" "$SX_TMP/metrics.json" balanced \
  "  listen_backlog: 4096
  max_connections: 8192"
sx_metrics="$SX_TMP/metrics.json"

# Startup time to a listening socket (polled every 10 ms), secretivex then OpenSSH.
startup_ms() {
  local kind="$1" socket="$2"
  local t0 t1
  t0="$(date +%s%N)"
  if [[ "$kind" == secretivex ]]; then
    env -u SECRETIVEX_CONFIG HOME="$SX_TMP/home-startup" \
      "$SX_BIN" agent --socket "$socket" --config "$config" --key "$SX_TMP/keys/id_ed25519" \
      >"$SX_TMP/startup-$kind.log" 2>&1 &
  else
    ssh-agent -D -a "$socket" >"$SX_TMP/startup-$kind.log" 2>&1 &
  fi
  local pid=$!
  local i
  for ((i = 0; i < 3000; i++)); do
    [[ -S "$socket" ]] && break
    sleep 0.01
  done
  t1="$(date +%s%N)"
  sx_stop_agent "$pid"
  printf '%d\n' "$(((t1 - t0) / 1000000))"
}
mkdir -p "$SX_TMP/home-startup"
startup_sx="$(startup_ms secretivex "$SX_RUN/startup-sx.sock")"
startup_ossh="$(startup_ms openssh "$SX_RUN/startup-ossh.sock")"

sx_start_agent openssh "$SX_RUN/openssh.sock" "$SX_TMP/keys"
ossh_pid="$SX_AGENT_PID"
sx_start_agent secretivex "$SX_RUN/secretivex.sock" "$SX_TMP/keys" "$config"
sx_pid="$SX_AGENT_PID"
declare -A sockets=([openssh]="$SX_RUN/openssh.sock" [secretivex]="$SX_RUN/secretivex.sock")

# scenario -> "key flags mode workers duration"
declare -A shape=(
  [ed25519]="gate-ed25519 ssh-rsa persistent $concurrency $duration"
  [ecdsa-p256]="gate-ecdsa-p256 ssh-rsa persistent $concurrency $duration"
  [rsa-3072]="gate-rsa-3072 rsa-sha2-512 persistent $concurrency $duration"
  [reconnect]="gate-ed25519 ssh-rsa reconnect $concurrency $duration"
  [fanout-1000]="gate-ed25519 ssh-rsa reconnect $fanout_workers $fanout_duration"
)

run_one() {
  local scenario="$1" agent="$2" round="$3"
  local key flags mode workers dur
  read -r key flags mode workers dur <<<"${shape[$scenario]}"
  local args=(--socket "${sockets[$agent]}" --key "$key" --flags "$flags"
    --concurrency "$workers" --duration "$dur" --warmup 0 --processes "$processes"
    --label "$scenario/$agent/$round" --out "$out/runs/${scenario}__${agent}__${round}.json"
    --no-progress)
  if [[ "$mode" == reconnect ]]; then args+=(--reconnect); fi
  if [[ "$agent" == secretivex ]]; then args+=(--metrics-file "$sx_metrics" --metrics-wait-ms 1000); fi
  sx_log "round $round: $scenario against $agent ($workers workers, $mode, $dur)"
  sx bench run "${args[@]}" >"$SX_TMP/last-run.txt" 2>&1 || {
    cat "$SX_TMP/last-run.txt" >&2
    sx_die "bench of $scenario against $agent failed"
  }
  grep -E '^(attempted|rps|latency)' "$SX_TMP/last-run.txt" | sed 's/^/    /' >&2
}

IFS=, read -r -a wanted <<<"$scenarios"
for scenario in "${wanted[@]}"; do
  [[ -n "${shape[$scenario]:-}" ]] || sx_die "unknown scenario '$scenario'"
done
for ((round = 1; round <= rounds; round++)); do
  for scenario in "${wanted[@]}"; do
    if ((round % 2)); then order=(openssh secretivex); else order=(secretivex openssh); fi
    for agent in "${order[@]}"; do
      run_one "$scenario" "$agent" "$round"
    done
  done
done

# Idle connections: RSS of each agent while both hold the same number open.
idle_rss() {
  local agent="$1" pid="$2"
  local ready="$SX_TMP/idle-$agent.ready"
  rm -f "$ready"
  sx bench idle --socket "${sockets[$agent]}" --connections "$idle_connections" --hold 3s \
    --ready-file "$ready" >"$SX_TMP/idle-$agent.txt" 2>&1 &
  local idle_pid=$!
  local i
  for ((i = 0; i < 600; i++)); do
    [[ -f "$ready" ]] && break
    sleep 0.05
  done
  sleep 0.5
  local rss
  rss="$(sx_rss_kb "$pid")"
  wait "$idle_pid" || sx_log "$agent: $(cat "$SX_TMP/idle-$agent.txt")"
  printf '%d\n' "$rss"
}
idle_ossh="$(idle_rss openssh "$ossh_pid")"
idle_sx="$(idle_rss secretivex "$sx_pid")"

targets="ed25519=5,ecdsa-p256=3,rsa-3072=1.2,fanout-1000=3"
compare_args=("$out/runs" --baseline openssh --candidate secretivex --targets "$targets"
  --p99-targets "ed25519=0.2")
sx bench compare "${compare_args[@]}" --json >"$out/compare.json"
{
  printf '## secretivex vs OpenSSH ssh-agent (%s)\n\n' "$(date -u +%Y-%m-%dT%H:%MZ)"
  printf 'Host: %s CPUs, %s; runs per scenario and agent: %s; persistent/reconnect runs %s, fan-out %s with %s workers; generator processes: %s.\n\n' \
    "$(nproc)" "$(uname -sr)" "$rounds" "$duration" "$fanout_duration" "$fanout_workers" "$processes"
  sx bench compare "${compare_args[@]}" --plot-dir "$out"   # <scenario>.latency.svg beside compare.md
  printf '\n| extra | openssh | secretivex | target |\n| --- | --- | --- | --- |\n'
  printf '| RSS with %s idle connections | %d KiB | %d KiB | secretivex <= 65536 KiB |\n' \
    "$idle_connections" "$idle_ossh" "$idle_sx"
  printf '| startup to a listening socket | %d ms | %d ms | secretivex <= 500 ms |\n' \
    "$startup_ossh" "$startup_sx"
} >"$out/table.md"
cat "$out/table.md"
sx_artifact "$out/table.md" "$out/compare.json"

if [[ "${COMPARE_ENFORCE:-0}" == 1 ]]; then
  sx bench compare "${compare_args[@]}" --enforce --no-plots >/dev/null || {
    sx_log "FAIL: a target ratio was missed"
    exit 3
  }
fi
sx_log "done (reports in $out)"
