"""The conformance suite against one live demo server (``make clients-test`` runs it).

The case file is first checked against the server itself (through the bare generated stubs),
then the Python, Node and Go clients each run every case and must reproduce the server's answers.
The server is REWARDSERVE_TARGET when set, else ``rewardserve serve`` on a free port.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

import conformance

ROOT = Path(__file__).resolve().parents[2]
NODE_RUNNER = ROOT / "clients" / "node" / "dist" / "conformance" / "run.js"
GO_SCRIPT = ROOT / "clients" / "go" / "gopath.sh"


@pytest.fixture(scope="module")
def target():
    if os.environ.get("REWARDSERVE_TARGET"):
        yield os.environ["REWARDSERVE_TARGET"]
        return
    binary = Path(sys.executable).with_name("rewardserve")
    server = subprocess.Popen([str(binary), "serve", "--host", "127.0.0.1", "--port", "0", "--device", "cpu",
                               "--allow-request-chat-template"],  # the cases send request templates
                              stderr=subprocess.PIPE, text=True)
    port = None
    for line in server.stderr:
        if match := re.search(r"listening on \S*:(\d+)", line):
            port = match.group(1)
            break
    assert port, "rewardserve exited before listening"
    _drain_log(server)
    address = f"127.0.0.1:{port}"
    _wait_ready(address)
    yield address
    server.terminate()
    server.wait(60)


def _drain_log(server: subprocess.Popen) -> None:
    """Keep reading the server's log so it never blocks on a full pipe."""
    import threading

    threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()


def _wait_ready(address: str, timeout_s: float = 180) -> None:
    from rewardserve_client.v1 import reward_service_pb2 as pb
    from rewardserve_client.v1 import reward_service_pb2_grpc as pb_grpc

    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        while True:
            try:
                pb_grpc.RewardServiceStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
                return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


@pytest.fixture(scope="module")
def suite():
    return conformance.load_cases()


@pytest.fixture(scope="module")
def reference(target, suite, tmp_path_factory):
    ref = conformance.reference(target, suite)
    path = tmp_path_factory.mktemp("conformance") / "reference.json"
    path.write_text(json.dumps(ref))
    return ref, path


def test_the_case_file_agrees_with_the_server(suite, reference):
    assert conformance.check_reference(suite, reference[0]) == []


def test_the_python_client_conforms(target, suite, reference):
    passed, failures = conformance.run_python(target, suite, reference[0])
    assert failures == [] and passed == len(suite["cases"])


def _run_client(command: list[str], target: str, suite: dict, language: str) -> None:
    done = subprocess.run(command, env={**os.environ, "REWARDSERVE_TARGET": target}, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{language}: {len(suite['cases'])} passed, 0 failed" in done.stdout, done.stdout


def test_the_node_client_conforms(target, suite, reference):
    assert shutil.which("node"), "node is not installed: run `make clients-deps`"
    assert NODE_RUNNER.exists(), f"{NODE_RUNNER} is not built: run `make clients-deps`"
    _run_client(["node", str(NODE_RUNNER), str(conformance.CASES), str(reference[1])], target, suite, "node")


def test_the_go_client_conforms(target, suite, reference):
    assert shutil.which("go"), "go is not installed: run `make clients-deps`"
    _run_client([str(GO_SCRIPT), "run", "./cmd/conformance", str(conformance.CASES), str(reference[1])],
                target, suite, "go")


def test_the_rule_catches_a_wrong_number_a_missing_item_and_a_wrong_label():
    rule = conformance.Rule(abs=1e-5, rel=1e-5, ignore=frozenset({"requestId"}))
    ref = {"results": [{"index": 0, "score": 0.5, "labelScores": [{"label": "a", "score": 0.1}]}], "requestId": "x"}
    assert conformance.differences(ref, {**ref, "requestId": "y"}, rule) == []
    assert conformance.differences(ref, {"results": [{**ref["results"][0], "score": 0.5 + 1e-7}]}, rule) == []
    assert conformance.differences(ref, {"results": [{**ref["results"][0], "score": 0.501}]}, rule)
    assert conformance.differences(ref, {"results": []}, rule)
    assert conformance.differences(ref, {"results": [{**ref["results"][0], "labelScores": [{"label": "b", "score": 0.1}]}]}, rule)
    # proto3 JSON leaves defaults out: a missing index equals 0, a missing flag false.
    assert conformance.differences({"index": 0, "truncated": False}, {}, rule) == []
    assert conformance.differences({"index": 1}, {}, rule)


def test_a_wrong_expectation_in_the_case_file_is_reported(suite, reference):
    broken = json.loads(json.dumps(suite))
    case = next(c for c in broken["cases"] if c["name"] == "error_token_id_outside_vocabulary")
    case["expect"]["field"] = "inputs[0]"
    assert any("error_token_id_outside_vocabulary" in p for p in conformance.check_reference(broken, reference[0]))
