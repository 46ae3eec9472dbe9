"""Data parallel over tensor-parallel groups on the CPU (gloo): ``--data-parallel-size 2
--tensor-parallel-size 2`` (replica 0 in this process with its rank 1; replica 1 a leader process
with its own rank 1) gives the numbers of one rank within 1e-5 for classify and step scores, and
a killed rank or leader of replica 1 leaves replica 0 serving, with replica 1's batches requeued
onto it. (Its own module: a process belongs to one torch.distributed group at a time.)"""
from __future__ import annotations

import asyncio
import os
import signal

import pytest
import torch

from rewardserve.engine.async_engine import AsyncEngine
from rewardserve.engine.config import EngineConfig, ModelConfig, ParallelConfig, RunnerConfig, SchedulerConfig
from rewardserve.engine.errors import EngineError, ItemFailedError
from rewardserve.engine.remote_replica import RemoteRunner, portable, replica_config
from rewardserve.engine.tensor_parallel import RankLost
from rewardserve.engine.types import PoolingParams, PoolingType

from test_replicas import Held  # tests/engine is on sys.path (prepend imports)

TEXTS = ["a short one", "step one <extra_0> step two <extra_0> and the end <extra_0>",
         "a somewhat longer text, so the batch holds sequences of mixed lengths " * 3, "x", "two <extra_0> steps <extra_0>"]
TOLERANCE = 1e-5


def config(model_dir) -> EngineConfig:
    return EngineConfig(model=ModelConfig(model=str(model_dir), dtype="float32"), runner=RunnerConfig(device="cpu"),
                        scheduler=SchedulerConfig(max_num_batched_tokens=2048, max_num_seqs=1),  # a batch a request
                        parallel=ParallelConfig(data_parallel_size=2, tensor_parallel_size=2))


async def started(model_dir) -> AsyncEngine:
    engine = await asyncio.to_thread(AsyncEngine.from_config, config(model_dir))
    await engine.start()
    return engine


def step_params(demo_engine) -> PoolingParams:
    step = demo_engine.core.tokenizer.hf.convert_tokens_to_ids("<extra_0>")
    return PoolingParams(pooling_type=PoolingType.STEP, step_tag_id=step)


def expected(demo_engine) -> list[torch.Tensor]:
    classify = [r.data for r in demo_engine.encode(TEXTS, task="classify")]
    steps = [r.data for r in demo_engine.encode(TEXTS, task="token_classify", params=step_params(demo_engine))]
    return classify + steps


def requests(engine: AsyncEngine, demo_engine) -> list:
    """One request per text and task: classify, then step scores."""
    params = step_params(demo_engine)
    return [engine.encode([t], task="classify") for t in TEXTS] + \
        [engine.encode([t], task="token_classify", params=params) for t in TEXTS]


def assert_close(got: list, want: list[torch.Tensor]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g[0].data.shape == w.shape
        assert torch.allclose(g[0].data, w, rtol=0, atol=TOLERANCE)


async def test_two_tensor_parallel_replicas_equal_one_rank(demo_model_dir, demo_engine):
    want = expected(demo_engine)
    engine = await started(demo_model_dir)
    held = []
    try:
        assert isinstance(engine.core.runners[1], RemoteRunner) and engine.stats().replicas_total == 2
        engine.core.wrap_forward(lambda inner: held.append(Held(inner)) or held[-1], replica=0)
        calls = requests(engine, demo_engine)
        first = asyncio.create_task(calls[0])
        await asyncio.to_thread(held[0].entered.wait, 30)  # replica 0 is busy with the first request
        rest = await asyncio.wait_for(asyncio.gather(*calls[1:]), 120)  # so replica 1 (the leader) computes the rest
        assert held[0].batches == 0 and not first.done() and engine.core.runners[1].num_batches == len(rest)
        held[0].gate.set()
        assert_close([await first, *rest], want)
        assert engine.stats().replicas_alive == 2 and engine.is_ready
    finally:
        for h in held:
            h.gate.set()
        await engine.shutdown(5)


@pytest.mark.parametrize("victim", ["rank", "leader"])
async def test_a_lost_process_of_replica_1_leaves_replica_0_serving(demo_model_dir, demo_engine, victim, caplog):
    want = expected(demo_engine)
    engine = await started(demo_model_dir)
    held = []
    try:
        remote = engine.core.runners[1]
        os.kill(remote.rank_pids[0] if victim == "rank" else remote.pid, signal.SIGKILL)
        engine.core.wrap_forward(lambda inner: held.append(Held(inner)) or held[-1], replica=0)
        tasks = [asyncio.create_task(call) for call in requests(engine, demo_engine)]
        await asyncio.to_thread(held[0].entered.wait, 30)  # replica 0 holds one batch: replica 1 takes the next
        for _ in range(1200):
            if engine.stats().replicas_alive == 1:
                break
            await asyncio.sleep(0.05)
        assert engine.stats().replicas_alive == 1
        held[0].gate.set()
        assert_close(await asyncio.wait_for(asyncio.gather(*tasks), 120), want)
        stats = engine.stats()
        assert stats.num_failed_items == 0 and stats.queued_requests == 0
        assert engine.is_ready  # SERVING while one replica lives
        assert "replica 1 (cpu) lost" in caplog.text
    finally:
        for h in held:
            h.gate.set()
        await engine.shutdown(5)


def test_errors_come_back_as_their_own_type_or_a_portable_one():
    oom = torch.OutOfMemoryError("CUDA out of memory (injected)")
    assert portable(oom) is oom  # out of memory still splits the batch
    lost = RankLost("tensor-parallel rank 1 died (exit code -9)")
    assert portable(lost) is lost
    item = ItemFailedError("inputs", "could not be computed", 3)  # its __init__ does not unpickle
    back = portable(item)
    assert type(back) is EngineError and "ItemFailedError" in str(back) and "could not be computed" in str(back)
    odd = portable(ValueError(lambda: 0))  # an argument that does not pickle
    assert type(odd) is RuntimeError and str(odd).startswith("ValueError: ")


def test_each_replica_group_gets_its_own_devices(demo_model_dir):
    cfg = replica_config(config(demo_model_dir), 1)
    assert cfg.runner.device == "cpu" and cfg.parallel.data_parallel_size == 1
    assert cfg.parallel.tensor_parallel_size == 2


async def test_a_lost_rank_of_replica_0_leaves_the_leader_serving(demo_model_dir, demo_engine, caplog):
    """The serving process's own group fails: replica 1 (the leader) computes everything."""
    want = expected(demo_engine)
    engine = await started(demo_model_dir)
    try:
        engine.core.tensor_parallel.processes[0].kill()  # replica 0's rank 1
        got = await asyncio.wait_for(asyncio.gather(*requests(engine, demo_engine)), 120)
        assert_close(got, want)
        stats = engine.stats()
        assert stats.replicas_alive == 1 and stats.num_failed_items == 0 and engine.is_ready
        assert engine.core.runners[1].num_batches >= len(want)
        assert "replica 0 (cpu) lost" in caplog.text
    finally:
        await engine.shutdown(5)
