#!/usr/bin/env bash
# Build the secretivex images here, end to end (what `make image` runs):
#   system deps (docker group) -> Docker engine -> Debian base image (debootstrap,
#   cached by tag) -> host wheelhouse (.build/wheelhouse) -> docker build.
#
#   ci/build-image.sh [--target runtime|softhsm|all] [--no-deps] [--no-cache]
#
#   --no-cache  rebuild every layer (picks up Debian security updates)
#
# Produces secretivex:dev (target runtime) and secretivex:softhsm (target softhsm)
# and prints their sizes.
#
# Environment:
#   SECRETIVEX_IMAGE             repository name          (default secretivex)
#   SECRETIVEX_IMAGE_TAG         tag of the runtime image (default dev)
#   SECRETIVEX_BASE_IMAGE        base image               (default secretivex-base:bookworm,
#                                built by ci/base-image.sh when absent)
#   SECRETIVEX_WHEELHOUSE_OFFLINE=1   build the wheelhouse with --no-index (no PyPI), from
#                                .build/wheelhouse and .build/build-deps as an earlier
#                                online run left them
#   SECRETIVEX_SKIP_DEPS=1       do not run ci/install-system-deps.sh
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

image=${SECRETIVEX_IMAGE:-secretivex}
tag=${SECRETIVEX_IMAGE_TAG:-dev}
base=${SECRETIVEX_BASE_IMAGE:-secretivex-base:bookworm}
wheelhouse=.build/wheelhouse
build_deps=.build/build-deps
target=all
skip_deps=${SECRETIVEX_SKIP_DEPS:-0}
build_opts=()

while (($#)); do
    case $1 in
    --target) target=${2:?--target needs runtime|softhsm|all}; shift ;;
    --target=*) target=${1#*=} ;;
    --no-deps) skip_deps=1 ;;
    --no-cache) build_opts+=(--no-cache) ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) printf 'build-image: unknown argument: %s\n' "$1" >&2; exit 2 ;;
    esac
    shift
done
case $target in
runtime) targets=(runtime) ;;
softhsm) targets=(softhsm) ;;
all) targets=(runtime softhsm) ;;
*) printf 'build-image: --target must be runtime, softhsm or all\n' >&2; exit 2 ;;
esac

say() { printf 'build-image: %s\n' "$*" >&2; }
step_start=$SECONDS
step() {
    say "$1"
    step_start=$SECONDS
}
step_done() { say "  done in $((SECONDS - step_start))s"; }

# Parallel runs (make image from two shells, test sessions) build one at a time.
mkdir -p .build
exec 9>.build/build-image.lock
flock 9

if [[ $skip_deps != 1 ]]; then
    step "system packages (docker group)"
    ci/install-system-deps.sh --only docker
    step_done
fi

step "Docker engine"
ci/docker-engine.sh start
step_done

step "base image $base"
if [[ $base == secretivex-base:* ]]; then
    SECRETIVEX_BASE_IMAGE=$base ci/base-image.sh >/dev/null
elif ! docker image inspect "$base" >/dev/null 2>&1; then
    say "base image $base is not present locally (there may be no registry); pulling"
    docker pull "$base"
fi
step_done

step "wheelhouse $wheelhouse"
if [[ -x .venv/bin/python ]]; then
    py=.venv/bin/python
else
    py=$(command -v python3)
fi
# The image runs Debian bookworm's python3 (3.11): compiled wheels must be cp311.
py_version=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [[ $py_version != 3.11 ]]; then
    say "$py is Python $py_version; the wheelhouse must be built with Python 3.11 (the image's)"
    exit 1
fi
mkdir -p "$wheelhouse" "$build_deps"
rm -f "$wheelhouse"/secretivex-*.whl
pip_args=(--disable-pip-version-check wheel --quiet --find-links "$wheelhouse" --find-links "$build_deps")
if [[ ${SECRETIVEX_WHEELHOUSE_OFFLINE:-0} == 1 ]]; then
    pip_args+=(--no-index)
else
    # pyproject's [build-system] requires, kept beside the wheelhouse (not in the
    # image): building secretivex's own wheel needs them, also offline next time.
    mapfile -t build_requires < <("$py" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))')
    "$py" -m pip "${pip_args[@]}" --wheel-dir "$build_deps" "${build_requires[@]}"
fi
"$py" -m pip "${pip_args[@]}" --wheel-dir "$wheelhouse" . || {
    [[ ${SECRETIVEX_WHEELHOUSE_OFFLINE:-0} == 1 ]] &&
        say "offline: $wheelhouse and $build_deps need every wheel; run once without SECRETIVEX_WHEELHOUSE_OFFLINE to fill them"
    exit 1
}
wheel=$(find "$wheelhouse" -maxdepth 1 -name 'secretivex-*.whl' -printf '%f\n' | head -n 1)
[[ -n $wheel ]] || { say "no secretivex wheel in $wheelhouse"; exit 1; }
version=$(printf '%s' "$wheel" | cut -d- -f2)
say "  $(find "$wheelhouse" -maxdepth 1 -name '*.whl' | wc -l) wheels, secretivex $version"
step_done

revision=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [[ $revision != unknown ]] && [[ -n $(git status --porcelain 2>/dev/null) ]]; then
    revision=$revision-dirty
fi
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)

# The build stage is tagged too: its layers stay cached while old copies get pruned.
built=()
for t in build "${targets[@]}"; do
    case $t in
    build) ref=$image-build:cache ;;
    runtime) ref=$image:$tag ;;
    *) ref=$image:$t ;;
    esac
    step "docker build --target $t -> $ref"
    docker build --network host --force-rm "${build_opts[@]}" \
        --build-arg BASE_IMAGE="$base" \
        --build-arg VERSION="$version" \
        --build-arg REVISION="$revision" \
        --build-arg CREATED="$created" \
        --target "$t" --tag "$ref" . >".build/docker-build-$t.log" 2>&1 || {
        say "docker build failed; last lines of .build/docker-build-$t.log:"
        tail -n 40 ".build/docker-build-$t.log" >&2
        exit 1
    }
    [[ $t == build ]] || built+=("$ref")
    step_done
done

# Old builds of our images become dangling on rebuild; drop them (never in-use ones).
for label in "org.opencontainers.image.vendor=secretivex developers" "secretivex.stage=build"; do
    docker image prune --force --filter "label=$label" >/dev/null || true
done

for ref in "${built[@]}"; do
    printf '%s\t%s\n' "$ref" "$(docker image ls --format '{{.Size}}' "$ref")"
done
