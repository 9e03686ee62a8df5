# shellcheck shell=bash
# Shared helpers for the gate scripts (ci/gate-*.sh, ci/soak.sh, ci/compare-openssh.sh).
#
# Source it after `set -euo pipefail`. It gives each gate: a private temp directory,
# cleanup on exit (agents stopped, temp removed), generated test keys, an agent of
# either kind (secretivex or OpenSSH's ssh-agent) holding them, a readiness wait with
# log tails on failure, and /proc sampling for soak runs.
#
# Environment knobs shared by every gate:
#   SECRETIVEX               secretivex executable (default: .venv/bin/secretivex, then PATH)
#   AGENT                    agent under test: secretivex (default) or openssh
#   AGENT_STARTUP_TIMEOUT_MS readiness timeout for a started agent (default 30000)
#   GATE_KEEP_TMP=1          keep the temp directory for inspection
#   GATE_ARTIFACTS           directory to copy reports and logs into (optional)

SX_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SX_CLEANUP=()
SX_AGENT_PID=""
SX_AGENT_LOG=""
SX_TMP=""
SX_RUN=""

sx_log() { printf '[%s] %s\n' "${SX_GATE:-gate}" "$*" >&2; }

sx_die() {
  sx_log "FAIL: $*"
  exit 1
}

sx_bin() {
  if [[ -n "${SECRETIVEX:-}" ]]; then
    printf '%s\n' "$SECRETIVEX"
  elif [[ -x "$SX_ROOT/.venv/bin/secretivex" ]]; then
    printf '%s\n' "$SX_ROOT/.venv/bin/secretivex"
  elif command -v secretivex >/dev/null 2>&1; then
    command -v secretivex
  else
    sx_die "secretivex not found: create the venv (make venv) or set SECRETIVEX"
  fi
}

# Run the secretivex CLI.
sx() { "$SX_BIN" "$@"; }

sx_require() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || sx_die "$tool is required (see ci/install-system-deps.sh)"
  done
}

sx_on_exit() { SX_CLEANUP+=("$*"); }

sx_cleanup() {
  local status=$?
  local i
  for ((i = ${#SX_CLEANUP[@]} - 1; i >= 0; i--)); do
    eval "${SX_CLEANUP[$i]}" >/dev/null 2>&1 || true
  done
  if [[ -n "$SX_RUN" && -d "$SX_RUN" ]]; then rm -rf "$SX_RUN"; fi
  if [[ -n "$SX_TMP" && -d "$SX_TMP" ]]; then
    if [[ "${GATE_KEEP_TMP:-0}" == 1 ]]; then
      sx_log "kept $SX_TMP"
    else
      rm -rf "$SX_TMP"
    fi
  fi
  exit "$status"
}

# sx_init NAME: set up the gate (temp dirs, exit trap, the CLI). SX_TMP holds keys,
# configs and reports; SX_RUN, always under /tmp, holds sockets (whose paths must stay
# under ~100 bytes however long TMPDIR is).
sx_init() {
  SX_GATE="$1"
  SX_BIN="$(sx_bin)"
  trap sx_cleanup EXIT
  SX_TMP="$(mktemp -d "${TMPDIR:-/tmp}/secretivex-${SX_GATE}.XXXXXX")"
  SX_RUN="$(mktemp -d "/tmp/sx-${SX_GATE}.XXXXXX")"
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# sx_keys DIR: generate the test keys (ed25519, ecdsa-p256, rsa-3072) into DIR.
sx_keys() {
  local dir="$1"
  mkdir -p "$dir"
  chmod 700 "$dir"
  ssh-keygen -q -t ed25519 -N '' -C gate-ed25519 -f "$dir/id_ed25519"
  ssh-keygen -q -t ecdsa -b 256 -N '' -C gate-ecdsa-p256 -f "$dir/id_ecdsa"
  ssh-keygen -q -t rsa -b 3072 -N '' -C gate-rsa-3072 -f "$dir/id_rsa"
}

# sx_config FILE METRICS_PATH [PROFILE] [EXTRA_AGENT_YAML]: a gate agent config.
# Synthetic gates keep sign_timeout_ms at 0: a production timeout would turn queue
# pressure into failures and hide the queue-wait signal the gates check.
sx_config() {
  local file="$1" metrics="$2" profile="${3:-balanced}" extra="${4:-}"
  {
    printf 'agent:\n  profile: %s\n  sign_timeout_ms: 0\n' "$profile"
    if [[ -n "$extra" ]]; then printf '%s\n' "$extra"; fi
    printf 'metrics:\n  path: %s\n  interval_ms: %s\n' "$metrics" "${METRICS_INTERVAL_MS:-250}"
  } >"$file"
}

# sx_exec_kind KIND ARGS...: run the secretivex CLI of KIND: "secretivex" (this tree's
# venv) or "secretivex-ref" (the source tree in COMPARE_REF_SRC on the same Python, for
# A/B runs of two versions). Call it in a subshell: it execs.
sx_exec_kind() {
  local kind="$1"
  shift
  if [[ "$kind" == secretivex-ref ]]; then
    # -P: the working directory (maybe this tree) must not shadow the reference.
    PYTHONPATH="${COMPARE_REF_SRC:?}" exec "$(dirname "$SX_BIN")/python" -P -m secretivex "$@"
  fi
  exec "$SX_BIN" "$@"
}

# sx_start_agent KIND SOCKET KEYDIR [CONFIG]: start an agent holding the keys in KEYDIR.
# Sets SX_AGENT_PID and SX_AGENT_LOG; the agent is stopped on exit.
sx_start_agent() {
  local kind="$1" socket="$2" keydir="$3" config="${4:-}"
  local home="$SX_TMP/home-$kind"
  mkdir -p "$home" "$(dirname "$socket")"
  SX_AGENT_LOG="$SX_TMP/agent-$kind-$(basename "$socket").log"
  case "$kind" in
    secretivex | secretivex-ref)
      local args=(agent --socket "$socket")
      local key
      for key in "$keydir"/id_*; do
        [[ "$key" == *.pub ]] && continue
        args+=(--key "$key")
      done
      if [[ -n "$config" ]]; then args+=(--config "$config"); fi
      (
        unset SECRETIVEX_CONFIG
        export HOME="$home" XDG_CONFIG_HOME="$home/.config"
        sx_exec_kind "$kind" "${args[@]}"
      ) >"$SX_AGENT_LOG" 2>&1 &
      SX_AGENT_PID=$!
      ;;
    openssh)
      sx_require ssh-agent ssh-add
      ssh-agent -D -a "$socket" >"$SX_AGENT_LOG" 2>&1 &
      SX_AGENT_PID=$!
      ;;
    go)
      # The minimal agent on golang.org/x/crypto/ssh/agent (ci/build-go-agent.sh).
      [[ -x "${SX_GO_AGENT:-}" ]] || sx_die "no Go agent binary (run ci/build-go-agent.sh)"
      "$SX_GO_AGENT" "$socket" >"$SX_AGENT_LOG" 2>&1 &
      SX_AGENT_PID=$!
      ;;
    *)
      sx_die "unknown agent kind '$kind' (secretivex, openssh or go)"
      ;;
  esac
  sx_on_exit "sx_stop_agent $SX_AGENT_PID"
  sx_wait_ready "$socket" "$SX_AGENT_PID" "$SX_AGENT_LOG"
  if [[ "$kind" == openssh || "$kind" == go ]]; then
    SSH_AUTH_SOCK="$socket" ssh-add -q "$keydir/id_ed25519" "$keydir/id_ecdsa" "$keydir/id_rsa" \
      2>>"$SX_AGENT_LOG" || sx_die "ssh-add into the $kind agent failed"
  fi
}

# sx_wait_ready SOCKET PID LOG: wait for the agent to answer; fail with its log tail.
sx_wait_ready() {
  local socket="$1" pid="$2" log="$3"
  local timeout="${AGENT_STARTUP_TIMEOUT_MS:-30000}"
  local deadline=$((SECONDS + timeout / 1000 + 1))
  while ((SECONDS <= deadline)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      sx_log "agent (pid $pid) exited during startup; log tail:"
      tail -n 40 "$log" >&2 || true
      sx_die "agent failed to start"
    fi
    if "$SX_BIN" client wait-ready --socket "$socket" --timeout-ms 500 --quiet 2>/dev/null; then
      return 0
    fi
  done
  sx_log "agent at $socket not ready after ${timeout} ms; log tail:"
  tail -n 40 "$log" >&2 || true
  sx_die "agent failed to become ready"
}

sx_stop_agent() {
  local pid="$1"
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  local i
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}

# sx_agent_log_tail: print the current agent's log tail (for failure diagnostics).
sx_agent_log_tail() {
  if [[ -n "$SX_AGENT_LOG" && -f "$SX_AGENT_LOG" ]]; then
    sx_log "agent log tail ($SX_AGENT_LOG):"
    tail -n "${1:-30}" "$SX_AGENT_LOG" >&2 || true
  fi
}

# sx_rss_kb PID / sx_fd_count PID: sampled from /proc.
sx_rss_kb() {
  local line
  while read -r line; do
    if [[ "$line" == VmRSS:* ]]; then
      line="${line#VmRSS:}"
      line="${line%kB}"
      printf '%d\n' "${line// /}"
      return 0
    fi
  done <"/proc/$1/status"
  printf '0\n'
}

sx_fd_count() {
  local fds=("/proc/$1/fd"/*)
  printf '%d\n' "${#fds[@]}"
}

# sx_artifact FILE...: copy files into $GATE_ARTIFACTS when set.
sx_artifact() {
  if [[ -n "${GATE_ARTIFACTS:-}" ]]; then
    mkdir -p "$GATE_ARTIFACTS"
    cp -f "$@" "$GATE_ARTIFACTS/" 2>/dev/null || true
  fi
}

# sx_check REPORT ARGS...: validate the report strictly, then gate it; print the agent
# log tail when the gate fails.
sx_check() {
  local report="$1"
  shift
  sx bench validate "$report" >/dev/null || sx_die "bench report $report does not match the schema"
  if ! sx bench check "$report" --no-validate "$@"; then
    sx_agent_log_tail 30
    return 3
  fi
}
