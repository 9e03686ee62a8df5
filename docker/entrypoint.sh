#!/bin/sh
# secretivex image entrypoint (installed as /usr/local/bin/secretivex-entrypoint).
#
#   docker run IMAGE                   -> secretivex agent --socket "$SSH_AUTH_SOCK"
#   docker run IMAGE --config F ...    -> secretivex agent --socket "$SSH_AUTH_SOCK" --config F ...
#   docker run IMAGE agent ...         -> secretivex agent --socket "$SSH_AUTH_SOCK" ...
#   docker run IMAGE --version         -> secretivex --version
#   docker run IMAGE config|client|bench ...   -> secretivex config|client|bench ...
#   docker run IMAGE ssh-add -l        -> any other command runs as given
#
# Before starting the agent it checks that the socket directory exists and is
# writable, so a missing or wrongly owned volume is a clear one-line error
# instead of a traceback. Exit 2 = usage/config error (the CLI's convention).
set -eu

sock=${SSH_AUTH_SOCK:-/run/secretivex/agent.sock}

die() {
    printf 'secretivex-entrypoint: %s\n' "$*" >&2
    exit 2
}

check_socket_dir() {
    dir=$(dirname -- "$sock")
    uid=$(id -u)
    gid=$(id -g)
    if [ ! -e "$dir" ]; then
        die "socket directory $dir does not exist; mount one: -v HOST_DIR:$dir"
    fi
    if [ ! -d "$dir" ]; then
        die "socket directory $dir is not a directory"
    fi
    if [ ! -w "$dir" ] || [ ! -x "$dir" ]; then
        owner=$(stat -c '%u:%g, mode %a' -- "$dir" 2>/dev/null || echo unknown)
        die "socket directory $dir is not writable by uid $uid gid $gid (it is $owner);" \
            "chown $uid:$gid the host directory, or run the container with --user <owner uid>:<gid>"
    fi
    if [ -e "$sock" ] && [ ! -S "$sock" ]; then
        die "$sock exists and is not a socket; remove it or choose another SSH_AUTH_SOCK"
    fi
}

case ${1:-} in
--version | -V)
    [ $# -eq 1 ] && exec secretivex --version
    set -- agent "$@"
    ;;
"" | -*) set -- agent "$@" ;;
esac

case $1 in
agent)
    shift
    check_socket_dir
    exec secretivex agent --socket "$sock" "$@"
    ;;
config | client | bench)
    exec secretivex "$@"
    ;;
*)
    exec "$@"
    ;;
esac
