"""Scheduler: one waiting queue fed by every caller; cuts packed batches for the GPU thread.

Order: priority (lower first), then arrival. A batch is filled up to ``max_num_batched_tokens``
and ``max_num_seqs``; an item that does not fit is skipped for this batch but stays at the head
of the queue, so it leads the next one (no head-of-line blocking, no starvation). Expired and
cancelled work is dropped when a batch is cut, before any compute.

With prefix reuse (a ``PrefixPlanner``), the token budget counts computed tokens: an item that
shares a prompt with one already in the batch adds only its own tokens, so a GRPO group of
16 x (1,024-token prompt + 256) costs 5,120 of the budget, not 20,480, and fits one batch. With
the prefix cache (one replica), an item whose prompt is cached adds only the rest as well, so
batches fill with sequences whose prefix is cached or shared.
"""
from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from rewardserve.engine.batch import PackedBatch
from rewardserve.engine.config import SchedulerConfig
from rewardserve.engine.errors import DeadlineExceededError, EngineOverloadedError
from rewardserve.engine.prefix import PrefixPlanner
from rewardserve.engine.prepare import WorkItem

# Deadline-aware admission queues a call only when the queue's expected wait is under this share
# of its remaining deadline: the estimate is a mean (half the calls wait longer), and the reply
# still has to be computed and sent. A shorter queue costs no throughput (a few batches keep
# the device busy); a queue filled to the deadline computes its tail for callers who have gone.
ADMIT_DEADLINE_FRACTION = 0.5
# Retry delays grow with the share of recent calls refused (a decaying count over this many
# seconds): under a sustained flood each refused caller comes back less often, so refusals
# (each costs the server a gRPC call) stay a small part of its work.
REFUSAL_MEMORY_S = 1.0


@dataclass
class Request:
    """One caller's work: its items, and how to report back."""

    request_id: str
    items: list[WorkItem]
    priority: int = 0
    deadline: float | None = None                 # time.monotonic() instant
    arrival: float = 0.0
    on_done: Callable[["Request"], None] = lambda r: None
    error: Exception | None = None
    cancelled: bool = False
    field_name: str = "inputs"                    # the request field its items came from (errors name it)
    remaining: int = field(default=0, init=False)
    order: int = field(default=0, init=False)     # arrival rank among equal priorities (set by submit)

    def __post_init__(self) -> None:
        self.remaining = len(self.items)
        for item in self.items:
            item.owner = self

    @property
    def num_tokens(self) -> int:
        return sum(it.num_tokens for it in self.items)

    @property
    def is_finished(self) -> bool:
        return self.error is not None or self.cancelled or self.remaining == 0


@dataclass
class SchedulerStats:
    """Counters for metrics (monotonic totals) and the current queue depth."""

    queued_requests: int = 0
    queued_tokens: int = 0
    num_rejected: int = 0
    num_expired: int = 0
    num_cancelled: int = 0
    num_held: int = 0  # times an idle GPU was held for a fuller batch (max_wait_ms)


class Scheduler:
    """Thread-safe queue between the event loop (submit/cancel) and the GPU thread (next_batch)."""

    def __init__(self, config: SchedulerConfig, clock: Callable[[], float] = time.monotonic, *,
                 bounded: bool = True, prefix: PrefixPlanner | None = None,
                 cached: Callable[[WorkItem], int] | None = None):
        self.config = config
        self.prefix = prefix    # shared-prefix planner (None: prefix reuse off for this model or server)
        # The prefix cache's probe (item → tokens of it the cache holds; ``BlockCache.probe``), called on the
        # thread that cuts batches, which must be the cache's runner's: the one replica's thread.
        self.cached = cached
        self.clock = clock
        self.bounded = bounded  # False (the offline engine): the caller's list is the queue, never refused
        self.stats = SchedulerStats()
        self._heap: list[tuple[int, int, int, WorkItem]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._aborted: Exception | None = None  # set by abort: no device is left to compute anything
        self.throughput_tok_s = config.initial_throughput_tok_s  # refined from measured batches
        self._decisions = [0.0, 0.0, clock()]  # recent admitted, refused (decaying), last update

    def submit(self, request: Request) -> None:
        """Queue a request's items, or refuse it (EngineOverloadedError) when the queue is full."""
        with self._cond:
            if self._aborted is not None:
                raise self._aborted
            self._admit(request)
            request.arrival = self.clock()
            request.order = order = next(self._seq)
            for item in request.items:
                heapq.heappush(self._heap, (request.priority, order, item.index, item))
            self.stats.queued_requests += 1
            self.stats.queued_tokens += request.num_tokens
            self._cond.notify()

    def check_room(self, num_preparing: int, deadline: float | None = None) -> None:
        """Refuse a request before it is tokenized when the queue plus the requests still being
        prepared already hold ``max_queue_requests`` (tokens are counted once they are known), or
        when the queue alone would outlast its deadline."""
        with self._cond:
            full = self.stats.queued_requests + num_preparing + 1 > self.config.max_queue_requests
            self._refuse_if_full(full_requests=full, full_tokens=False)
            self._refuse_if_too_late(deadline, 0)

    def _admit(self, request: Request) -> None:
        if not self.bounded:
            return
        cfg, stats = self.config, self.stats
        full_requests = stats.queued_requests + 1 > cfg.max_queue_requests
        full_tokens = stats.queued_tokens + request.num_tokens > cfg.max_queue_tokens
        self._refuse_if_full(full_requests, full_tokens)
        self._refuse_if_too_late(request.deadline, request.num_tokens)
        self._note_decision(refused=False)

    def expected_wait_s(self, num_tokens: int = 0) -> float:
        """Seconds until ``num_tokens`` more would be computed behind today's queue, at the
        measured throughput (every priority counted: an estimate that errs on the safe side)."""
        return (self.stats.queued_tokens + num_tokens) / self.throughput_tok_s

    def _refuse_if_too_late(self, deadline: float | None, num_tokens: int) -> None:
        """Deadline-aware admission: work that cannot finish before its caller's deadline is
        refused now (RESOURCE_EXHAUSTED with a retry delay) instead of computed for nobody."""
        if not self.bounded or deadline is None:
            return
        wait = self.expected_wait_s(num_tokens)
        remaining = deadline - self.clock()
        if wait > ADMIT_DEADLINE_FRACTION * remaining:
            # A retry of this call would meet the same queue with less time left: the delay is at
            # least its remaining time (the client gives this call up) and the queue's drain time.
            retry = self._retry_delay(max(self.expected_wait_s(), remaining))
            raise EngineOverloadedError(f"the queue holds about {wait:.2f}s of work, more than half the "
                                        f"{max(0.0, remaining):.2f}s left before the deadline: retry after "
                                        f"{retry:.2f}s", retry)

    def _retry_delay(self, base_s: float) -> float:
        """Count a refusal; its retry delay: ``base_s`` stretched by 1 / (1 - the share of recent
        decisions that were refusals), i.e. by the attempts a caller should expect to need (one
        admission assumed besides, so that a lone refusal after a quiet spell stretches little)."""
        admitted, refused = self._decay()
        self._note_decision(refused=True)
        self.stats.num_rejected += 1
        share = refused / (admitted + refused + 1.0)
        return min(5.0, max(0.05, base_s / max(0.2, 1.0 - share)))

    def _decay(self) -> tuple[float, float]:
        now = self.clock()
        keep = math.exp(-max(0.0, now - self._decisions[2]) / REFUSAL_MEMORY_S)
        self._decisions = [self._decisions[0] * keep, self._decisions[1] * keep, now]
        return self._decisions[0], self._decisions[1]

    def _note_decision(self, refused: bool) -> None:
        self._decay()
        self._decisions[1 if refused else 0] += 1.0

    def count_dropped(self, reason: str) -> None:
        """Count work dropped before it reached the queue (``expired`` or ``cancelled`` while
        it waited for, or ran on, the tokenizer threads)."""
        with self._cond:
            name = f"num_{reason}"
            setattr(self.stats, name, getattr(self.stats, name) + 1)

    def _refuse_if_full(self, full_requests: bool, full_tokens: bool) -> None:
        stats = self.stats
        if full_requests or full_tokens:
            retry = self._retry_delay(stats.queued_tokens / self.throughput_tok_s)
            what = "requests" if full_requests else "tokens"
            raise EngineOverloadedError(f"queue full ({what}): retry after {retry:.2f}s", retry)

    def cancel(self, request: Request) -> None:
        """Mark a request cancelled; its queued items are dropped when the next batch is cut."""
        with self._cond:
            if not request.is_finished:
                request.cancelled = True
                self.stats.num_cancelled += 1
                self._release(request)

    def fail(self, request: Request, error: Exception) -> None:
        """Finish a request with an error (its remaining items are dropped)."""
        with self._cond:
            if request.is_finished:
                return
            request.error = error
            self._release(request)
        request.on_done(request)

    def _release(self, request: Request) -> None:
        self.stats.queued_requests -= 1
        # Items computed but not yet reported (a sibling failed first) still count as queued.
        self.stats.queued_tokens -= sum(it.num_tokens for it in request.items if not it.is_complete)

    def complete(self, item: WorkItem) -> None:
        """Called by the GPU thread when an item's result is set."""
        request: Request = item.owner
        with self._cond:
            if request.is_finished:
                return
            item.is_complete = True
            request.remaining -= 1
            self.stats.queued_tokens -= item.num_tokens
            done = request.remaining == 0
            if done:
                self.stats.queued_requests -= 1
        if done:
            request.on_done(request)

    def record_throughput(self, num_tokens: int, seconds: float) -> None:
        """Refine the tokens/s estimate behind retry delays from a computed batch."""
        if seconds > 0 and num_tokens:
            self.throughput_tok_s = 0.8 * self.throughput_tok_s + 0.2 * (num_tokens / seconds)

    def next_batch(self, timeout: float | None = None) -> PackedBatch | None:
        """Block until work is queued (or ``timeout``); return the next batch, None when closed/idle."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._heap or self._closed, timeout):
                return None
            if self._closed and not self._heap:
                return None
            if timeout is None:  # the GPU is idle; with a batch in flight, waiting would delay its replies
                self._wait_for_fuller_batch()
            batch, expired = self._cut()
        packed = self._plan(batch)  # outside the lock: submitters need not wait for the planning
        for request in expired:
            self.stats.num_expired += 1
            self.fail(request, DeadlineExceededError(f"request {request.request_id}: deadline passed in the queue"))
        return packed

    def _wait_for_fuller_batch(self) -> None:
        """Optional operator trade: hold an idle GPU up to max_wait_ms for a fuller batch."""
        wait_s = self.config.max_wait_ms / 1000.0
        if wait_s <= 0:
            return
        oldest = min(item.owner.arrival for *_, item in self._heap)
        full = lambda: self._closed or self.stats.queued_tokens >= self.config.max_num_batched_tokens  # noqa: E731
        remaining = oldest + wait_s - self.clock()
        if remaining > 0 and not full():
            self.stats.num_held += 1
            self._cond.wait_for(full, remaining)

    def _plan(self, batch: list[WorkItem]) -> PackedBatch:
        """The packed batch of ``batch``; with prefix reuse, its shared prefixes. The cut counted
        tokens from below (``BatchTokens``): items from the end go back to the queue (they lead the
        next cut) while the plan computes more than the budget."""
        packed = PackedBatch.of(batch, self.prefix)
        while self.prefix is not None and len(batch) > 1 and self._computed(packed) > self.config.max_num_batched_tokens:
            self.requeue([batch.pop()])
            packed = PackedBatch.of(batch, self.prefix)
        return packed

    def _computed(self, packed: PackedBatch) -> int:
        """Tokens ``packed`` computes: its plan's, less what the prefix cache holds of each
        segment that starts at token 0 (an estimate: the runner's cache decides at launch)."""
        if self.cached is None:
            return packed.num_tokens
        plan = packed.prefix
        if plan is None:
            return sum(len(it.token_ids) - self.cached(it) for it in packed.items)
        roots = [s for s in range(len(plan.lengths)) if plan.prefix_seg[s] < 0 and plan.starts[s] == 0]
        held = sum(min(self.cached(packed.items[plan.src_item[s]]), int(plan.lengths[s]))
                   for s in roots)
        return packed.num_tokens - held

    def _cut(self) -> tuple[list[WorkItem], list[Request]]:
        cfg, now = self.config, self.clock()
        batch, skipped, expired, tokens = [], [], [], 0
        counter = self.prefix.counter(self.cached) if self.prefix is not None else None
        while self._heap and len(batch) < cfg.max_num_seqs and len(skipped) < cfg.max_skips:
            entry = heapq.heappop(self._heap)
            item = entry[-1]
            request: Request = item.owner
            if request.is_finished:
                continue  # cancelled or failed: drop its queued items
            if request.deadline is not None and now > request.deadline:
                expired.append(request) if request not in expired else None
                continue
            cost = counter.cost(item) if counter is not None else item.num_tokens
            if batch and tokens + cost > cfg.max_num_batched_tokens:
                skipped.append(entry)
                continue
            batch.append(item)
            tokens += cost
            if counter is not None:
                counter.add(item)
        for entry in skipped:
            heapq.heappush(self._heap, entry)
        return batch, expired

    def requeue(self, items: list[WorkItem]) -> None:
        """Put items of a batch that was not computed (its replica died) back in their queue places."""
        with self._cond:
            aborted = self._aborted
            for item in items if aborted is None else ():
                if not item.is_complete:
                    owner: Request = item.owner
                    heapq.heappush(self._heap, (owner.priority, owner.order, item.index, item))
            self._cond.notify_all()
        for owner in {id(it.owner): it.owner for it in items}.values() if aborted is not None else ():
            self.fail(owner, aborted)

    def abort(self, error: Exception) -> None:
        """No device is left: fail every queued request with ``error``, refuse new ones, close."""
        with self._cond:
            self._aborted, self._closed = error, True
            requests = {id(entry[-1].owner): entry[-1].owner for entry in self._heap}
            self._heap.clear()
            self._cond.notify_all()
        for request in requests.values():
            self.fail(request, error)

    def close(self) -> None:
        """Wake the GPU thread so it can exit."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def is_idle(self) -> bool:
        with self._cond:
            return self.stats.queued_requests == 0
