"""examples/ run as written against a live server (the demo model)."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def run(*command: str, env: dict | None = None) -> str:
    out = subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_trl_example(live_server):
    lines = run(sys.executable, str(EXAMPLES / "trl_reward_func.py"), "--target", live_server.target).splitlines()
    sync, async_ = (ast.literal_eval(line.split(":", 1)[1].strip()) for line in lines)
    assert sync[2] is None and async_[2] is None and all(isinstance(s, float) for s in sync[:2])
    assert async_[:2] == pytest.approx(sync[:2], abs=1e-5)  # batches packed differently: float noise only


def test_verl_example(live_server):
    lines = run(sys.executable, str(EXAMPLES / "verl_compute_score.py"),
                env={"REWARDSERVE_TARGET": live_server.target}).splitlines()
    assert len(lines) == 3 and all("'score'" in line for line in lines)


def test_openrlhf_example(live_server, tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    reply = json.loads(run("bash", str(EXAMPLES / "openrlhf_proxy.sh"), live_server.target, str(port)))
    assert len(reply["rewards"]) == 2 and reply["scores"] == reply["rewards"]
