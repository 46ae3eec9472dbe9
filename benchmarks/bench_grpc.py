"""Our engine through the gRPC server: `rewardserve serve` as a subprocess on 127.0.0.1, driven by
many concurrent AsyncRewardClient calls (saturation) and by one call at a time (latency)."""
from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SERVE = "from rewardserve.service.cli import main; raise SystemExit(main())"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``rewardserve serve`` in a subprocess; ``start`` waits until health says SERVING."""

    def __init__(self, folder, log_path: Path, *, dtype: str, compile: bool, graphs: bool, max_tokens: int,
                 extra: tuple[str, ...] = (), unbounded_queue: bool = True, prefix_cache_gb: str | None = "0"):
        """``folder`` None serves the built-in demo model. ``unbounded_queue`` lifts the admission
        limits (saturation runs must never be refused); overload runs keep the server's defaults."""
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        model = ["--model", str(folder)] if folder is not None else []
        queue = ["--max-queue-requests", "100000", "--max-queue-tokens", "100000000"] if unbounded_queue else []
        self.args = [sys.executable, "-c", SERVE, "serve", *model, "--host", "127.0.0.1",
                     "--port", str(self.port), "--dtype", dtype, "--max-num-batched-tokens", str(max_tokens),
                     "--compile" if compile else "--no-compile", "--cuda-graphs" if graphs else "--no-cuda-graphs",
                     *queue, *extra]
        # The prefix cache off by default here: the sections repeat the same ids (see
        # bench_engine.make_engine); None: the server's default size.
        if prefix_cache_gb is not None:
            self.args += ["--prefix-cache-gb", prefix_cache_gb]
        self.proc: subprocess.Popen | None = None
        self.ready_s = 0.0

    def start(self, timeout_s: float = 600) -> float:
        start = time.monotonic()
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT, env=os.environ.copy())
        while time.monotonic() - start < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log_path}")
            if _serving(self.target):
                self.ready_s = time.monotonic() - start
                return self.ready_s
            time.sleep(0.5)
        raise TimeoutError(f"server not SERVING after {timeout_s}s; see {self.log_path}")

    def event_loop(self) -> str:
        """The event loop the server logged at start-up ("uvloop" or "asyncio")."""
        match = re.search(r"event loop: (\w+)", self.log_path.read_text())
        return match.group(1) if match else "unknown"

    def gpu_memory_gb(self) -> float | None:
        """The server process's GPU memory from nvidia-smi (None when unavailable)."""
        try:
            out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        for line in out.splitlines():
            pid, mem = (x.strip() for x in line.split(","))
            if self.proc and pid == str(self.proc.pid):
                return float(mem) / 1024
        return None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if getattr(self, "log", None):
            self.log.close()


def _serving(target: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        return reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


async def _saturate(target: str, seqs: list[list[int]], per_request: int, concurrency: int) -> dict:
    from rewardserve_client import AsyncRewardClient

    requests = [seqs[i:i + per_request] for i in range(0, len(seqs), per_request)]
    queue: asyncio.Queue = asyncio.Queue()
    for r in requests:
        queue.put_nowait(r)
    done = []
    async with AsyncRewardClient(target, timeout=600, max_retries=0) as client:
        await client.encode(requests[0], task="classify")  # connect and warm

        async def worker():
            while not queue.empty():
                req = queue.get_nowait()
                reply = await client.encode(req, task="classify")
                done.append(len(reply.results))

        start = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        seconds = time.perf_counter() - start
    tokens = sum(map(len, seqs))
    assert sum(done) == len(seqs)
    return {"seconds": seconds, "tokens": tokens, "tok_s": tokens / seconds, "seqs_per_request": per_request,
            "concurrency": concurrency, "requests": len(requests)}


async def _latency(target: str, lengths, n: int, id_limit: int, seed: int = 7) -> dict:
    """One AsyncRewardClient.encode call at a time (an asyncio trainer's path)."""
    from rewardserve_client import AsyncRewardClient

    out = {}
    async with AsyncRewardClient(target, timeout=60, max_retries=0) as client:
        for length, ids in _latency_inputs(lengths, id_limit, seed):
            for _ in range(5):
                await client.encode([ids], task="classify")
            times, server = [], []
            for _ in range(n):
                start = time.perf_counter()
                reply = await client.encode([ids], task="classify")
                times.append((time.perf_counter() - start) * 1e3)
                server.append(reply.timing.total_seconds * 1e3)
            out[str(length)] = _summary(times, server)
    return out


def sync_latency(target: str, lengths=(128, 512, 2048), n: int = 50, id_limit: int = 1000, seed: int = 7) -> dict:
    """One blocking RewardClient.encode call at a time (a PPO loop's path: no event loop)."""
    from rewardserve_client import RewardClient

    out = {}
    with RewardClient(target, timeout=60, max_retries=0) as client:
        for length, ids in _latency_inputs(lengths, id_limit, seed):
            for _ in range(5):
                client.encode([ids], task="classify")
            times, server = [], []
            for _ in range(n):
                start = time.perf_counter()
                reply = client.encode([ids], task="classify")
                times.append((time.perf_counter() - start) * 1e3)
                server.append(reply.timing.total_seconds * 1e3)
            out[str(length)] = _summary(times, server)
    return out


def health_floor(target: str, n: int = 200) -> dict:
    """A bare gRPC Health check, one at a time: this machine's floor for any Python gRPC call
    (the spread between machine instances shows here first)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub, request = health_pb2_grpc.HealthStub(channel), health_pb2.HealthCheckRequest()
        for _ in range(20):
            stub.Check(request, timeout=10)
        times = []
        for _ in range(n):
            start = time.perf_counter()
            stub.Check(request, timeout=10)
            times.append((time.perf_counter() - start) * 1e3)
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)), "n": n}


def _latency_inputs(lengths, id_limit: int, seed: int):
    rng = np.random.default_rng(seed)
    return [(length, rng.integers(1, id_limit, length).tolist()) for length in lengths]


def _summary(times: list[float], server: list[float]) -> dict:
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
            "min_ms": float(min(times)), "server_total_p50_ms": float(np.percentile(server, 50)), "n": len(times)}


def saturate(target: str, seqs, per_request: int = 4, concurrency: int = 64) -> dict:
    return asyncio.run(_saturate(target, seqs, per_request, concurrency))


def latency(target: str, lengths=(128, 512, 2048), n: int = 50, id_limit: int = 1000) -> dict:
    return asyncio.run(_latency(target, lengths, n, id_limit))
