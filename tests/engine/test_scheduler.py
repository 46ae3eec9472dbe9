"""Scheduler unit tests: order, budgets, no starvation, deadlines, cancellation, backpressure."""
from __future__ import annotations

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


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def request(name: str, lengths: list[int], priority: int = 0, deadline: float | None = None) -> Request:
    items = [WorkItem(i, [1] * n, False, PLAN, [n - 1]) for i, n in enumerate(lengths)]
    return Request(name, items, priority, deadline)


def names(batch) -> list[tuple[str, int]]:
    return [(it.owner.request_id, it.index) for it in batch]


def finish(scheduler: Scheduler, batch) -> None:
    for item in batch:
        item.result = ("done", None)
        scheduler.complete(item)


def make(**overrides) -> tuple[Scheduler, Clock]:
    clock = Clock()
    values = dict(max_num_batched_tokens=100, max_num_seqs=4)
    values.update(overrides)
    return Scheduler(SchedulerConfig(**values), clock), clock


def test_budget_and_sequence_cap():
    scheduler, _ = make()
    scheduler.submit(request("a", [40, 40, 40]))
    scheduler.submit(request("b", [10, 10, 10, 10]))
    first = scheduler.next_batch(0)
    assert names(first) == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]  # a[2] skipped: over budget
    second = scheduler.next_batch(0)
    assert names(second)[0] == ("a", 2)  # the skipped item leads the next batch


def test_long_request_runs_alone_and_does_not_block_short_ones():
    scheduler, _ = make()
    scheduler.submit(request("long", [30_000]))
    scheduler.submit(request("short", [5, 5]))
    assert names(scheduler.next_batch(0)) == [("long", 0)]
    assert names(scheduler.next_batch(0)) == [("short", 0), ("short", 1)]


def test_lower_priority_value_runs_first():
    scheduler, _ = make()
    scheduler.submit(request("bulk", [50, 50], priority=10))
    scheduler.submit(request("ppo", [20], priority=-1))
    assert names(scheduler.next_batch(0))[0] == ("ppo", 0)


def test_expired_work_is_dropped_before_compute():
    scheduler, clock = make()
    failed = []
    late = request("late", [10, 10], deadline=clock.now + 1)
    late.on_done = lambda r: failed.append(r.error)
    scheduler.submit(late)
    scheduler.submit(request("ok", [10]))
    clock.now += 2
    assert names(scheduler.next_batch(0)) == [("ok", 0)]
    assert isinstance(failed[0], DeadlineExceededError)
    assert scheduler.stats.num_expired == 1


def test_cancel_frees_queued_work():
    scheduler, _ = make()
    gone = request("gone", [10, 10, 10])
    scheduler.submit(gone)
    assert scheduler.stats.queued_tokens == 30
    scheduler.cancel(gone)
    assert scheduler.stats.queued_tokens == 0 and scheduler.stats.queued_requests == 0
    assert scheduler.stats.num_cancelled == 1
    assert len(scheduler.next_batch(0)) == 0


def test_queue_limits_refuse_with_retry_delay():
    scheduler, _ = make(max_queue_requests=2, max_queue_tokens=50)
    scheduler.submit(request("a", [20]))
    with pytest.raises(EngineOverloadedError) as info:
        scheduler.submit(request("b", [40]))
    assert info.value.retry_after_s > 0
    scheduler.submit(request("c", [20]))
    with pytest.raises(EngineOverloadedError, match="requests"):
        scheduler.submit(request("d", [1]))
    assert scheduler.stats.num_rejected == 2
    finish(scheduler, scheduler.next_batch(0))
    scheduler.submit(request("e", [1]))  # admitted work completed: room again


def test_failed_request_returns_its_computed_but_unreported_tokens():
    scheduler, _ = make()
    req = request("r", [10, 20, 30])
    scheduler.submit(req)
    batch = scheduler.next_batch(0).items
    batch[0].result = ("done", None)
    scheduler.complete(batch[0])          # reported
    batch[1].result = ("done", None)      # computed, not reported: its sibling fails first
    scheduler.fail(req, RuntimeError("item 2 failed"))
    assert scheduler.stats.queued_tokens == 0 and scheduler.stats.queued_requests == 0
    scheduler.complete(batch[1])          # late report of a finished request changes nothing
    assert scheduler.stats.queued_tokens == 0


def test_max_wait_holds_an_idle_gpu_until_the_batch_is_full():
    scheduler, _ = make(max_wait_ms=60_000)
    scheduler.submit(request("a", [50]))
    got: list = []
    worker = threading.Thread(target=lambda: got.append(scheduler.next_batch(None)))
    worker.start()
    time.sleep(0.05)
    assert not got  # held for a fuller batch
    scheduler.submit(request("b", [50]))  # the budget (100 tokens) is now full
    worker.join(10)
    assert names(got[0]) == [("a", 0), ("b", 0)] and scheduler.stats.num_held == 1


def test_max_wait_never_delays_a_batch_in_flight():
    # timeout=0: the GPU thread still has a batch to finish, so it must not be held here.
    scheduler, _ = make(max_wait_ms=60_000)
    scheduler.submit(request("a", [50]))
    assert names(scheduler.next_batch(0.0)) == [("a", 0)]
    assert scheduler.stats.num_held == 0


def test_without_max_wait_a_lone_request_runs_at_once():
    scheduler, _ = make()
    scheduler.submit(request("a", [5]))
    assert names(scheduler.next_batch(None)) == [("a", 0)]
    assert scheduler.stats.num_held == 0


def test_a_full_budget_is_not_held_even_with_max_wait():
    scheduler, _ = make(max_wait_ms=60_000)
    scheduler.submit(request("a", [60, 40]))  # the 100-token budget is full already
    assert names(scheduler.next_batch(None)) == [("a", 0), ("a", 1)]
    assert scheduler.stats.num_held == 0


def test_a_cut_looks_past_at_most_max_skips_items_that_do_not_fit():
    for max_skips, expected in ((3, [("a", 0)]), (4, [("a", 0), ("a", 4)])):  # the 5 is the 4th look past
        scheduler, _ = make(max_skips=max_skips)
        scheduler.submit(request("a", [90, 50, 50, 50, 5]))
        assert names(scheduler.next_batch(0)) == expected
        assert scheduler.stats.queued_tokens == 245  # nothing was dropped, skipped items stay queued


def test_requeued_items_take_back_their_queue_places():
    """A lost replica's batch goes back ahead of later arrivals (priority, then arrival)."""
    scheduler, _ = make()
    scheduler.submit(request("a", [10, 10]))
    lost = scheduler.next_batch(0)
    scheduler.submit(request("b", [10]))
    scheduler.requeue(list(lost))
    assert names(scheduler.next_batch(0)) == [("a", 0), ("a", 1), ("b", 0)]


def test_abort_fails_queued_work_and_refuses_new_work():
    scheduler, _ = make()
    queued, held = request("q", [10]), request("h", [10])
    scheduler.submit(held)
    batch = scheduler.next_batch(0)  # held by a replica that then dies, after the abort
    scheduler.submit(queued)
    error = RuntimeError("no replica left")
    scheduler.abort(error)
    assert queued.error is error and scheduler.next_batch(0) is None
    scheduler.requeue(list(batch))
    assert held.error is error
    with pytest.raises(RuntimeError, match="no replica left"):
        scheduler.submit(request("late", [10]))
    assert scheduler.is_idle()
