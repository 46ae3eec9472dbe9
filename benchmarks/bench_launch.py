"""Where ONE request's time goes inside the engine (GPU machine): host launch vs device work.

For single requests of 128, 512 and 2048 tokens through the offline ``Engine.encode`` (compile
and CUDA graphs as configured) it times, per call: ``prepare`` (validation, WorkItems), the
runner's ``launch`` on the host (staging, copy in, graph replay, pooling and head launches, copy
out), the host time of ``CUDAGraph.replay`` alone, the wait in ``collect``, and on the device the
span from the start of ``launch`` to the results (CUDA events). A launch that takes longer on the
host than the device needs to start is latency the GPU cannot hide. A profiler pass of the
512-token call lists the CUDA runtime calls by host time.

    python benchmarks/bench_launch.py --model DIR --compile --out launch.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_engine  # noqa: E402

STAGES = ("prepare", "launch", "replay", "collect", "total")


class StageTimer:
    """Wraps the engine's stages in place (benchmark only) and records each call's host ms."""

    def __init__(self, engine) -> None:
        self.times: dict[str, list[float]] = {s: [] for s in STAGES}
        self.gpu_ms: list[float] = []
        core, runner = engine.core, engine.core.runner
        self._wrap(core, "prepare", "prepare")
        self._wrap(runner, "launch", "launch")
        self._wrap(runner, "collect", "collect")
        self._wrap_replay()
        runner.gpu_ms = self.gpu_ms

    def _wrap(self, owner, name: str, stage: str) -> None:
        fn = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.times[stage].append((time.perf_counter() - start) * 1e3)
        setattr(owner, name, timed)

    def _wrap_replay(self) -> None:
        replay = torch.cuda.CUDAGraph.replay
        times = self.times["replay"]

        def timed(graph):
            start = time.perf_counter()
            replay(graph)
            times.append((time.perf_counter() - start) * 1e3)
        torch.cuda.CUDAGraph.replay = timed

    def reset(self) -> None:
        for values in self.times.values():
            values.clear()
        self.gpu_ms.clear()

    def summary(self) -> dict:
        out = {f"{s}_p50_ms": round(float(np.median(v)), 4) for s, v in self.times.items() if v}
        if self.gpu_ms:
            out["device_span_p50_ms"] = round(float(np.median(self.gpu_ms)), 4)
        return out


def measure(engine, timer: StageTimer, lengths: list[int], n: int, id_limit: int) -> dict:
    rng = np.random.default_rng(7)
    out = {}
    for length in lengths:
        ids = rng.integers(1, id_limit, length).tolist()
        for _ in range(5):
            engine.encode([ids], task="classify")
        timer.reset()
        for _ in range(n):
            start = time.perf_counter()
            engine.encode([ids], task="classify")
            timer.times["total"].append((time.perf_counter() - start) * 1e3)
        out[str(length)] = timer.summary()
        print(length, out[str(length)], flush=True)
    return out


def runtime_calls(engine, length: int, id_limit: int, top: int = 12) -> list[dict]:
    """Host time of CUDA runtime / driver calls in one ``length``-token call (profiler)."""
    from torch.profiler import ProfilerActivity, profile

    ids = np.random.default_rng(7).integers(1, id_limit, length).tolist()
    engine.encode([ids], task="classify")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            engine.encode([ids], task="classify")
    rows = [(e.cpu_time_total / 10 / 1e3, e.key[:80], e.count // 10) for e in prof.key_averages()
            if e.key.startswith("cuda") or e.key.startswith("aten::")]
    rows.sort(reverse=True)
    kernels = sum(e.count for e in prof.key_averages() if getattr(e, "device_type", None) is not None
                  and str(e.device_type).endswith("CUDA")) // 10
    return [{"call": k, "host_ms": round(ms, 4), "count": c} for ms, k, c in rows[:top]] + \
        [{"device_events_per_call": kernels}]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="model folder")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--lengths", default="128,512,2048")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--id-limit", type=int, default=100000)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="")
    args = p.parse_args()
    engine, setup = bench_engine.make_engine(args.model, args.device, "bfloat16", args.compile, True, 16384)
    timer = StageTimer(engine)
    name = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    result = {"device": name, "setup": setup,
              "stages": measure(engine, timer, [int(x) for x in args.lengths.split(",")], args.n, args.id_limit),
              "runtime_calls_512": runtime_calls(engine, 512, args.id_limit)}
    print(json.dumps(result["runtime_calls_512"], indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
