#!/usr/bin/env bash
# Build the minimal Go agent (ci/go-agent/main.go, on golang.org/x/crypto/ssh/agent)
# into .build/go-agent, offline, from Debian's golang-go and golang-golang-x-crypto-dev.
# Prints the binary's path on success; exits 1 with one line saying why otherwise
# (the comparison then skips the Go column and says so).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${GO_AGENT_OUT:-$root/.build/go-agent}"
gopath="${GO_AGENT_GOPATH:-/usr/share/gocode}"
if ! command -v go >/dev/null 2>&1; then
  if [[ "${GO_AGENT_INSTALL:-0}" == 1 ]] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q golang-go golang-golang-x-crypto-dev \
      >/dev/null 2>&1 || true
  fi
  command -v go >/dev/null 2>&1 || {
    echo "go not installed (apt-get install golang-go golang-golang-x-crypto-dev)" >&2
    exit 1
  }
fi
if [[ ! -d "$gopath/src/golang.org/x/crypto/ssh/agent" ]]; then
  echo "golang.org/x/crypto/ssh/agent not under $gopath (apt-get install golang-golang-x-crypto-dev)" >&2
  exit 1
fi
src="$root/ci/go-agent/main.go"
if [[ -x "$out" && "$out" -nt "$src" ]]; then
  printf '%s\n' "$out"
  exit 0
fi
mkdir -p "$(dirname "$out")"
# GOPATH mode over Debian's source packages: no module proxy, no network.
GOPATH="$gopath" GO111MODULE=off GOPROXY=off GOFLAGS=-trimpath GOCACHE="$root/.build/go-cache" \
  go build -o "$out" "$src" || {
  echo "building the Go agent failed" >&2
  exit 1
}
printf '%s\n' "$out"
