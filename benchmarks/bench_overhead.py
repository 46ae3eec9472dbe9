"""What the Python gRPC path adds to ONE request, with the forward pass taken out (CPU).

A ``rewardserve`` server runs in a subprocess on 127.0.0.1 around the real AsyncEngine (demo
model unless ``--model``). With ``--engine null`` (the default) the runner's ``launch`` returns
a fixed result at once, so what is timed is everything but compute: the client library,
protobuf, HTTP/2 on loopback, the servicer and its conversions, prepare, the scheduler, the hop
to the GPU thread and back. ``--engine real`` keeps the forward pass (``--device cuda
--cuda-graphs --model DIR`` on a GPU machine). One call at a time, as in ``bench_grpc._latency``;
floors: a Health check and raw stub calls with a prebuilt request.

``--compare-loops`` runs two servers at once, one on asyncio's event loop and one on uvloop, and
alternates blocking-client calls between them, so that both see the same machine noise.

``--breakdown`` also stamps ``time.perf_counter_ns`` at each stage boundary, in both processes
(CLOCK_MONOTONIC is one clock for the whole machine), and prints the median of each gap, plus
each call's time less the runner's (launch to results), which is the overhead even when the
forward pass runs.

    .venv/bin/python benchmarks/bench_overhead.py --n 400 --tokens 512 --breakdown --json out.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stamps import STAGES, STAMPS, instrument_client, instrument_server, stamp  # noqa: E402


def null_forward(runner) -> None:
    """The runner answers at once with a fixed result: what is left is overhead."""
    import torch

    from rewardserve.engine.runner import Pending

    one = torch.zeros(1)
    runner.launch = lambda items: Pending(items, outputs=[(one, one) for _ in items])


async def serve(args: argparse.Namespace) -> None:
    """The server process, until SIGTERM; stamps go to ``args.stamps`` when set."""
    from rewardserve.engine.config import EngineConfig, ModelConfig, RunnerConfig
    from rewardserve.engine.demo import ensure_demo_model
    from rewardserve.service.config import ServeConfig, ServerConfig
    from rewardserve.service.server import RewardServer, load_engine

    model = args.model or str(ensure_demo_model(os.environ.get("XDG_CACHE_HOME") or None))
    engine_config = EngineConfig(model=ModelConfig(model=model),
                                 runner=RunnerConfig(device=args.device, compile=False,  # eager: the overhead itself
                                                     cuda_graphs=args.cuda_graphs))
    engine = await asyncio.to_thread(load_engine, engine_config)
    if args.engine == "null":
        null_forward(engine.core.runner)
    if args.stamps:
        instrument_server(engine)
    config = ServeConfig(engine=engine_config, server=ServerConfig(host="127.0.0.1", port=args.port,
                                                                   log_level="WARNING"))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with RewardServer(config, engine=engine) as server:
        await server.wait_ready()
        await stop.wait()
    if args.stamps:
        Path(args.stamps).write_text(json.dumps(STAMPS))


# ------------------------------------------------------------------ the client side

def start_server(args: argparse.Namespace, stamps_path: str) -> tuple[subprocess.Popen, str]:
    """This file with ``--serve`` in a subprocess; returns it and its target once SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    options = ["--engine", args.engine, "--model", args.model, "--device", args.device]
    options += ["--cuda-graphs"] if args.cuda_graphs else []
    options += ["--uvloop"] if args.uvloop else []
    proc = subprocess.Popen([sys.executable, __file__, "--serve", "--port", str(port), "--stamps", stamps_path,
                             *options])
    target = f"127.0.0.1:{port}"
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while health.Check(health_pb2.HealthCheckRequest(), wait_for_ready=True, timeout=600).status != 1:
            time.sleep(0.2)  # 1: SERVING
    return proc, target


def summary(times_ns: list[int]) -> dict:
    us = np.asarray(times_ns) / 1e3
    return {"p50_us": round(float(np.percentile(us, 50)), 1), "p99_us": round(float(np.percentile(us, 99)), 1),
            "min_us": round(float(us.min()), 1), "n": len(us)}


def timed(call, n: int, warm: int = 20) -> dict:
    for _ in range(warm):
        call()
    times = []
    for _ in range(n):
        start = time.perf_counter_ns()
        call()
        times.append(time.perf_counter_ns() - start)
    return summary(times)


async def timed_async(call, n: int, warm: int = 20, label: str = "") -> dict:
    for _ in range(warm):
        await call("")
    times = []
    for i in range(n):
        rid = f"{label}{i}" if label else ""
        stamp("c.start", rid)  # stamps of calls without a label are left out of the breakdown
        start = time.perf_counter_ns()
        await call(rid)
        times.append(time.perf_counter_ns() - start)
        stamp("c.end")
    return summary(times)


def raw_request(ids: list[int]):
    from rewardserve_client.v1 import reward_service_pb2 as pb

    return pb.EncodeRequest(task=pb.POOLING_TASK_CLASSIFY, inputs=[{"token_ids": {"ids": ids}}])


def sync_rows(target: str, ids: list[int], n: int) -> dict:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from rewardserve_client import RewardClient
    from rewardserve_client.v1 import reward_service_pb2_grpc as pb_grpc

    request = raw_request(ids)
    with grpc.insecure_channel(target) as channel:
        health, stub = health_pb2_grpc.HealthStub(channel), pb_grpc.RewardServiceStub(channel)
        rows = {"sync health Check": timed(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=10), n),
                "sync raw stub Encode": timed(lambda: stub.Encode(request, timeout=10), n)}
    with RewardClient(target, timeout=10, max_retries=0) as client:
        rows["sync RewardClient.encode"] = timed(lambda: client.encode([ids], task="classify"), n)
    return rows


async def async_rows(target: str, ids: list[int], n: int, breakdown: bool) -> dict:
    import grpc
    from rewardserve_client import AsyncRewardClient
    from rewardserve_client.v1 import reward_service_pb2_grpc as pb_grpc

    request = raw_request(ids)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.RewardServiceStub(channel)
        rows = {"aio raw stub Encode": await timed_async(lambda rid: stub.Encode(request, timeout=10), n)}
    async with AsyncRewardClient(target, timeout=10, max_retries=0) as client:
        call = lambda rid: client.encode([ids], task="classify", request_id=rid or None)  # noqa: E731
        rows["AsyncRewardClient.encode"] = await timed_async(call, n)
        if breakdown:
            instrument_client(client)
            rows["AsyncRewardClient.encode (stamped)"] = await timed_async(call, n, label="bd-")
    return rows


def compare_loops(args: argparse.Namespace, ids: list[int]) -> dict:
    """Paired A/B of the server's event loop: calls alternate between the two servers."""
    from rewardserve_client import RewardClient

    servers = {loop: start_server(argparse.Namespace(**{**vars(args), "uvloop": loop == "uvloop"}), "")
               for loop in ("asyncio", "uvloop")}
    try:
        clients = {loop: RewardClient(target, timeout=10, max_retries=0) for loop, (_, target) in servers.items()}
        times: dict[str, list[int]] = {loop: [] for loop in clients}
        for i in range(args.n + 20):
            for loop, client in (list(clients.items()) if i % 2 else list(clients.items())[::-1]):
                start = time.perf_counter_ns()
                client.encode([ids], task="classify")
                if i >= 20:  # the first calls warm both servers up
                    times[loop].append(time.perf_counter_ns() - start)
        for client in clients.values():
            client.close()
        return {f"sync RewardClient.encode, server on {loop}": summary(t) for loop, t in times.items()}
    finally:
        for proc, _ in servers.values():
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


def stage_gaps(server_stamps: list, label: str) -> list[tuple[str, float]]:
    """Median gap (µs) between consecutive stages that were stamped, over the calls whose
    request id starts with ``label``. A stamp carrying an id starts that call's group."""
    calls: dict[str, dict[str, int]] = {}
    for source in (STAMPS, server_stamps):
        current: dict | None = None
        for stage, t, rid in source:
            if rid is not None:
                current = calls.setdefault(rid, {}) if rid.startswith(label) else None
            if current is not None:
                current.setdefault(stage, t)
    gaps: dict[str, list[int]] = {}
    for call in calls.values():
        present = [s for s in STAGES if s in call]
        for a, b in zip(present, present[1:]):
            gaps.setdefault(f"{a} -> {b}", []).append(call[b] - call[a])
        if {"c.start", "c.end", "g.woke", "g.completing"} <= call.keys():
            runner = call["g.completing"] - call["g.woke"]  # launch, forward pass, collect
            gaps.setdefault("= call less the runner", []).append(call["c.end"] - call["c.start"] - runner)
    return [(name, round(float(np.median(v)) / 1e3, 1)) for name, v in gaps.items() if len(v) > len(calls) // 2]


def print_report(result: dict) -> None:
    print(f"\n{result['tokens']}-token Encode, engine={result['engine']} ({result['model']} on {result['device']}"
          f"{', uvloop' if result['uvloop'] is True else ''}), one call at a time")
    print(f"{'path':48s} {'p50 µs':>9s} {'p99 µs':>9s} {'min µs':>9s}")
    for name, row in result["rows"].items():
        print(f"{name:48s} {row['p50_us']:9.1f} {row['p99_us']:9.1f} {row['min_us']:9.1f}")
    if result.get("breakdown"):
        print("\nstage (median µs, stamped calls)")
        for name, us in result["breakdown"]:
            print(f"  {name:36s} {us:8.1f}")
    print(json.dumps(result))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=400, help="timed calls per row")
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--engine", choices=("null", "real"), default="null", help="null: no forward pass")
    p.add_argument("--model", default="", help="model folder (default: the demo model)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--cuda-graphs", action="store_true")
    p.add_argument("--uvloop", action="store_true", help="run both event loops on uvloop (when installed)")
    p.add_argument("--id-limit", type=int, default=400, help="token ids are drawn below this")
    p.add_argument("--breakdown", action="store_true", help="also time each stage (stamped calls)")
    p.add_argument("--compare-loops", action="store_true", help="paired A/B of the server's loop: asyncio vs uvloop")
    p.add_argument("--json", default="", help="write the result here")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--stamps", default="", help=argparse.SUPPRESS)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if args.serve:
        return asyncio.run(serve(args))
    ids = np.random.default_rng(7).integers(1, args.id_limit, args.tokens).tolist()
    if args.compare_loops:
        result = {"engine": args.engine, "model": args.model or "demo", "device": args.device, "tokens": args.tokens,
                  "uvloop": "compared", "python": sys.version.split()[0], "rows": compare_loops(args, ids)}
        print_report(result)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
        return
    stamps_path = ""
    if args.breakdown:
        fd, stamps_path = tempfile.mkstemp(suffix=".json")
        os.close(fd)
    proc, target = start_server(args, stamps_path)
    try:
        rows = sync_rows(target, ids, args.n)
        rows.update(asyncio.run(async_rows(target, ids, args.n, args.breakdown)))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    result = {"engine": args.engine, "model": args.model or "demo", "device": args.device, "tokens": args.tokens,
              "uvloop": args.uvloop, "python": sys.version.split()[0], "rows": rows}
    if args.breakdown:
        result["breakdown"] = stage_gaps(json.loads(Path(stamps_path).read_text()), "bd-")
    if stamps_path:
        os.unlink(stamps_path)
    print_report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
