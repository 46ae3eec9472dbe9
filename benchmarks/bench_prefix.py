"""Shared-prefix reuse (issue 18): the long-prompt GRPO workload with reuse on and with
--no-prefix-reuse, in the same run, offline and through StreamReward.

Tokens/s count every token of every sequence (prompt included, for every response), so the
modes are compared on the same work. ``offline``: ``Engine.encode`` of the whole workload (a
group arrives together). ``streamed``: ``rewardserve serve`` driven by one StreamReward call that
keeps ``in_flight_groups`` groups in flight, each sending its items one by one (the server sees
them interleaved, as a trainer streaming rollouts would send them).

Modes: ``reuse`` (the default server: within-batch sharing and the prefix cache at its default
size), ``within_batch`` (``--prefix-cache-gb 0``) and ``no_reuse`` (``--no-prefix-reuse``). The
prefix cache never sees a pass's ids before that pass: it is emptied before each offline pass,
and each streamed pass sends ids shifted to values no earlier pass used (same lengths, so the
same work), so only reuse inside a pass counts.
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import bench_engine
import bench_grpc


MODES = {"reuse": (True, None), "within_batch": (True, 0.0), "no_reuse": (False, None)}  # (reuse, cache GiB)


def make_engine(folder, device: str, dtype: str, compile: bool, max_tokens: int, attention_backend: str,
                reuse: bool, cache_gb: float | None = None):
    """An offline Engine like ``bench_engine.make_engine`` (CUDA graphs on), with prefix reuse on or off."""
    import os

    from rewardserve.engine import torch_setup
    from rewardserve.engine.config import EngineConfig, ModelConfig, PrefixConfig, RunnerConfig, SchedulerConfig
    from rewardserve.engine.engine import Engine

    torch_setup.configure(torch_setup.cache_dir_from(os.environ))
    start = time.monotonic()
    engine = Engine(EngineConfig(model=ModelConfig(model=str(folder), dtype=dtype),
                                 runner=RunnerConfig(device=device, compile=compile, cuda_graphs=True,
                                                     attention_backend=attention_backend),
                                 scheduler=SchedulerConfig(max_num_batched_tokens=max_tokens),
                                 prefix=PrefixConfig(prefix_reuse=reuse, prefix_cache_gb=cache_gb if reuse else None)))
    warm_s = engine.core.runner.warm_up(max_tokens)
    return engine, {"load_s": round(time.monotonic() - start - warm_s, 1), "warm_up_s": round(warm_s, 1),
                    "prefix_reuse": engine.core.prefix is not None, "attention_backend": engine.core.runner.backend,
                    "prefix_cache_gb": engine.core.runner.stats.get("prefix_cache_gb", 0)}


def offline(folder, seqs: list[list[int]], *, device: str, dtype: str, compile: bool, max_tokens: int,
            attention_backend: str) -> dict:
    """tok/s of the workload with reuse on and off (same process, one engine at a time)."""
    import gc

    import torch

    out = {}
    for mode, (reuse, cache_gb) in MODES.items():
        engine, info = make_engine(folder, device, dtype, compile, max_tokens, attention_backend, reuse, cache_gb)
        result = bench_engine.throughput(engine, seqs)  # empties the cache before each pass
        bench_engine.forget_prefixes(engine)
        results = engine.encode(seqs[:64], task="classify")
        result.update(info, reused_fraction_first64=sum(r.reused_tokens for r in results) / sum(map(len, seqs[:64])))
        out[mode] = result
        del engine
        gc.collect()
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    out["speedup"] = out["reuse"]["tok_s"] / out["no_reuse"]["tok_s"]
    out["speedup_within_batch"] = out["within_batch"]["tok_s"] / out["no_reuse"]["tok_s"]
    return out


async def _stream(target: str, groups: list[list[list[int]]], in_flight_groups: int) -> dict:
    from rewardserve_client import AsyncRewardClient

    queue: asyncio.Queue = asyncio.Queue()
    for g, group in enumerate(groups):
        queue.put_nowait((g, group))
    done = [0]
    max_in_flight = in_flight_groups * max(len(g) for g in groups)
    async with AsyncRewardClient(target, timeout=600, max_retries=0) as client:
        async with client.stream(max_in_flight=max_in_flight) as stream:
            await stream.score({"rendered": {"token_ids": groups[0][0]}})  # connect and warm

            async def worker():
                while not queue.empty():
                    g, group = queue.get_nowait()
                    futures = []
                    for ids in group:  # one by one: each item its own message
                        futures.append(await stream.submit({"rendered": {"token_ids": ids}}, group_id=f"g{g}"))
                        await asyncio.sleep(0)
                    for future in futures:
                        await future
                        done[0] += 1

            start = time.perf_counter()
            await asyncio.gather(*[worker() for _ in range(in_flight_groups)])
            seconds = time.perf_counter() - start
    tokens = sum(len(s) for g in groups for s in g)
    assert done[0] == sum(map(len, groups))
    return {"seconds": seconds, "tokens": tokens, "tok_s": tokens / seconds, "in_flight_groups": in_flight_groups,
            "items": done[0]}


def within_tokenizer(folder, groups: list[list[list[int]]], shift: int = 0) -> list[list[list[int]]]:
    """The ids mapped into the checkpoint's tokenizer (1..len - 1): stream items are rendered
    conversations, whose ids the server checks against the tokenizer (the benchmarks' checkpoints
    carry a small one). The forward's cost does not depend on which ids it reads. ``shift`` moves
    every id (a pass the prefix cache has not seen: same lengths, same sharing, new ids)."""
    from transformers import AutoTokenizer

    size = len(AutoTokenizer.from_pretrained(str(folder)))
    return [[[1 + (t - 1 + 7919 * shift) % (size - 1) for t in seq] for seq in group] for group in groups]


def streamed(folder, groups: list[list[list[int]]], *, dtype: str, compile: bool, max_tokens: int,
             attention_backend: str, logdir: Path, in_flight_groups: int = 8) -> dict:
    """StreamReward tok/s with reuse on and off (a server each, one after the other)."""
    passes = [within_tokenizer(folder, groups, shift) for shift in range(3)]  # warm-up, then two timed
    out = {}
    for mode, (reuse, cache_gb) in MODES.items():
        extra = ("--attention-backend", attention_backend, "--prefix-reuse" if reuse else "--no-prefix-reuse")
        server = bench_grpc.Server(folder, logdir / f"server-prefix-{mode}.log", dtype=dtype, compile=compile,
                                   graphs=True, max_tokens=max_tokens, extra=extra,
                                   prefix_cache_gb=None if cache_gb is None else str(cache_gb))
        try:
            ready = server.start()
            asyncio.run(_stream(server.target, passes[0][:in_flight_groups], in_flight_groups))  # warm the shapes
            best = None
            for groups_of_pass in passes[1:]:
                r = asyncio.run(_stream(server.target, groups_of_pass, in_flight_groups))
                best = r if best is None or r["tok_s"] > best["tok_s"] else best
            best["ready_s"] = ready
            out[mode] = best
        finally:
            server.stop()
    out["speedup"] = out["reuse"]["tok_s"] / out["no_reuse"]["tok_s"]
    out["speedup_within_batch"] = out["within_batch"]["tok_s"] / out["no_reuse"]["tok_s"]
    return out


TARGETS = {  # issue 18: (model, section, threshold)
    "qwen3-0.6b grpo_long reuse >= 2.5x --no-prefix-reuse": ("qwen3-0.6b", "prefix/grpo_long", 2.5),
    "llama-3.1-8b grpo_long reuse >= 2.5x --no-prefix-reuse": ("llama-3.1-8b", "prefix/grpo_long", 2.5),
    "qwen3-0.6b grpo_long streamed reuse >= 2x": ("qwen3-0.6b", "prefix/grpo_long_streamed", 2.0),
    "llama-3.1-8b grpo_long streamed reuse >= 2x": ("llama-3.1-8b", "prefix/grpo_long_streamed", 2.0),
}


def targets(data: dict) -> dict:
    """Issue 18's verdicts from the prefix sections that ran."""
    verdict = {}
    for label, (model, key, threshold) in TARGETS.items():
        value = data["models"].get(model, {}).get(key, {}).get("speedup")
        if value is not None:
            verdict[label] = {"value": value, "met": value >= threshold}
    return verdict
