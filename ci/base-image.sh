#!/usr/bin/env bash
# Ensure a local Debian base image exists (there is no container registry here).
#
#   ci/base-image.sh [--force]     prints the tag on stdout
#
# Cached by tag: when `docker image inspect TAG` succeeds nothing is done.
# Otherwise: debootstrap --variant=minbase SUITE into a temp dir, slim it
# (no docs/man/locales, like debian:*-slim), `tar | docker import`.
# The Debian mirror is the one apt on this host already uses (read from
# /etc/apt/sources.list{,.d}); debootstrap's default when none is found.
#
# Environment:
#   SECRETIVEX_BASE_IMAGE    tag to produce      (default secretivex-base:$SUITE)
#   SECRETIVEX_BASE_SUITE    Debian suite        (default bookworm)
#   SECRETIVEX_DEBIAN_MIRROR mirror override     (default: from host apt sources)
set -euo pipefail

suite=${SECRETIVEX_BASE_SUITE:-bookworm}
tag=${SECRETIVEX_BASE_IMAGE:-secretivex-base:$suite}
force=0
for arg in "$@"; do
    case $arg in
    --force) force=1 ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *)
        printf 'base-image: unknown argument: %s\n' "$arg" >&2
        exit 2
        ;;
    esac
done

say() { printf 'base-image: %s\n' "$*" >&2; }

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

have_image() { docker image inspect "$tag" >/dev/null 2>&1; }

# Print the first URI apt uses on this host for "$1" (a suite name), or nothing.
# Handles one-line (*.list) and deb822 (*.sources) formats; comments are skipped.
host_mirror_for() {
    local want=$1 f uri
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        uri=$(awk -v want="$want" -v fmt="${f##*.}" '
            function check() {
                if (!done && types ~ /(^| )deb( |$)/ && (suites " ") ~ (" " want " ")) {
                    n = split(uris, u, " ")
                    for (k = 1; k <= n; k++) if (u[k] ~ /^https?:\/\//) { print u[k]; done = 1; exit }
                }
                types = ""; uris = ""; suites = ""
            }
            /^[[:space:]]*#/ { next }
            fmt == "list" {
                # deb [options] URI SUITE COMPONENTS...
                if ($1 != "deb") next
                i = 2
                if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                if ($(i + 1) == want && $i ~ /^https?:\/\//) { print $i; done = 1; exit }
                next
            }
            /^[[:space:]]*$/ { check(); next }   # deb822: a blank line ends a stanza
            /^Types:/  { $1 = ""; types = $0 }
            /^URIs:/   { $1 = ""; uris = $0 }
            /^Suites:/ { $1 = ""; suites = $0 }
            END { if (fmt != "list") check() }
        ' "$f")
        if [[ -n $uri ]]; then
            printf '%s\n' "${uri%/}"
            return 0
        fi
    done
}

if ((!force)) && have_image; then
    say "$tag already present (cached by tag)"
    printf '%s\n' "$tag"
    exit 0
fi

for tool in docker debootstrap; do
    if ! command -v "$tool" >/dev/null 2>&1 && [[ ! -x /usr/sbin/$tool ]]; then
        say "$tool not installed; run: ci/install-system-deps.sh --only docker"
        exit 1
    fi
done
if ! docker info >/dev/null 2>&1; then
    say "no Docker engine answers; run: ci/docker-engine.sh"
    exit 1
fi

# One builder at a time: parallel `make image` runs must not debootstrap twice.
lock=${TMPDIR:-/tmp}/secretivex-base-image.lock
exec 9>"$lock"
if ! flock -n 9; then
    say "another base-image build holds $lock; waiting"
    flock 9
fi
if ((!force)) && have_image; then
    say "$tag appeared while waiting"
    printf '%s\n' "$tag"
    exit 0
fi

mirror=${SECRETIVEX_DEBIAN_MIRROR:-$(host_mirror_for "$suite")}
security=$(host_mirror_for "$suite-security")
mirror_args=()
if [[ -n $mirror ]]; then
    mirror_args=("$mirror")
    say "mirror: $mirror (from host apt sources)"
else
    say "mirror: debootstrap default"
fi

rootfs=$(mktemp -d "${TMPDIR:-/var/tmp}/secretivex-rootfs.XXXXXX")
cleanup() { as_root rm -rf --one-file-system "$rootfs"; }
trap cleanup EXIT

started=$SECONDS
say "debootstrap --variant=minbase $suite $rootfs (takes a few minutes)"
if ! as_root debootstrap --variant=minbase "$suite" "$rootfs" "${mirror_args[@]}" \
    >"$rootfs.log" 2>&1; then
    say "debootstrap failed; last lines of $rootfs.log:"
    tail -n 30 "$rootfs.log" >&2
    exit 1
fi
rm -f "$rootfs.log"
say "debootstrap done in $((SECONDS - started))s"

# Slim like debian:*-slim: keep docs/man/locales out of this and any later apt install.
slim_cfg=$(mktemp)
cat >"$slim_cfg" <<'CFG'
# secretivex base image: no documentation or translations (like debian:*-slim)
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
CFG
as_root install -m 0644 "$slim_cfg" "$rootfs/etc/dpkg/dpkg.cfg.d/secretivex-slim"
rm -f "$slim_cfg"
as_root find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
as_root find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
as_root rm -rf "$rootfs"/usr/share/{man,info,groff,lintian,linda,locale}/* \
    "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log "$rootfs"/tmp/*

# apt sources inside the image: the suite, its updates and (when the host has one) security.
sources=$(mktemp)
{
    base=${mirror:-http://deb.debian.org/debian}
    printf 'deb %s %s main\n' "$base" "$suite"
    printf 'deb %s %s-updates main\n' "$base" "$suite"
    [[ -n $security ]] && printf 'deb %s %s-security main\n' "$security" "$suite"
} >"$sources"
as_root install -m 0644 "$sources" "$rootfs/etc/apt/sources.list"
rm -f "$sources"

say "importing as $tag"
as_root tar --numeric-owner -C "$rootfs" -c . |
    docker import \
        --change 'CMD ["/bin/bash"]' \
        --change 'ENV LANG=C.UTF-8' \
        --message "debootstrap --variant=minbase $suite" \
        - "$tag" >/dev/null
say "$tag ready ($(docker image inspect --format '{{.Size}}' "$tag" | awk '{printf "%.1f MB", $1/1e6}')) in $((SECONDS - started))s"
printf '%s\n' "$tag"
