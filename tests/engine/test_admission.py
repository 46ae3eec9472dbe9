"""Deadline-aware admission (the scheduler refuses work that cannot finish before its deadline)
and work dropped on the tokenizer threads counted (issue 20)."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from rewardserve.engine.config import SchedulerConfig
from rewardserve.engine.errors import DeadlineExceededError, EngineOverloadedError
from rewardserve.engine.pooling import ResolvedPooling
from rewardserve.engine.prepare import WorkItem
from rewardserve.engine.scheduler import Request, Scheduler
from rewardserve.engine.types import PoolingTask, PoolingType

PLAN = ResolvedPooling(PoolingTask.CLASSIFY, PoolingType.LAST, "sigmoid", False, None, None, None)


def request(name: str, tokens: int, deadline: float | None = None) -> Request:
    return Request(name, [WorkItem(0, [1] * tokens, False, PLAN, [tokens - 1])], 0, deadline)


def test_work_that_would_outlast_its_deadline_is_refused_at_once_with_a_retry_delay():
    now = [100.0]
    scheduler = Scheduler(SchedulerConfig(initial_throughput_tok_s=1000.0), clock=lambda: now[0])
    scheduler.submit(request("queued", 2000))  # 2 s of work at 1000 tok/s
    with pytest.raises(EngineOverloadedError, match="about 2.10s of work, more than half the 1.00s left") as err:
        scheduler.submit(request("late", 100, deadline=101.0))
    assert err.value.retry_after_s == pytest.approx(2.0)  # the queue's drain time
    assert scheduler.stats.num_rejected == 1 and scheduler.stats.queued_requests == 1
    scheduler.submit(request("in time", 100, deadline=105.0))
    scheduler.submit(request("no deadline", 100))
    with pytest.raises(EngineOverloadedError):
        scheduler.check_room(0, deadline=101.5)  # before tokenization: the queue alone is too long
    scheduler.check_room(0, deadline=110.0)


def test_admission_keeps_half_the_deadline_as_margin():
    # The wait estimate is a mean and the reply must still be computed and sent: a queue filled
    # to the deadline would compute its tail for callers who have gone.
    now = [0.0]
    scheduler = Scheduler(SchedulerConfig(initial_throughput_tok_s=1000.0), clock=lambda: now[0])
    scheduler.submit(request("queued", 1000))  # 1 s of work
    with pytest.raises(EngineOverloadedError):
        scheduler.submit(request("1.1 s of wait, 2 s left", 100, deadline=2.0))
    scheduler.submit(request("1.1 s of wait, 2.3 s left", 100, deadline=2.3))


def test_a_refused_call_is_told_not_to_retry_before_its_deadline():
    # A retry would meet the same queue with less time left: the delay is at least the call's
    # remaining time, so the client gives this call up at once instead of retrying in vain.
    now = [0.0]
    scheduler = Scheduler(SchedulerConfig(initial_throughput_tok_s=1000.0), clock=lambda: now[0])
    scheduler.submit(request("queued", 1000))
    with pytest.raises(EngineOverloadedError) as err:
        scheduler.submit(request("late", 100, deadline=1.5))
    assert err.value.retry_after_s == pytest.approx(1.5)


def test_retry_delays_grow_with_the_share_of_recent_calls_refused():
    # Under a sustained flood each refused caller must come back less often, or refusals (a gRPC
    # call each) crowd out the work; once the flood is over the delays shrink back.
    now = [0.0]
    scheduler = Scheduler(SchedulerConfig(initial_throughput_tok_s=1000.0), clock=lambda: now[0])
    scheduler.submit(request("queued", 1000))
    delays = []
    for _ in range(4):
        with pytest.raises(EngineOverloadedError) as err:
            scheduler.check_room(0, deadline=now[0] + 1.0)
        delays.append(err.value.retry_after_s)
    # The queue's drain time (1 s), stretched by 1 / (1 - refused / (decisions + 1)).
    assert delays == pytest.approx([1.0, 1.5, 2.0, 2.5])
    now[0] += 30.0  # the flood is long over: refusals forgotten
    with pytest.raises(EngineOverloadedError) as err:
        scheduler.check_room(0, deadline=now[0] + 1.0)
    assert err.value.retry_after_s == pytest.approx(1.0)
    assert scheduler.stats.num_rejected == 5


def test_offline_scheduler_never_refuses():
    scheduler = Scheduler(SchedulerConfig(initial_throughput_tok_s=1.0), clock=lambda: 0.0, bounded=False)
    scheduler.submit(request("a", 100))
    scheduler.submit(request("b", 100, deadline=1.0))


async def test_work_abandoned_on_the_tokenizer_threads_is_counted(demo_model_dir):
    from rewardserve.engine.async_engine import AsyncEngine
    from rewardserve.engine.config import EngineConfig, ModelConfig, RunnerConfig

    config = EngineConfig(model=ModelConfig(model=str(demo_model_dir), dtype="float32"),
                          runner=RunnerConfig(device="cpu"), scheduler=SchedulerConfig(tokenizer_workers=1))
    engine = await asyncio.to_thread(AsyncEngine.from_config, config)
    await engine.start()
    try:
        gate = threading.Event()
        blocker = asyncio.get_running_loop().run_in_executor(engine._pool, gate.wait)  # noqa: SLF001 - hold the one thread
        waiting = asyncio.create_task(engine.encode(["left before its turn"]))
        expiring = asyncio.create_task(engine.encode(["too late"], deadline=time.monotonic() + 0.2))
        await asyncio.sleep(0.1)
        waiting.cancel()
        await asyncio.sleep(0.3)
        gate.set()
        await blocker
        with pytest.raises(asyncio.CancelledError):
            await waiting
        with pytest.raises(DeadlineExceededError, match="before the request was tokenized"):
            await expiring
        stats = engine.stats()
        assert (stats.num_cancelled, stats.num_expired) == (1, 1)
        assert len(await engine.encode(["still serving"])) == 1
    finally:
        await engine.shutdown(grace_s=1)
