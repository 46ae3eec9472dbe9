#!/usr/bin/env bash
# Install rewardserve (server + client) into a fresh virtual environment: the Dockerfile's one
# install step, and what CI runs into a temporary folder (`make deploy-install-check`).
#
#   deploy/install.sh VENV_DIR [EXTRA...]      e.g. deploy/install.sh /opt/rewardserve uvloop
#
# PYTHON picks the interpreter (default python3). On a CUDA machine pip resolves torch to its
# CUDA build; a machine whose pip is set up with a local CPU wheel gets that one.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 VENV_DIR [EXTRA...]" >&2
  exit 2
fi
venv="$1"; shift
src="$(cd "$(dirname "$0")/.." && pwd)"
extras="$(IFS=,; echo "$*")"
"${PYTHON:-python3}" -m venv "$venv"
# setuptools builds in the source tree: a stale build/ from an earlier install would put files
# that no longer exist in the sources into the wheels.
rm -rf "$src/build" "$src/clients/python/build"
# The client first: the server distribution depends on it for the generated code (one copy).
"$venv/bin/pip" install -q "$src/clients/python" "$src${extras:+[$extras]}"
# Smoke test of the installed console script and imports (no model needed).
"$venv/bin/rewardserve" serve --help >/dev/null
"$venv/bin/python" -c "import rewardserve.service.server, rewardserve.engine.async_engine, rewardserve_client"
echo "rewardserve installed in $venv"
