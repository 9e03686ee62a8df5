#!/usr/bin/env bash
# Install the Debian packages secretivex's tests, gates and image build use.
#
#   ci/install-system-deps.sh [--only G1,G2] [--skip G1,G2] [--check] [--list]
#
# Idempotent and fast when everything is there: packages are checked with
# dpkg first; `apt-get update` + install run only for what is missing.
#
# Groups (default: all):
#   base     git procps util-linux ca-certificates   (git over ssh, pgrep, setpriv)
#   openssh  openssh-client openssh-server csh       (ssh-add, ssh-keygen -Y, ssh, sshd; csh for the eval tests)
#   softhsm  softhsm2 opensc                         (softhsm2-util, pkcs11-tool)
#   docker   docker.io debootstrap                   (engine + base image; an existing
#                                                     dockerd/docker, e.g. docker-ce, counts)
#   nix      nix-bin                                 (nix-instantiate / nix eval)
#   systemd  systemd                                 (systemd-socket-activate)
#   lint     shellcheck
#   goagent  golang-go golang-golang-x-crypto-dev     (the Go x/crypto agent `make bench`
#                                                     compares with; ci/build-go-agent.sh)
#
# Options / environment:
#   --only LIST   | SECRETIVEX_DEPS_ONLY=LIST   install only these groups
#   --skip LIST   | SECRETIVEX_DEPS_SKIP=LIST   skip these groups (e.g. "nix,systemd")
#   --check       report what is missing; exit 1 if anything is, install nothing
#   --list        print the packages the selected groups need, one per line
# Runs as root; otherwise through sudo when present; otherwise exits 1.
set -euo pipefail

all_groups=(base openssh softhsm docker nix systemd lint goagent)
declare -A packages=(
    [base]="git procps util-linux ca-certificates"
    [openssh]="openssh-client openssh-server csh"
    [softhsm]="softhsm2 opensc"
    [docker]="docker.io debootstrap"
    [nix]="nix-bin"
    [systemd]="systemd"
    [lint]="shellcheck"
    [goagent]="golang-go golang-golang-x-crypto-dev"
)
# A package also counts as present when all these commands are found
# (Docker installed from Docker's own packages instead of Debian's docker.io).
declare -A provides=(
    [docker.io]="dockerd docker"
)

say() { printf 'install-system-deps: %s\n' "$*" >&2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

only=${SECRETIVEX_DEPS_ONLY:-}
skip=${SECRETIVEX_DEPS_SKIP:-}
mode=install
while (($#)); do
    case $1 in
    --only) only=${2:?--only needs a list}; shift ;;
    --only=*) only=${1#*=} ;;
    --skip) skip=${2:?--skip needs a list}; shift ;;
    --skip=*) skip=${1#*=} ;;
    --check) mode=check ;;
    --list) mode=list ;;
    -h | --help) usage; exit 0 ;;
    *) say "unknown argument: $1"; usage >&2; exit 2 ;;
    esac
    shift
done

in_list() { [[ ",${2// /,}," == *",$1,"* ]]; }

for g in ${only//,/ } ${skip//,/ }; do
    if [[ -z ${packages[$g]+x} ]]; then
        say "unknown group: $g (groups: ${all_groups[*]})"
        exit 2
    fi
done

wanted=()
for g in "${all_groups[@]}"; do
    if [[ -n $only ]] && ! in_list "$g" "$only"; then continue; fi
    if [[ -n $skip ]] && in_list "$g" "$skip"; then continue; fi
    read -r -a pkgs <<<"${packages[$g]}"
    wanted+=("${pkgs[@]}")
done

if [[ $mode == list ]]; then
    ((${#wanted[@]})) && printf '%s\n' "${wanted[@]}"
    exit 0
fi

installed() {
    local pkg=$1 cmd status
    if command -v dpkg-query >/dev/null 2>&1; then
        status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
        [[ $status == "install ok installed" ]] && return 0
    fi
    [[ -n ${provides[$pkg]:-} ]] || return 1
    for cmd in ${provides[$pkg]}; do
        command -v "$cmd" >/dev/null 2>&1 || return 1
    done
}

missing=()
for pkg in "${wanted[@]}"; do
    installed "$pkg" || missing+=("$pkg")
done

if ((${#missing[@]} == 0)); then
    say "all present (${#wanted[@]} packages)"
    exit 0
fi
if [[ $mode == check ]]; then
    say "missing: ${missing[*]}"
    exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
    say "missing ${missing[*]}, and there is no apt-get here; install them with your package manager"
    exit 1
fi
sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        sudo_cmd=(sudo --preserve-env=DEBIAN_FRONTEND --)
    else
        say "missing ${missing[*]}; run this script as root (no sudo here)"
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
say "installing: ${missing[*]}"
started=$SECONDS
"${sudo_cmd[@]}" apt-get update -qq
# confdef/confold: never prompt about (or overwrite) config files an admin changed.
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${missing[@]}"
say "installed ${#missing[@]} packages in $((SECONDS - started))s"
