#!/usr/bin/env bash
# Side-by-side benchmark: OpenSSH's ssh-agent, a minimal Go agent on
# golang.org/x/crypto/ssh/agent (ci/go-agent, built offline from Debian packages when
# they are installed; skipped with a note otherwise) and secretivex, all holding the
# same freshly generated keys (ssh-add into the others, --key for secretivex), the same
# bench against each, in alternating rounds (the order rotates every round so drift
# hits everyone), then ratio tables (secretivex vs each) of median requests/s and p99
# latency with the per-round ratio spread, plus idle RSS, start-up and the host load.
#
# secretivex runs its default profile (balanced) with no listen-backlog override, so
# the fan-out rows show what a default install does. Backlog-full connects count as
# `connect_eagain` failures (no polite retrying unless COMPARE_CONNECT_RETRY=1).
#
# Scenarios: ed25519 (64 connections), ecdsa-p256 and rsa-3072 (rsa-sha2-512) with 16
# persistent connections; reconnect (256 clients, a new connection per request);
# fanout-1000 (1000 reconnecting clients); ed25519-under-rsa (Ed25519 p99 at 4
# connections while 16 connections sign with RSA-3072).
#
# Knobs (full defaults; COMPARE_SHORT=1 switches to a quick version for `make test`):
#   COMPARE_DURATION (10s | short 1s)        per run, persistent and reconnect scenarios
#   COMPARE_FANOUT_DURATION (20s | short 2s)  per run, fanout scenario
#   COMPARE_FANOUT_WORKERS (1000 | short 200)
#   COMPARE_RECONNECT_WORKERS (256)
#   COMPARE_CONCURRENCY (64)                 workers of the Ed25519 scenario
#   COMPARE_SLOW_CONCURRENCY (16)            workers of the P-256 and RSA scenarios
#   COMPARE_ROUNDS (3 | short 1)             runs per scenario and agent
#   COMPARE_PROCESSES (2)                    bench generator processes
#   COMPARE_SCENARIOS (all)                  comma-separated subset
#   COMPARE_AGENTS (openssh,go,secretivex)   which agents (go is dropped when it cannot be built)
#   COMPARE_IDLE_CONNECTIONS (1000 | short 200)  idle connections for the memory check
#   COMPARE_STARTUP_TRIES (5 | short 1)      start-up measurements per agent (median)
#   COMPARE_CONNECT_RETRY (0)                1 = polite retrying on EAGAIN (labelled in reports)
#   COMPARE_REF_SRC (unset)                  a secretivex source tree to add as agent
#                                            "secretivex-ref" (A/B of two versions)
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
  startup_tries="${COMPARE_STARTUP_TRIES:-1}"
else
  duration="${COMPARE_DURATION:-10s}"
  fanout_duration="${COMPARE_FANOUT_DURATION:-20s}"
  fanout_workers="${COMPARE_FANOUT_WORKERS:-1000}"
  rounds="${COMPARE_ROUNDS:-3}"
  idle_connections="${COMPARE_IDLE_CONNECTIONS:-1000}"
  startup_tries="${COMPARE_STARTUP_TRIES:-5}"
fi
concurrency="${COMPARE_CONCURRENCY:-64}"
slow_concurrency="${COMPARE_SLOW_CONCURRENCY:-16}"
reconnect_workers="${COMPARE_RECONNECT_WORKERS:-256}"
processes="${COMPARE_PROCESSES:-2}"
scenarios="${COMPARE_SCENARIOS:-ed25519,ecdsa-p256,rsa-3072,reconnect,fanout-1000,ed25519-under-rsa}"
IFS=, read -r -a agents <<<"${COMPARE_AGENTS:-openssh,go,secretivex}"
retry_args=()
if [[ "${COMPARE_CONNECT_RETRY:-0}" == 1 ]]; then retry_args=(--connect-retry); fi
notes=()

# The Go agent: built offline from Debian packages, or skipped with the reason.
if [[ " ${agents[*]} " == *" go "* ]]; then
  if SX_GO_AGENT="$(bash "$SX_ROOT/ci/build-go-agent.sh" 2>"$SX_TMP/go-build.txt")"; then
    export SX_GO_AGENT
  else
    notes+=("Go x/crypto agent skipped: $(tail -n 1 "$SX_TMP/go-build.txt")")
    sx_log "${notes[-1]}"
    kept=()
    for a in "${agents[@]}"; do [[ "$a" == go ]] || kept+=("$a"); done
    agents=("${kept[@]}")
  fi
fi
if [[ -n "${COMPARE_REF_SRC:-}" ]]; then agents=(secretivex-ref "${agents[@]}"); fi
out="${COMPARE_OUT:-$SX_TMP/out}"
mkdir -p "$out/runs"
rm -f "$out"/runs/*.json

# Enough descriptors for 1000 connections on both sides.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

sx_keys "$SX_TMP/keys"

# secretivex: the default profile with metrics on and no sign timeout; the listen
# backlog and connection limit are the profile's (the backlog defaults to somaxconn).
config="$SX_TMP/agent.yaml"
sx_config "$config" "$SX_TMP/metrics.json" balanced
sx_metrics="$SX_TMP/metrics.json"

# Start-up: median of a few alternating tries per agent (polled every 5 ms), and the
# import baseline the targets are stated against: Python importing cryptography's
# Ed25519 module and anyio, and `secretivex --version`.
sx_python="$(dirname "$SX_BIN")/python"
[[ -x "$sx_python" ]] || sx_python=python3
# Measured as installed: pip, Nix and the image compile bytecode at install time, while
# an editable checkout under PYTHONDONTWRITEBYTECODE=1 would recompile every start.
for src in "$SX_ROOT" "${COMPARE_REF_SRC:-}"; do
  if [[ -n "$src" && -d "$src/secretivex" ]]; then
    "$sx_python" -m compileall -q "$src/secretivex" >/dev/null 2>&1 || true
  fi
done
now_ns() { date +%s%N; }
startup_once() {
  local kind="$1" socket="$SX_RUN/startup-$1.sock"
  local t0 t1 pid i
  rm -f "$socket"
  t0="$(now_ns)"
  case "$kind" in
    secretivex | secretivex-ref)
      (
        unset SECRETIVEX_CONFIG
        # shellcheck disable=SC2031 # the subshell's own HOME, on purpose
        export HOME="$SX_TMP/home-startup"
        sx_exec_kind "$kind" agent --socket "$socket" --config "$config" \
          --key "$SX_TMP/keys/id_ed25519"
      ) >"$SX_TMP/startup-$kind.log" 2>&1 &
      ;;
    openssh) ssh-agent -D -a "$socket" >"$SX_TMP/startup-$kind.log" 2>&1 & ;;
    go) "$SX_GO_AGENT" "$socket" >"$SX_TMP/startup-$kind.log" 2>&1 & ;;
  esac
  pid=$!
  for ((i = 0; i < 6000; i++)); do
    [[ -S "$socket" ]] && break
    sleep 0.005
  done
  t1="$(now_ns)"
  sx_stop_agent "$pid"
  printf '%d\n' "$(((t1 - t0) / 1000000))"
}
command_ms() {
  local t0 t1
  t0="$(now_ns)"
  "$@" >/dev/null 2>&1
  t1="$(now_ns)"
  printf '%d\n' "$(((t1 - t0) / 1000000))"
}
median() { sort -n | awk '{v[NR]=$1} END {print (NR ? v[int((NR + 1) / 2)] : 0)}'; }
mkdir -p "$SX_TMP/home-startup"
declare -A startup_runs=()
import_runs="" version_runs=""
for ((try = 1; try <= startup_tries; try++)); do
  import_runs+="$(command_ms "$sx_python" -c 'import cryptography.hazmat.primitives.asymmetric.ed25519, anyio') "
  version_runs+="$(command_ms "$SX_BIN" --version) "
  for agent in "${agents[@]}"; do
    startup_runs[$agent]+="$(startup_once "$agent") "
  done
done
import_ms="$(tr ' ' '\n' <<<"$import_runs" | grep . | median)"
version_ms="$(tr ' ' '\n' <<<"$version_runs" | grep . | median)"
declare -A startup=()
for agent in "${agents[@]}"; do
  startup[$agent]="$(tr ' ' '\n' <<<"${startup_runs[$agent]}" | grep . | median)"
done

declare -A sockets=() pids=()
for agent in "${agents[@]}"; do
  sockets[$agent]="$SX_RUN/$agent.sock"
  if [[ "$agent" == secretivex* ]]; then
    sx_start_agent "$agent" "${sockets[$agent]}" "$SX_TMP/keys" "$config"
  else
    sx_start_agent "$agent" "${sockets[$agent]}" "$SX_TMP/keys"
  fi
  pids[$agent]="$SX_AGENT_PID"
done

# Agent CPU per run (/proc/PID/stat utime + stime): CPU per answered request and the
# cores the agent used (CPU / wall time), so a ratio can be read as "less CPU per
# request" or "more cores". scenario/agent -> space-separated values, one per round.
clock_ticks="$(getconf CLK_TCK)"
declare -A cpu_us=() cpu_cores=()
cpu_ticks() {
  local stat
  stat="$(<"/proc/$1/stat")"
  # shellcheck disable=SC2086 # split the fields after the command name on purpose
  set -- ${stat##*) }
  printf '%d\n' "$((${12} + ${13}))"
}

# scenario -> "key flags mode workers duration"
declare -A shape=(
  [ed25519]="gate-ed25519 ssh-rsa persistent $concurrency $duration"
  [ecdsa-p256]="gate-ecdsa-p256 ssh-rsa persistent $slow_concurrency $duration"
  [rsa-3072]="gate-rsa-3072 rsa-sha2-512 persistent $slow_concurrency $duration"
  [reconnect]="gate-ed25519 ssh-rsa reconnect $reconnect_workers $duration"
  [fanout-1000]="gate-ed25519 ssh-rsa reconnect $fanout_workers $fanout_duration"
  [ed25519-under-rsa]="gate-ed25519 ssh-rsa persistent 4 $duration"
)

bench_args() {
  local agent="$1" key="$2" flags="$3" mode="$4" workers="$5" dur="$6"
  local args=(--socket "${sockets[$agent]}" --key "$key" --flags "$flags"
    --concurrency "$workers" --duration "$dur" --warmup 0 --no-progress "${retry_args[@]}")
  if [[ "$mode" == reconnect ]]; then args+=(--reconnect); fi
  printf '%s\n' "${args[@]}"
}

run_one() {
  local scenario="$1" agent="$2" round="$3"
  local key flags mode workers dur
  read -r key flags mode workers dur <<<"${shape[$scenario]}"
  local args
  mapfile -t args < <(bench_args "$agent" "$key" "$flags" "$mode" "$workers" "$dur")
  args+=(--processes "$processes" --label "$scenario/$agent/$round"
    --out "$out/runs/${scenario}__${agent}__${round}.json")
  if [[ "$agent" == secretivex ]]; then args+=(--metrics-file "$sx_metrics" --metrics-wait-ms 1000); fi
  local load_pid=""
  if [[ "$scenario" == ed25519-under-rsa ]]; then
    # The RSA load starts first and outlasts the measured Ed25519 run.
    local load_args
    mapfile -t load_args < <(bench_args "$agent" gate-rsa-3072 rsa-sha2-512 persistent \
      "$slow_concurrency" "$(( ${dur%s} + 2 ))s")
    sx bench run "${load_args[@]}" --processes 1 >"$SX_TMP/load-run.txt" 2>&1 &
    load_pid=$!
    sleep 0.7
  fi
  sx_log "round $round: $scenario against $agent ($workers workers, $mode, $dur, load $(cut -d' ' -f1 /proc/loadavg))"
  local ticks0 ticks1
  ticks0="$(cpu_ticks "${pids[$agent]}")"
  sx bench run "${args[@]}" >"$SX_TMP/last-run.txt" 2>&1 || {
    cat "$SX_TMP/last-run.txt" >&2
    sx_die "bench of $scenario against $agent failed"
  }
  ticks1="$(cpu_ticks "${pids[$agent]}")"
  if [[ -n "$load_pid" ]]; then wait "$load_pid" || true; fi
  grep -E '^(attempted|rps|latency)' "$SX_TMP/last-run.txt" | sed 's/^/    /' >&2
  if [[ -z "$load_pid" ]]; then  # with the RSA load running, the CPU is not this run's
    local ok elapsed_ms
    ok="$(grep -oP '^attempted [0-9,]+ +ok \K[0-9,]+' "$SX_TMP/last-run.txt" | tr -d ,)"
    elapsed_ms="$(grep -oP 'elapsed \K[0-9,]+' "$SX_TMP/last-run.txt" | head -1 | tr -d ,)"
    if [[ "${ok:-0}" -gt 0 && "${elapsed_ms:-0}" -gt 0 ]]; then
      cpu_us[$scenario/$agent]+="$(awk -v t=$((ticks1 - ticks0)) -v hz="$clock_ticks" -v n="$ok" \
        'BEGIN {printf "%.1f", t / hz * 1e6 / n}') "
      cpu_cores[$scenario/$agent]+="$(awk -v t=$((ticks1 - ticks0)) -v hz="$clock_ticks" \
        -v ms="$elapsed_ms" 'BEGIN {printf "%.2f", t / hz / (ms / 1000)}') "
    fi
  fi
}

IFS=, read -r -a wanted <<<"$scenarios"
for scenario in "${wanted[@]}"; do
  [[ -n "${shape[$scenario]:-}" ]] || sx_die "unknown scenario '$scenario'"
done
loads=()
for ((round = 1; round <= rounds; round++)); do
  loads+=("$(cut -d' ' -f1-3 /proc/loadavg)")
  for scenario in "${wanted[@]}"; do
    # Rotate the order every round (and per scenario) so drift hits every agent.
    n=${#agents[@]}
    order=()
    for ((k = 0; k < n; k++)); do order+=("${agents[$(((k + round) % n))]}"); done
    for agent in "${order[@]}"; do
      run_one "$scenario" "$agent" "$round"
    done
  done
done
loads+=("$(cut -d' ' -f1-3 /proc/loadavg)")

# Idle connections: RSS of each agent while it holds the same number open, and at rest.
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
# At-rest RSS from fresh agents (the bench agents above have served heavy load).
# Listing from a shell against each fresh agent (`ssh-add -l`, what scripts and users
# run), and `secretivex client list` against secretivex: the CLI's own start.
declare -A rest=() idle=() listing=()
client_list_ms=0
for agent in "${agents[@]}"; do
  socket="$SX_RUN/rest-$agent.sock"
  if [[ "$agent" == secretivex* ]]; then
    sx_start_agent "$agent" "$socket" "$SX_TMP/keys" "$config"
  else
    sx_start_agent "$agent" "$socket" "$SX_TMP/keys"
  fi
  sleep 1
  rest[$agent]="$(sx_rss_kb "$SX_AGENT_PID")"
  list_runs="" client_runs=""
  for ((try = 1; try <= startup_tries; try++)); do
    list_runs+="$(SSH_AUTH_SOCK="$socket" command_ms ssh-add -l) "
    if [[ "$agent" == secretivex ]]; then
      client_runs+="$(command_ms "$SX_BIN" client list --socket "$socket") "
    fi
  done
  listing[$agent]="$(tr ' ' '\n' <<<"$list_runs" | grep . | median)"
  if [[ -n "$client_runs" ]]; then
    client_list_ms="$(tr ' ' '\n' <<<"$client_runs" | grep . | median)"
  fi
  sockets[$agent]="$socket"
  idle[$agent]="$(idle_rss "$agent" "$SX_AGENT_PID")"
  sx_stop_agent "$SX_AGENT_PID"
done

# This host's signing ceiling (in-process signatures/s, one thread and one per CPU):
# what each agent's crypto library can do before any protocol work, so every ratio
# above can be read against it.
ceiling_algorithms="ed25519,ecdsa-p256,rsa-3072"
if [[ "$short" == 1 ]]; then ceiling_args=(--seconds 0.2 --rounds 1); else ceiling_args=(--seconds 0.5 --rounds 3); fi
sx bench ceiling --algorithms "$ceiling_algorithms" "${ceiling_args[@]}" >"$SX_TMP/ceiling.md" 2>/dev/null ||
  echo "(secretivex bench ceiling failed)" >"$SX_TMP/ceiling.md"
go_ceiling=""
if [[ " ${agents[*]} " == *" go "* ]]; then
  go_ceiling="$("$SX_GO_AGENT" -ceiling "${ceiling_args[1]}" 2>&1)" || go_ceiling=""
fi

ossh_targets="ed25519=8,ecdsa-p256=5,rsa-3072=2.5,reconnect=1,fanout-1000=1"
go_targets="ed25519=1,ecdsa-p256=1,rsa-3072=1,reconnect=1,fanout-1000=1"
baselines=()
for agent in "${agents[@]}"; do
  case "$agent" in
    openssh) baselines+=("openssh:$ossh_targets") ;;
    go) baselines+=("go:$go_targets") ;;
    secretivex-ref) baselines+=("secretivex-ref:") ;;
  esac
done
compare_json=()
{
  printf '## secretivex vs other agents (%s)\n\n' "$(date -u +%Y-%m-%dT%H:%MZ)"
  printf 'Host: %s CPUs, %s; runs per scenario and agent: %s; persistent/reconnect runs %s, fan-out %s with %s workers; generator processes: %s; secretivex profile: balanced (listen backlog: default).\n\n' \
    "$(nproc)" "$(uname -sr)" "$rounds" "$duration" "$fanout_duration" "$fanout_workers" "$processes"
  printf 'Load average (1/5/15 min) at the start of each round and at the end: %s.\n\n' "$(IFS=';'; printf '%s' "${loads[*]}" | sed 's/;/; /g')"
  if [[ "${COMPARE_CONNECT_RETRY:-0}" == 1 ]]; then
    printf '**Polite connect retrying was on**: backlog-full connects were retried, so fan-out rows measure a ceiling, not what clients see.\n\n'
  fi
  for note in "${notes[@]}"; do printf '%s\n\n' "$note"; done
  for entry in "${baselines[@]}"; do
    base="${entry%%:*}" targets="${entry#*:}"
    printf '### secretivex vs %s\n\n' "$base"
    args=("$out/runs" --baseline "$base" --candidate secretivex)
    if [[ -n "$targets" ]]; then args+=(--targets "$targets" --p99-targets "ed25519-under-rsa=1"); fi
    sx bench compare "${args[@]}" --json >"$out/compare-$base.json"
    compare_json+=("$out/compare-$base.json")
    sx bench compare "${args[@]}" --plot-dir "$out"
    printf '\n\n'
  done
  # shellcheck disable=SC2016 # backquotes are Markdown
  printf '### Agent CPU per request (same runs)\n\nThe agent'"'"'s CPU time (`/proc/PID/stat`) per answered request, and the cores it used (CPU time / wall time), medians over the rounds; the load generator runs on the same host. Not measured under the RSA load.\n\n| scenario |'
  for agent in "${agents[@]}"; do printf ' %s |' "$agent"; done
  printf '\n| --- |'
  for agent in "${agents[@]}"; do printf ' --- |'; done
  printf '\n'
  for scenario in "${wanted[@]}"; do
    [[ "$scenario" == ed25519-under-rsa ]] && continue
    printf '| %s |' "$scenario"
    for agent in "${agents[@]}"; do
      if [[ -n "${cpu_us[$scenario/$agent]:-}" ]]; then
        printf ' %s us (%s cores) |' \
          "$(tr ' ' '\n' <<<"${cpu_us[$scenario/$agent]}" | grep . | median)" \
          "$(tr ' ' '\n' <<<"${cpu_cores[$scenario/$agent]}" | grep . | median)"
      else
        printf ' - |'
      fi
    done
    printf '\n'
  done
  printf '\n'
  printf '| extra |'
  for agent in "${agents[@]}"; do printf ' %s |' "$agent"; done
  printf ' target |\n| --- |'
  for agent in "${agents[@]}"; do printf ' --- |'; done
  printf ' --- |\n| idle RSS (fresh agent) |'
  for agent in "${agents[@]}"; do printf ' %d KiB |' "${rest[$agent]}"; done
  printf ' secretivex <= 40960 KiB |\n| RSS with %s idle connections |' "$idle_connections"
  for agent in "${agents[@]}"; do printf ' %d KiB |' "${idle[$agent]}"; done
  printf ' secretivex <= 49152 KiB (1000 connections) |\n| start-up to a listening socket (median of %s) |' "$startup_tries"
  for agent in "${agents[@]}"; do printf ' %d ms |' "${startup[$agent]}"; done
  # shellcheck disable=SC2016 # backquotes are Markdown
  printf ' secretivex <= 3x import baseline (%d ms) |\n| `ssh-add -l` against it (median of %s) |' "$((3 * import_ms))" "$startup_tries"
  for agent in "${agents[@]}"; do printf ' %d ms |' "${listing[$agent]}"; done
  printf ' |\n\n'
  # shellcheck disable=SC2016 # backquotes are Markdown
  printf '`secretivex client list` against secretivex (median of %s): %d ms (%s x the import baseline).\n\n' \
    "$startup_tries" "$client_list_ms" "$(awk -v a="$client_list_ms" -v b="$import_ms" 'BEGIN {printf "%.2f", b ? a / b : 0}')"
  # shellcheck disable=SC2016 # backquotes are Markdown
  printf 'Import baseline (`python -c "import cryptography.hazmat.primitives.asymmetric.ed25519, anyio"`, median): %d ms; `secretivex --version`: %d ms (%s x, target <= 1.5 x); agent start-up: %s x (target <= 3 x).\n' \
    "$import_ms" "$version_ms" "$(awk -v a="$version_ms" -v b="$import_ms" 'BEGIN {printf "%.2f", b ? a / b : 0}')" \
    "$(awk -v a="${startup[secretivex]:-0}" -v b="$import_ms" 'BEGIN {printf "%.2f", b ? a / b : 0}')"
  # shellcheck disable=SC2016 # backquotes are Markdown
  printf '\n### Signing ceiling of this host (same run)\n\nsecretivex (`secretivex bench ceiling`: cryptography/OpenSSL, Ed25519 through libsodium when PyNaCl is installed):\n\n'
  grep '^|' "$SX_TMP/ceiling.md" || cat "$SX_TMP/ceiling.md"
  if [[ -n "$go_ceiling" ]]; then
    # shellcheck disable=SC2016 # backquotes are Markdown
    printf '\nGo (`go-agent -ceiling`: x/crypto/ssh signers), signatures/s:\n\n| algorithm | 1 goroutine | %s goroutines |\n| --- | --- | --- |\n' "$(nproc)"
    awk 'function c(n, s, t) { s = sprintf("%d", n); t = ""; while (length(s) > 3) { t = "," substr(s, length(s) - 2) t; s = substr(s, 1, length(s) - 3) }; return s t }
      {printf "| %s | %s | %s |\n", $1, c($2), c($3)}' <<<"$go_ceiling"
  fi
} >"$out/table.md"
cat "$out/table.md"
sx_artifact "$out/table.md" "${compare_json[@]}"

if [[ "${COMPARE_ENFORCE:-0}" == 1 ]]; then
  for entry in "${baselines[@]}"; do
    base="${entry%%:*}" targets="${entry#*:}"
    [[ -n "$targets" ]] || continue
    sx bench compare "$out/runs" --baseline "$base" --candidate secretivex --targets "$targets" \
      --enforce --no-plots >/dev/null || {
      sx_log "FAIL: a target ratio against $base was missed"
      exit 3
    }
  done
fi
sx_log "done (reports in $out)"
