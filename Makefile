# rewardserve: one entry point for set-up, tests, serving and code generation.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 50051

.PHONY: venv test test-fast serve proto proto-check buf-lint buf-breaking gpu-test clean deploy-check deploy-install-check

venv: $(STAMP)

$(STAMP): requirements-dev.txt pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -e clients/python -e .
	touch $(STAMP)

## test: everything CI runs (proto drift, buf lint, buf breaking, deploy checks, the CPU test suite)
test: venv proto-check buf-lint buf-breaking deploy-check deploy-install-check
	$(BIN)/python -m pytest -q -m "not gpu"

test-fast: venv
	$(BIN)/python -m pytest -q -m "not gpu and not slow"

## serve: the gRPC server on the built-in demo model (or MODEL=DIR|HUB_ID)
serve: venv
	$(BIN)/rewardserve serve --host $(HOST) --port $(PORT) $(if $(MODEL),--model $(MODEL),)

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
