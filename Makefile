# rewardserve: one entry point for set-up, tests, serving and code generation.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 50051

.PHONY: venv test test-fast serve proto proto-check buf-lint buf-breaking gpu-test clean deploy-check deploy-install-check
.PHONY: deps-check client-pythons

venv: $(STAMP)

$(STAMP): requirements-dev.txt pyproject.toml clients/python/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 13))' || { \
		echo "rewardserve needs Python 3.10 to 3.13; $(PYTHON) is $$($(PYTHON) --version 2>&1). Try: make $(MAKECMDGOALS) PYTHON=python3.12"; exit 1; }
	@echo "Setting up $(VENV) with $$($(PYTHON) --version): the first time, pip downloads torch and its CUDA libraries (about 2.8 GB from the public index) and installs them (5 to 15 minutes), one package per line below."
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -r requirements-dev.txt
	$(BIN)/pip install --no-deps -e clients/python -e .
	touch $(STAMP)
	@echo "$(VENV) is ready."

## test: everything CI runs (proto drift, buf lint, buf breaking, deploy checks, the CPU test suite)
test: venv proto-check buf-lint buf-breaking deploy-check deploy-install-check
	$(BIN)/python -m pytest -q -m "not gpu"

test-fast: venv
	$(BIN)/python -m pytest -q -m "not gpu and not slow"

## serve: the gRPC server on the built-in demo model (or MODEL=DIR|HUB_ID)
serve: venv
	$(BIN)/rewardserve serve --host $(HOST) --port $(PORT) $(if $(MODEL),--model $(MODEL),)

## deps-check: requirements-dev.txt and both distributions resolve from the public index alone
## (no local wheels or pip configuration), on Python 3.10 and 3.13
deps-check:
	.ci/deps-check

## client-pythons: the client distribution's tests on Python 3.10 and 3.13, in fresh venvs without torch
client-pythons:
	.ci/client-pythons

# The fresh-machine checks are part of `make test` (a prerequisite line of its own).
test: deps-check client-pythons

proto: venv
	$(BIN)/python clients/python/generate.py

proto-check: venv
	$(BIN)/python clients/python/generate.py --check

buf-lint: venv
	$(BIN)/buf lint

## buf breaking against the previous commit of main (skipped only when it had no proto yet)
buf-breaking: venv
	@if [ "$$(git rev-parse --is-shallow-repository)" = true ]; then git fetch -q --deepen=1 2>/dev/null || true; fi
	@if ! git rev-parse -q --verify HEAD~1 >/dev/null; then \
		echo "buf breaking: SKIPPED, HEAD~1 is not in this clone (shallow or first commit)"; \
	elif git ls-tree -r --name-only HEAD~1 | grep -q '^proto/.*\.proto$$'; then \
		$(BIN)/buf breaking --against '.git#ref=HEAD~1' && echo "buf breaking: no breaking change against HEAD~1"; \
	else echo "buf breaking: HEAD~1 has no proto/ yet, nothing to compare"; fi

## deploy-check: the Kubernetes manifests against the Kubernetes schemas, offline (kubernetes-validate)
deploy-check: venv
	$(BIN)/python deploy/validate.py

## deploy-install-check: the Dockerfile's install script, into a temporary venv (CI cannot build images)
deploy-install-check: venv
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && PYTHON=$(PYTHON) deploy/install.sh "$$tmp/venv" uvloop

## gpu-test: the parity suite on CUDA (run on the GPU machine)
gpu-test:
	$(PYTHON) -m pytest -q -m gpu tests

clean:
	rm -rf $(VENV) build *.egg-info
