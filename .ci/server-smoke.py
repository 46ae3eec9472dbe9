"""Server smoke test of an installed rewardserve: the demo server, one call of each RPC, SIGTERM.

Run it with the Python of the venv under test (it starts that venv's ``rewardserve``), e.g.
after a fresh install from the public index on Python 3.10 or 3.13:

    /tmp/venv310/bin/python .ci/server-smoke.py

Prints one line per step and exits 0 when the server answered every RPC and stopped with exit
code 0 on SIGTERM. Not part of ``make test``: the install it needs (torch's CUDA build from the
public index, about 5 GB) takes longer than CI should wait.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rewardserve_client.v1 import reward_service_pb2 as pb
from rewardserve_client.v1 import reward_service_pb2_grpc as pb_grpc

LISTENING = re.compile(r"rewardserve listening on \S+:(\d+)")
CONVERSATION = pb.Conversation(messages=[pb.ChatMessage(role="user", content="What is 2+2?"),
                                         pb.ChatMessage(role="assistant", content="4")])


def step(name: str, started: float) -> None:
    print(f"smoke: {name} ({time.monotonic() - started:.1f} s)", flush=True)


def main() -> int:
    started = time.monotonic()
    cache = tempfile.mkdtemp(prefix="rewardserve-smoke-")
    command = [str(Path(sys.executable).with_name("rewardserve")), "serve", "--host", "127.0.0.1", "--port", "0",
               "--device", "cpu", "--grace-period-s", "5"]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "XDG_CACHE_HOME": cache})
    lines: list[str] = []
    port: list[str] = []
    found = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            match = LISTENING.search(line)
            if match and not port:
                port.append(match.group(1))
                found.set()
        found.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        if not found.wait(300) or not port:
            raise SystemExit("smoke: the server never listened:\n" + "".join(lines))
        with grpc.insecure_channel(f"127.0.0.1:{port[0]}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while health.Check(health_pb2.HealthCheckRequest(), timeout=10).status != health_pb2.HealthCheckResponse.SERVING:
                if time.monotonic() - started > 600:
                    raise SystemExit("smoke: never SERVING:\n" + "".join(lines))
                time.sleep(0.2)
            step(f"demo server SERVING on port {port[0]}", started)
            stub = pb_grpc.RewardServiceStub(channel)
            info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
            step(f"GetModelInfo: {info.architecture}, vocab {info.vocab_size}, server {info.server_version}", started)
            encoded = stub.Encode(pb.EncodeRequest(task=pb.POOLING_TASK_CLASSIFY, inputs=[
                pb.EncodeInput(text="hello world"), pb.EncodeInput(token_ids=pb.TokenIds(ids=[1, 2, 3]))]), timeout=30)
            step(f"Encode: {len(encoded.results)} results", started)
            reward = stub.Reward(pb.RewardRequest(inputs=[pb.EncodeInput(text="hello")]), timeout=30)
            step(f"Reward (deprecated): {len(reward.results)} result", started)
            chat = stub.ChatReward(pb.ChatRewardRequest(conversations=[CONVERSATION]), timeout=30)
            step(f"ChatReward: score {chat.results[0].score:.4f}, {chat.results[0].num_tokens} tokens", started)
            answers = list(stub.StreamReward(iter([pb.StreamRewardRequest(items=[
                pb.StreamItem(id="a", conversation=CONVERSATION)])]), timeout=30))
            assert [a.id for a in answers] == ["a"] and answers[0].HasField("result"), answers
            step("StreamReward: 1 answer", started)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        step(f"SIGTERM: exit code {code}", started)
        return 0 if code == 0 else 1
    finally:
        if proc.poll() is None:
            proc.kill()


if __name__ == "__main__":
    sys.exit(main())
