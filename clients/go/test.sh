#!/usr/bin/env bash
# Build and test the Go client against Debian's toolchain in GOPATH mode (the module proxy is not
# reachable here): Go 1.19, grpc-go 1.33, protobuf-go 1.28 and genproto from /usr/share/gocode.
# Usage: clients/go/test.sh [go test args...]   (REWARDSERVE_BIN: the server to test against)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
gopath="$(mktemp -d)"
trap 'rm -rf "$gopath"' EXIT
pkg="$gopath/src/github.com/rewardserve/rewardserve/clients"
mkdir -p "$pkg"
ln -s "$here" "$pkg/go"
export GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" GOFLAGS=-mod= GOCACHE="${GOCACHE:-$HOME/.cache/go-build}"
export REWARDSERVE_BIN="${REWARDSERVE_BIN:-$here/../../.venv/bin/rewardserve}"
cd "$pkg/go"
go vet ./...
go test -count=1 "$@" ./...
