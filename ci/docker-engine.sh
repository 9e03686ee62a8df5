#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine, starting one if needed.
#
#   ci/docker-engine.sh [start]   start dockerd unless `docker info` already answers
#   ci/docker-engine.sh stop      stop dockerd (docker.service under systemd, else by its pid file)
#   ci/docker-engine.sh status    exit 0 when an engine answers, 1 otherwise
#
# On a machine booted with systemd, docker.service is started. Otherwise dockerd
# is started directly with the flags this environment needs (no bridge, no
# iptables): containers use `--network none` or `--network host`.
#
# Environment:
#   SECRETIVEX_DOCKERD_LOG      log file          (default /tmp/secretivex-dockerd.log)
#   SECRETIVEX_DOCKERD_TIMEOUT  seconds to wait   (default 60)
#   SECRETIVEX_DOCKERD_ARGS     extra dockerd arguments (word-split; when set, dockerd
#                               is started directly even under systemd)
set -euo pipefail

log_file=${SECRETIVEX_DOCKERD_LOG:-/tmp/secretivex-dockerd.log}
timeout=${SECRETIVEX_DOCKERD_TIMEOUT:-60}
pid_file=/var/run/docker.pid

say() { printf 'docker-engine: %s\n' "$*" >&2; }

answers() { docker info >/dev/null 2>&1; }

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -- "$@"
    else
        say "need root (or sudo) to run: $*"
        exit 1
    fi
}

pid_alive() {
    local pid
    [[ -s $pid_file ]] || return 1
    pid=$(cat "$pid_file" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -d /proc/$pid ]] || return 1
    # A recycled pid that is not dockerd does not count.
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == dockerd ]]
}

start() {
    if answers; then
        say "engine already answers"
        return 0
    fi
    if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
        say "dockerd/docker not installed; run: ci/install-system-deps.sh --only docker"
        exit 1
    fi
    if [[ -d /run/systemd/system ]] && systemctl cat docker.service >/dev/null 2>&1 &&
        [[ ${SECRETIVEX_DOCKERD_ARGS:-} == "" ]]; then
        # A machine booted with systemd: use its docker.service (default networking).
        say "starting docker.service"
        as_root systemctl start docker.service
    elif pid_alive; then
        say "dockerd (pid $(cat "$pid_file")) is running but not answering yet; waiting"
    else
        if [[ -e $pid_file ]]; then
            say "removing stale $pid_file"
            as_root rm -f "$pid_file"
        fi
        local -a extra=()
        if [[ -n ${SECRETIVEX_DOCKERD_ARGS:-} ]]; then
            read -r -a extra <<<"$SECRETIVEX_DOCKERD_ARGS"
        fi
        say "starting dockerd (log: $log_file)"
        # setsid: the daemon must not die with this script's session or get its signals.
        as_root setsid dockerd --bridge=none --iptables=false --ip6tables=false \
            "${extra[@]}" </dev/null >>"$log_file" 2>&1 &
        disown || true
    fi
    local deadline=$((SECONDS + timeout))
    until answers; do
        if ((SECONDS >= deadline)); then
            say "engine did not answer within ${timeout}s; last log lines:"
            tail -n 30 "$log_file" >&2 || true
            exit 1
        fi
        sleep 0.5
    done
    say "engine answers after $((SECONDS))s"
}

stop() {
    if [[ -d /run/systemd/system ]] && systemctl is-active --quiet docker.service 2>/dev/null; then
        say "stopping docker.service"
        as_root systemctl stop docker.service docker.socket
        return 0
    fi
    if ! pid_alive; then
        say "no dockerd running (per $pid_file)"
        return 0
    fi
    local pid
    pid=$(cat "$pid_file")
    say "stopping dockerd (pid $pid)"
    as_root kill -TERM "$pid"
    local deadline=$((SECONDS + timeout))
    while [[ -d /proc/$pid ]]; do
        if ((SECONDS >= deadline)); then
            say "dockerd (pid $pid) still running after ${timeout}s"
            exit 1
        fi
        sleep 0.5
    done
    say "stopped"
}

case ${1:-start} in
start) start ;;
stop) stop ;;
status) answers ;;
-h | --help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    ;;
*)
    say "unknown command: $1 (start|stop|status)"
    exit 2
    ;;
esac
