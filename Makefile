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
	$(BIN)/python clients/codegen.py  # Node and Go: after `make clients-deps`

proto-check: venv
	$(BIN)/python clients/python/generate.py --check

buf-lint: venv
	$(BIN)/buf lint

## buf breaking against the committed image of the released v1 contract (never HEAD~1: a
## submission of several commits is judged as a whole). `make buf-release` updates the image, on purpose.
RELEASED_IMAGE := proto/released/rewardserve-v1.binpb
buf-breaking: venv
	$(BIN)/buf breaking --against $(RELEASED_IMAGE) && echo "buf breaking: no breaking change against $(RELEASED_IMAGE)"

buf-release: venv
	$(BIN)/buf build --exclude-source-info -o $(RELEASED_IMAGE)

.PHONY: buf-release clients-deps clients-test cpp-smoke
## make test runs the clients too (GNU make adds this prerequisite to the `test` rule above;
## it runs after buf-breaking and before pytest)
test: clients-test

## clients-deps: what the Node, Go and Java clients need: Debian packages (apt-get, as root, only
## when one is missing), node >= 20 from the machine, `npm ci` (pinned generators) and the Node build
CLIENT_DEBS := golang-go protobuf-compiler protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev \
	golang-google-protobuf-dev golang-google-genproto-dev golang-github-golang-protobuf-1-5-dev \
	openjdk-17-jdk-headless libgrpc-java protobuf-compiler-grpc-java-plugin libprotobuf-java libnetty-java \
	libperfmark-java libgoogle-gson-java libguava-java libgeronimo-annotation-1.3-spec-java
clients-deps: venv
	@missing=""; for deb in $(CLIENT_DEBS); do dpkg -s $$deb >/dev/null 2>&1 || missing="$$missing $$deb"; done; \
	if [ -n "$$missing" ]; then echo "apt-get install$$missing"; apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; fi
	@node -e 'process.exit(Number(process.versions.node.split(".")[0]) < 20 ? 1 : 0)' || { echo "clients-deps: node >= 20 is needed" >&2; exit 1; }
	cd clients/node && npm ci --no-audit --no-fund && npm run build --silent

## clients-test: generated Node/Go code drift, then the Node, Go and Java clients and the
## conformance suite against one demo server (clients/test.sh)
clients-test: clients-deps
	$(BIN)/python clients/codegen.py --check
	VENV=$(VENV) clients/test.sh

## cpp-smoke: build the C++ smoke call (Debian libgrpc++) and call a running server: make cpp-smoke TARGET=host:port
cpp-smoke:
	clients/cpp/build.sh && clients/cpp/build/smoke $(TARGET)

## deploy-check: the Kubernetes manifests against the Kubernetes schemas, offline (kubernetes-validate)
deploy-check: venv
	$(BIN)/python deploy/validate.py

## deploy-install-check: the Dockerfile's install script, into a temporary venv (CI cannot build images)
deploy-install-check: venv
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && PYTHON=$(PYTHON) deploy/install.sh "$$tmp/venv" uvloop

## gpu-test: the parity suite on CUDA (run on the GPU machine)
gpu-test:
	$(PYTHON) -m pytest -q -m gpu tests/engine  # the service and client conftests need grpc_health, absent there

clean:
	rm -rf $(VENV) build *.egg-info
