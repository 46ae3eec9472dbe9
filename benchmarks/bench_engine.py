"""Our engine offline: throughput, single-request latency, a kernel profile; the bf16 matmul peak."""
from __future__ import annotations

import time

import numpy as np
import torch


def make_engine(folder, device: str, dtype: str, compile: bool, graphs: bool, max_tokens: int,
                attention_backend: str = "auto"):
    import os

    from rewardserve.engine import torch_setup
    from rewardserve.engine.config import EngineConfig, ModelConfig, PrefixConfig, RunnerConfig, SchedulerConfig
    from rewardserve.engine.engine import Engine

    torch_setup.configure(torch_setup.cache_dir_from(os.environ))  # the benchmarks' entry point
    start = time.monotonic()
    # The prefix cache stays off here: these sections repeat the same ids pass after pass (the
    # cache would read them back) and compare with runs from before it existed; bench_prefix.py
    # measures it on fresh ids.
    engine = Engine(EngineConfig(model=ModelConfig(model=str(folder), dtype=dtype),
                                 runner=RunnerConfig(device=device, compile=compile, cuda_graphs=graphs,
                                                     attention_backend=attention_backend),
                                 scheduler=SchedulerConfig(max_num_batched_tokens=max_tokens),
                                 prefix=PrefixConfig(prefix_cache_gb=0)))
    load_s = time.monotonic() - start
    warm_s = engine.core.runner.warm_up(max_tokens)
    from rewardserve.engine.models.rotary import RotaryTable

    model = engine.core.runner.model
    return engine, {"load_s": round(load_s, 1), "warm_up_s": round(warm_s, 1), **engine.core.runner.stats,
                    "attention_backend": engine.core.runner.backend,
                    "rope_table": any(isinstance(m, RotaryTable) for m in model.modules())}


def throughput(engine, seqs: list[list[int]], repeats: int = 2) -> dict:
    """Best of ``repeats`` full passes of ``Engine.encode`` (validation, packing, forward, results)."""
    engine.encode(seqs[: max(1, len(seqs) // 8)], task="classify")  # warm the allocator for these shapes
    _sync()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        forget_prefixes(engine)  # each pass computes the workload as if new (a prefix cache would hold it)
        start = time.perf_counter()
        results = engine.encode(seqs, task="classify")
        times.append(time.perf_counter() - start)
    assert len(results) == len(seqs) and all(np.isfinite(float(r.data[0])) for r in results)
    tokens = sum(map(len, seqs))
    out = {"seconds": min(times), "all_seconds": times, "tokens": tokens, "tok_s": tokens / min(times)}
    out.update(gpu_busy(engine, seqs))
    if torch.cuda.is_available():
        out["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def forget_prefixes(engine) -> None:
    """Empty every runner's prefix cache (engine/prefix_cache.py), if it has one."""
    for runner in engine.core.runners:
        if runner.cache is not None:
            runner.cache.clear()


def latency(call, lengths=(128, 512, 2048), n: int = 50, id_limit: int = 1000, seed: int = 7) -> dict:
    """p50/p99 wall milliseconds of ``call([ids])`` for one request of each length."""
    rng = np.random.default_rng(seed)
    out = {}
    for length in lengths:
        ids = rng.integers(1, id_limit, length).tolist()
        for _ in range(5):
            call([ids])
        times = []
        for _ in range(n):
            start = time.perf_counter()
            call([ids])
            times.append((time.perf_counter() - start) * 1e3)
        out[str(length)] = {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
                            "min_ms": float(min(times)), "n": n}
    return out


def gpu_busy(engine, seqs: list[list[int]]) -> dict:
    """One more pass with per-batch CUDA events: GPU time of the batches over wall time."""
    runner = engine.core.runner
    if not torch.cuda.is_available():
        return {}
    forget_prefixes(engine)
    runner.gpu_ms = []
    start = time.perf_counter()
    engine.encode(seqs, task="classify")
    wall = time.perf_counter() - start
    busy, runner.gpu_ms = sum(runner.gpu_ms) / 1e3, None
    return {"gpu_busy_fraction": busy / wall, "gpu_batch_s": busy, "events_pass_s": wall}


def profile(engine, seqs: list[list[int]], top: int = 15, repeats: int = 1) -> dict:
    """torch.profiler over ``repeats`` passes: top kernels by GPU time, and how busy the GPU was."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    engine.encode(seqs, task="classify")
    start = time.perf_counter()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            engine.encode(seqs, task="classify")
        _sync()
    wall = (time.perf_counter() - start) / repeats
    rows = []
    for evt in prof.key_averages():
        t = getattr(evt, "self_device_time_total", None) or getattr(evt, "self_cuda_time_total", 0)
        if t > 0:
            rows.append((t / 1e3, evt.key[:90], evt.count))
    rows.sort(reverse=True)
    rows = [(ms / repeats, k, c // repeats) for ms, k, c in rows]
    total = sum(r[0] for r in rows)
    return {"wall_ms": wall * 1e3, "gpu_kernel_ms": total, "gpu_busy_fraction": total / (wall * 1e3),
            "top": [{"kernel": k, "ms": round(ms, 2), "pct": round(100 * ms / total, 1), "calls": c}
                    for ms, k, c in rows[:top]]}


def peak_matmul_tflops(sizes=((8192, 8192, 8192), (16384, 8192, 4096)), iters: int = 30) -> dict:
    """Measured bf16 matmul peak (cuBLAS through torch.mm, random data, median of timed runs)."""
    out = {}
    for m, k, n in sizes:
        a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(k, n, device="cuda", dtype=torch.bfloat16)
        for _ in range(5):
            torch.mm(a, b)
        times = []
        for _ in range(iters):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            torch.mm(a, b)
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e) / 1e3)
        out[f"{m}x{k}x{n}"] = 2 * m * k * n / float(np.median(times)) / 1e12
        del a, b
    return {"tflops": max(out.values()), "by_shape": out}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
