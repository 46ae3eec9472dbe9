#!/usr/bin/env bash
# make clients-test: the Node, Go and Java clients and the conformance suite (Python, Node, Go)
# against ONE live demo server, started here on a free port and stopped at the end.
# Needs `make clients-deps` first (Debian packages, npm ci, the Node build).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${VENV:-$root/.venv}"
log="$(mktemp)"
# The cases send request chat templates (Struct kwargs reaching a template): allowed here, off by default.
"$venv/bin/rewardserve" serve --host 127.0.0.1 --port 0 --device cpu --allow-request-chat-template 2>"$log" &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 300); do
  port="$(grep -oP 'listening on 127\.0\.0\.1:\K[0-9]+' "$log" || true)"
  [[ -n "$port" ]] && break
  kill -0 "$server" 2>/dev/null || { cat "$log" >&2; echo "rewardserve exited before listening" >&2; exit 1; }
  sleep 0.5
done
[[ -n "$port" ]] || { cat "$log" >&2; echo "rewardserve did not listen within 150 s" >&2; exit 1; }
export REWARDSERVE_TARGET="127.0.0.1:$port" REWARDSERVE_BIN="$venv/bin/rewardserve"
for _ in $(seq 360); do  # the model loads after the port opens
  grep -q "rewardserve ready" "$log" && break
  kill -0 "$server" 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.5
done
grep -q "rewardserve ready" "$log" || { cat "$log" >&2; echo "the demo model did not load within 180 s" >&2; exit 1; }
echo "== demo server on $REWARDSERVE_TARGET"

echo "== node: npm test (clients/node)"
(cd "$root/clients/node" && npm test --silent)
echo "== go: vet and test (clients/go, GOPATH mode on Debian's grpc-go)"
"$root/clients/go/gopath.sh" vet ./...
"$root/clients/go/gopath.sh" test -count=1 ./...
echo "== java: generate, compile and smoke-call (clients/java)"
"$root/clients/java/smoke.sh" "$REWARDSERVE_TARGET"
echo "== conformance: python, node and go clients (clients/conformance)"
"$venv/bin/python" -m pytest -q -p no:cacheprovider "$root/clients/conformance"
