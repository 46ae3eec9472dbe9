# rewardserve: one entry point for set-up, tests, serving and code generation.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 50051

.PHONY: venv test test-fast serve proto proto-check buf-lint buf-breaking buf-release gpu-test clean

venv: $(STAMP)

$(STAMP): requirements-dev.txt pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -e clients/python -e .
	touch $(STAMP)

## test: everything CI runs (proto drift, buf lint, buf breaking, the CPU test suite)
test: venv proto-check buf-lint buf-breaking
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

## buf breaking against the committed image of the released v1 contract (never HEAD~1: a
## submission of several commits is judged as a whole). `make buf-release` updates the image, on purpose.
RELEASED_IMAGE := proto/released/rewardserve-v1.binpb
buf-breaking: venv
	$(BIN)/buf breaking --against $(RELEASED_IMAGE) && echo "buf breaking: no breaking change against $(RELEASED_IMAGE)"

buf-release: venv
	$(BIN)/buf build --exclude-source-info -o $(RELEASED_IMAGE)

## gpu-test: the parity suite on CUDA (run on the GPU machine)
gpu-test:
	$(PYTHON) -m pytest -q -m gpu tests

clean:
	rm -rf $(VENV) build *.egg-info
