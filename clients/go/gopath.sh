#!/usr/bin/env bash
# Run the go command on the Go client with Debian's toolchain in GOPATH mode (the module proxy is
# not reachable here): Go 1.19, grpc-go 1.33, protobuf-go 1.28, genproto from /usr/share/gocode.
#   clients/go/gopath.sh test -count=1 ./...
#   clients/go/gopath.sh run ./cmd/conformance CASES REFERENCE
# The tests start the demo server from REWARDSERVE_BIN (default: the project venv's), or call
# REWARDSERVE_TARGET when set.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
gopath="$(mktemp -d)"
trap 'rm -rf "$gopath"' EXIT
pkg="$gopath/src/github.com/rewardserve/rewardserve/clients"
mkdir -p "$pkg"
ln -s "$here" "$pkg/go"
export GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" GOFLAGS=
export REWARDSERVE_BIN="${REWARDSERVE_BIN:-$here/../../.venv/bin/rewardserve}"
args=()
for arg in "$@"; do  # file arguments (cases, reference) stay valid after the cd below
  if [[ -f "$arg" ]]; then args+=("$(realpath "$arg")"); else args+=("$arg"); fi
done
cd "$pkg/go"
go "${args[@]}"
