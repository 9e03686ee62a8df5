#!/usr/bin/env bash
# Build the image tests/systemd boots (a Debian host with systemd as PID 1 and the
# agent at /usr/bin/secretivex), from the runtime image of the tree being tested.
#
#   ci/build-systemd-image.sh          (after ci/build-image.sh)
#
# Environment:
#   SECRETIVEX_IMAGE / SECRETIVEX_IMAGE_TAG   the runtime image to take the agent from
#                                             (default secretivex:dev, as build-image.sh)
#   SECRETIVEX_BASE_IMAGE      Debian base image (default secretivex-base:bookworm)
#   SECRETIVEX_SYSTEMD_IMAGE   tag to produce    (default secretivex-systemd:dev)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

runtime=${SECRETIVEX_IMAGE:-secretivex}:${SECRETIVEX_IMAGE_TAG:-dev}
base=${SECRETIVEX_BASE_IMAGE:-secretivex-base:bookworm}
tag=${SECRETIVEX_SYSTEMD_IMAGE:-secretivex-systemd:dev}

say() { printf 'build-systemd-image: %s\n' "$*" >&2; }

for image in "$runtime" "$base"; do
    if ! docker image inspect "$image" >/dev/null 2>&1; then
        say "$image is missing: run ci/build-image.sh first"
        exit 1
    fi
done

mkdir -p .build
started=$SECONDS
say "docker build tests/systemd -> $tag (agent from $runtime)"
docker build --network host --force-rm \
    --build-arg RUNTIME_IMAGE="$runtime" \
    --build-arg BASE_IMAGE="$base" \
    --tag "$tag" tests/systemd >.build/docker-build-systemd.log 2>&1 || {
    say "docker build failed; last lines of .build/docker-build-systemd.log:"
    tail -n 40 .build/docker-build-systemd.log >&2
    exit 1
}
docker image prune --force --filter "label=secretivex.stage=systemd-test" >/dev/null || true
say "done in $((SECONDS - started))s"
printf '%s\t%s\n' "$tag" "$(docker image ls --format '{{.Size}}' "$tag")"
