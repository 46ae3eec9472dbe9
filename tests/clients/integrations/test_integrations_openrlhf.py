"""The OpenRLHF proxy against a live server: POST /get_reward answers rewards and scores for
policy-rendered queries (padding and all), errors are HTTP errors, and the console script is
answered by curl the way README shows it."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from rewardserve_client import RewardClient
from rewardserve_client.integrations.openrlhf import OpenRLHFProxy

pytestmark = pytest.mark.slow
CONVERSATIONS = [[{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": a}]
                 for a in ("4", "The answer is 4.", "5")]


def post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def queries(llama_dir) -> list[str]:
    """What OpenRLHF posts: sequences decoded with special tokens, left padding included."""
    llama = AutoTokenizer.from_pretrained(str(llama_dir))
    return [llama.pad_token * 2 + llama.apply_chat_template(c, tokenize=False) for c in CONVERSATIONS]


@pytest.fixture(scope="module")
def direct(live_server) -> list[float]:
    with RewardClient(live_server.target) as client:
        return client.chat_reward(CONVERSATIONS).scores


def test_get_reward_answers_rewards_and_scores_for_policy_rendered_queries(live_server, queries, direct):
    proxy = OpenRLHFProxy(live_server.target, port=0, policy_tokenizer="llama").start()
    try:
        url = f"http://127.0.0.1:{proxy.port}/get_reward"
        status, reply = post(url, json.dumps({"query": queries, "prompts": ["p"] * 3, "labels": ["4"] * 3}).encode())
        assert status == 200 and reply["rewards"] == pytest.approx(direct, abs=1e-6)
        assert reply["scores"] == reply["rewards"]
        for body, code in [(b"not json", 400), (b'{"prompts": []}', 400),
                           (json.dumps({"query": queries, "labels": ["x"]}).encode(), 400)]:
            status, reply = post(url, body)
            assert (status, reply["code"]) == (code, "BAD_REQUEST"), reply
        status, reply = post(url, json.dumps({"query": [queries[0], "no template at all"]}).encode())
        assert status == 400 and reply["code"] == "INVALID_ARGUMENT"
        assert reply["error"].startswith("conversations[1]: rendered:") and reply["request_id"]
    finally:
        proxy.stop()


def test_an_unreachable_reward_server_is_a_503(unused_port):
    proxy = OpenRLHFProxy(f"127.0.0.1:{unused_port}", port=0, timeout=2).start()
    try:
        status, reply = post(f"http://127.0.0.1:{proxy.port}/get_reward", b'{"query": ["x"]}')
        assert status == 503 and reply["code"] == "UNAVAILABLE"
    finally:
        proxy.stop()


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_the_console_script_answers_curl(live_server, queries, direct, unused_port):
    script = Path(sys.executable).with_name("rewardserve-client")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "rewardserve_client.cli"]
    proc = subprocess.Popen([*command, "openrlhf-proxy", "--target", live_server.target, "--port", str(unused_port),
                             "--policy-tokenizer", "llama"], stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{unused_port}"
        _wait_for_health(url)
        out = subprocess.run(["curl", "-sf", "-X", "POST", f"{url}/get_reward", "-H", "Content-Type: application/json",
                              "-d", json.dumps({"query": queries})], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["rewards"] == pytest.approx(direct, abs=1e-6)
        failed = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
                                 f"{url}/get_reward", "-d", "{}"], capture_output=True, text=True, timeout=60)
        assert failed.stdout == "400"
    finally:
        proc.terminate()
        proc.wait(10)


def _wait_for_health(url: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("the proxy never answered /health")


@pytest.fixture
def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
