"""AsyncEngine on the demo model: concurrency parity, priority, deadlines, cancellation,
overload and an injected out-of-memory fault. Shown by results and counters, never timing."""
from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest
import torch

from rewardserve.engine.async_engine import AsyncEngine
from rewardserve.engine.config import EngineConfig, ModelConfig, RunnerConfig, SchedulerConfig
from rewardserve.engine.errors import DeadlineExceededError, EngineOverloadedError, ItemFailedError


class GatedForward:
    """Wraps the packed forward: records each batch's tokens; can hold the GPU thread or fail."""

    def __init__(self, inner):
        self.inner = inner
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.batches: list[list[int]] = []
        self.fail_above: int | None = None

    def __call__(self, input_ids, positions, cu_seqlens, max_seqlen):
        self.entered.set()
        self.gate.wait(10)
        if self.fail_above is not None and input_ids.shape[0] > self.fail_above:
            raise torch.OutOfMemoryError("injected: CUDA out of memory")
        self.batches.append(input_ids.tolist())
        return self.inner(input_ids, positions, cu_seqlens, max_seqlen)


@pytest.fixture
async def engine(demo_model_dir):
    config = EngineConfig(model=ModelConfig(model=str(demo_model_dir)), runner=RunnerConfig(device="cpu"),
                          scheduler=SchedulerConfig(max_num_batched_tokens=2048, max_queue_requests=200))
    eng = await asyncio.to_thread(AsyncEngine.from_config, config)
    await eng.start()

    def gate(inner):
        eng.forward = GatedForward(inner)
        return eng.forward

    eng.core.wrap_forward(gate)  # the runner's seam for fault injection
    yield eng
    eng.forward.gate.set()
    await eng.shutdown(2)


def random_seqs(n: int, seed: int = 1) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1, 400) for _ in range(rng.randint(1, 300))] for _ in range(n)]


async def test_64_concurrent_requests_equal_one_at_a_time(engine):
    seqs = random_seqs(64)
    blocker = await hold_gpu(engine)  # all 64 queue up behind one batch, then are packed together
    tasks = [asyncio.create_task(engine.encode([s])) for s in seqs]
    while engine.stats().queued_requests < 65:
        await asyncio.sleep(0.01)
    engine.forward.gate.set()
    await blocker
    together = await asyncio.gather(*tasks)
    packed = len(engine.forward.batches) - 1
    alone = [await engine.encode([s]) for s in seqs]
    # 2048-token budget: the fewest batches that hold them, plus one per cut the budget forced
    assert packed <= -(-sum(map(len, seqs)) // 2048) * 2
    assert len(engine.forward.batches) - 1 - packed == 64  # one at a time: one batch each
    for a, b in zip(together, alone):
        assert torch.allclose(a[0].data, b[0].data, atol=1e-5, rtol=0)


async def hold_gpu(engine) -> asyncio.Task:
    """Occupy the GPU thread with one batch so that later work queues up behind it."""
    engine.forward.gate.clear()
    engine.forward.entered.clear()
    blocker = asyncio.create_task(engine.encode([[7, 7, 7]]))
    await asyncio.to_thread(engine.forward.entered.wait, 5)
    return blocker


async def test_high_priority_overtakes_queued_bulk(engine):
    blocker = await hold_gpu(engine)
    bulk = [asyncio.create_task(engine.encode([[11] * 1500], priority=10)) for _ in range(3)]
    await asyncio.sleep(0.05)
    urgent = asyncio.create_task(engine.encode([[22] * 10], priority=-5))
    await asyncio.sleep(0.05)
    engine.forward.gate.set()
    await asyncio.gather(blocker, urgent, *bulk)
    firsts = [batch[0] for batch in engine.forward.batches]
    assert firsts.index(22) < firsts.index(11)


async def test_expired_work_is_never_computed(engine):
    blocker = await hold_gpu(engine)
    late = asyncio.create_task(engine.encode([[33] * 20], deadline=time.monotonic() + 0.05))
    await asyncio.sleep(0.2)
    engine.forward.gate.set()
    with pytest.raises(DeadlineExceededError):
        await late
    await blocker
    assert engine.scheduler.stats.num_expired == 1
    assert not any(33 in batch for batch in engine.forward.batches)


async def test_cancellation_frees_queued_work(engine):
    blocker = await hold_gpu(engine)
    doomed = asyncio.create_task(engine.encode([[44] * 20, [44] * 30]))
    await asyncio.sleep(0.05)
    assert engine.scheduler.stats.queued_tokens >= 50
    doomed.cancel()
    await asyncio.sleep(0.05)
    assert engine.scheduler.stats.num_cancelled == 1
    engine.forward.gate.set()
    await blocker
    assert not any(44 in batch for batch in engine.forward.batches)
    assert engine.scheduler.stats.queued_tokens == 0


async def test_overload_refuses_while_admitted_work_completes(demo_model_dir):
    config = EngineConfig(model=ModelConfig(model=str(demo_model_dir)), runner=RunnerConfig(device="cpu"),
                          scheduler=SchedulerConfig(max_queue_requests=4))
    eng = await asyncio.to_thread(AsyncEngine.from_config, config)
    await eng.start()
    results = await asyncio.gather(*[eng.encode([s]) for s in random_seqs(40)], return_exceptions=True)
    refused = [r for r in results if isinstance(r, EngineOverloadedError)]
    done = [r for r in results if isinstance(r, list)]
    assert refused and done and len(refused) + len(done) == 40
    assert all(r.retry_after_s > 0 for r in refused)
    await eng.shutdown(2)


async def test_injected_out_of_memory_is_split_and_survived(engine):
    seqs = random_seqs(16, seed=3)
    expected = [await engine.encode([s]) for s in seqs]
    engine.forward.fail_above = 600  # any batch over 600 tokens "runs out of memory"
    blocker = await hold_gpu(engine)
    tasks = [asyncio.create_task(engine.encode([s])) for s in seqs]
    await asyncio.sleep(0.05)
    engine.forward.gate.set()
    await blocker
    got = await asyncio.gather(*tasks)
    assert engine.stats().num_oom_splits > 0
    for a, b in zip(got, expected):
        assert torch.allclose(a[0].data, b[0].data, atol=1e-5, rtol=0)
    assert engine.is_ready


async def test_an_item_that_fails_alone_fails_only_its_request(engine):
    seqs = random_seqs(6, seed=5)
    engine.forward.fail_above = 400  # "out of memory" on any batch over 400 tokens, even one sequence
    blocker = await hold_gpu(engine)
    doomed = asyncio.create_task(engine.encode([[9] * 50, [9] * 500, [9] * 60]))
    others = [asyncio.create_task(engine.encode([s[:200]])) for s in seqs]
    await asyncio.sleep(0.05)
    engine.forward.gate.set()
    await blocker
    with pytest.raises(ItemFailedError, match=r"inputs\[1\]: could not be computed .*500 tokens"):
        await doomed
    for task, seq in zip(others, seqs):
        got = await task
        alone = await engine.encode([seq[:200]])
        assert torch.allclose(got[0].data, alone[0].data, atol=1e-5, rtol=0)
    assert engine.stats().queued_tokens == 0 and engine.stats().queued_requests == 0
    assert engine.is_ready and engine.stats().num_failed_items == 1


async def test_one_request_spread_over_many_batches_keeps_input_order(demo_model_dir):
    config = EngineConfig(model=ModelConfig(model=str(demo_model_dir)), runner=RunnerConfig(device="cpu"),
                          scheduler=SchedulerConfig(max_num_batched_tokens=64))
    eng = await asyncio.to_thread(AsyncEngine.from_config, config)
    await eng.start()
    seqs = [s[:60] for s in random_seqs(9, seed=11)]
    together = await eng.encode(seqs)
    assert [r.index for r in together] == list(range(9))
    for got, seq in zip(together, seqs):
        alone = await eng.encode([seq])
        assert torch.allclose(got.data, alone[0].data, atol=1e-5, rtol=0)
    await eng.shutdown(2)


async def test_requests_waiting_for_the_tokenizer_count_against_the_queue_limit(demo_model_dir):
    config = EngineConfig(model=ModelConfig(model=str(demo_model_dir)), runner=RunnerConfig(device="cpu"),
                          scheduler=SchedulerConfig(max_queue_requests=3))
    eng = await asyncio.to_thread(AsyncEngine.from_config, config)
    await eng.start()
    tokenizer_free, prepare = threading.Event(), eng.core.prepare

    def slow_prepare(*args):
        tokenizer_free.wait(10)
        return prepare(*args)

    eng.core.prepare = slow_prepare
    calls = [asyncio.create_task(eng.encode([f"text {i}"])) for i in range(8)]
    await asyncio.sleep(0.1)  # all eight reached the door while the tokenizer is busy
    tokenizer_free.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    refused = [r for r in results if isinstance(r, EngineOverloadedError)]
    assert len(refused) == 5 and all("queue full (requests)" in str(r) for r in refused)
    assert sum(isinstance(r, list) for r in results) == 3
    assert eng.stats().num_rejected == 5 and eng.stats().queued_requests == 0
    await eng.shutdown(2)
