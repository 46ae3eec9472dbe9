"""Data parallel on the CPU: two replicas of the demo model behind one scheduler. DP=2 gives the
same numbers as DP=1, work goes to the less-loaded replica, and a replica whose device is lost
(killed through the runner's forward seam) hands its batches to the other; with none left,
requests fail cleanly and the engine stops reporting ready. Shown by results and counters."""
from __future__ import annotations

import asyncio
import random
import threading

import pytest
import torch

from rewardserve.engine.async_engine import AsyncEngine
from rewardserve.engine.config import EngineConfig, ModelConfig, ParallelConfig, RunnerConfig, SchedulerConfig
from rewardserve.engine.engine import Engine
from rewardserve.engine.errors import EngineError, EngineUnavailableError


class Dead:
    """A forward that fails the way a lost GPU does: every call, the probe's included."""

    def __init__(self, _inner):
        self.calls = 0

    def __call__(self, *args):
        self.calls += 1
        raise RuntimeError("CUDA error: unspecified launch failure (injected)")


class Held:
    """A forward that waits at a gate (the replica stays busy with one batch) and counts batches."""

    def __init__(self, inner):
        self.inner = inner
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batches = 0

    def __call__(self, *args):
        self.entered.set()
        self.gate.wait(20)
        self.batches += 1
        return self.inner(*args)


def config(model_dir, dp: int, max_num_seqs: int = 256) -> EngineConfig:
    return EngineConfig(model=ModelConfig(model=str(model_dir)), runner=RunnerConfig(device="cpu"),
                        scheduler=SchedulerConfig(max_num_batched_tokens=2048, max_num_seqs=max_num_seqs),
                        parallel=ParallelConfig(data_parallel_size=dp))


async def started(cfg: EngineConfig) -> AsyncEngine:
    engine = await asyncio.to_thread(AsyncEngine.from_config, cfg)
    await engine.start()
    return engine


def random_seqs(n: int, seed: int = 3) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1, 400) for _ in range(rng.randint(1, 200))] for _ in range(n)]


async def encode_all(engine: AsyncEngine, seqs: list[list[int]]) -> list[torch.Tensor]:
    results = await asyncio.wait_for(asyncio.gather(*(engine.encode([s]) for s in seqs)), 60)
    return [r[0].data for r in results]


async def test_two_replicas_equal_one_exactly_and_share_the_work(demo_model_dir):
    seqs = random_seqs(24)
    one = await started(config(demo_model_dir, 1, max_num_seqs=1))  # one sequence a batch: same math
    try:
        expected = await encode_all(one, seqs)
    finally:
        await one.shutdown(2)
    two = await started(config(demo_model_dir, 2, max_num_seqs=1))
    try:
        assert len(two.core.runners) == 2 and two.stats().replicas_total == 2
        held = []
        two.core.wrap_forward(lambda inner: held.append(Held(inner)) or held[-1], replica=0)
        first = asyncio.create_task(two.encode([seqs[0]]))
        await asyncio.to_thread(held[0].entered.wait, 10)  # replica 0 is busy with the first batch
        rest = await encode_all(two, seqs[1:])  # so the least-loaded replica 1 computes all the rest
        assert held[0].batches == 0 and not first.done()
        held[0].gate.set()
        got = [(await first)[0].data, *rest]
        for a, b in zip(got, expected):
            assert torch.equal(a, b)
        assert two.stats().replicas_alive == 2 and two.is_ready
    finally:
        for h in held:
            h.gate.set()
        await two.shutdown(2)


async def test_a_lost_replica_s_batches_complete_on_the_other(demo_model_dir, caplog):
    seqs = random_seqs(12, seed=7)
    engine = await started(config(demo_model_dir, 2, max_num_seqs=1))
    try:
        expected = await encode_all(engine, seqs)
        dead, held = [], []
        engine.core.wrap_forward(lambda inner: dead.append(Dead(inner)) or dead[-1], replica=1)
        engine.core.wrap_forward(lambda inner: held.append(Held(inner)) or held[-1], replica=0)
        tasks = [asyncio.create_task(engine.encode([s])) for s in seqs]
        await asyncio.to_thread(held[0].entered.wait, 10)  # replica 0 holds one batch: replica 1 takes the next
        while engine.stats().replicas_alive == 2:
            await asyncio.sleep(0.01)
        held[0].gate.set()
        got = await asyncio.wait_for(asyncio.gather(*tasks), 60)
        assert dead[0].calls >= 2  # a batch, then the probe that declared the device lost
        for a, b in zip(got, expected):
            assert torch.equal(a[0].data, b)
        stats = engine.stats()
        assert stats.replicas_alive == 1 and stats.num_failed_items == 0 and stats.queued_requests == 0
        assert engine.is_ready  # SERVING while one replica lives
        assert "replica 1 (cpu) lost" in caplog.text
    finally:
        for h in held:
            h.gate.set()
        await engine.shutdown(2)


async def test_with_every_replica_lost_requests_fail_and_the_engine_is_not_ready(demo_model_dir):
    engine = await started(config(demo_model_dir, 2))
    try:
        engine.core.wrap_forward(Dead)  # both replicas
        with pytest.raises(EngineUnavailableError, match="no replica left"):
            await asyncio.wait_for(engine.encode([[5] * 30, [6] * 40]), 30)
        assert engine.stats().replicas_alive == 0 and not engine.is_ready
        with pytest.raises(EngineUnavailableError, match="no replica left"):
            await engine.encode([[5] * 3])
    finally:
        await engine.shutdown(2)


async def test_a_failure_the_device_survives_stays_with_its_item(demo_model_dir):
    """Not every failure is a lost device: the probe passes, the batch is isolated as with one replica."""

    class Poisoned:
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, ids, *rest):
            if (ids == 13).any():
                raise ValueError("injected: token 13 breaks this kernel")
            return self.inner(ids, *rest)

    engine = await started(config(demo_model_dir, 2))
    try:
        engine.core.wrap_forward(Poisoned)
        with pytest.raises(ValueError, match="token 13"):
            await engine.encode([[13] * 5])
        assert len(await engine.encode([[7] * 5])) == 1
        assert engine.stats().replicas_alive == 2 and engine.stats().num_failed_items == 1
    finally:
        await engine.shutdown(2)


def test_data_parallel_size_is_checked_and_is_for_serving(demo_model_dir):
    with pytest.raises(ValueError, match="--data-parallel-size must be at least 1, not 0"):
        ParallelConfig(data_parallel_size=0)
    with pytest.raises(EngineError, match="offline Engine runs one replica"):
        Engine(config(demo_model_dir, 2))
