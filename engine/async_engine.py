"""AsyncEngine: the engine's face for servers. Many concurrent callers, one GPU thread.

Callers await ``encode`` / ``chat_reward``. Tokenization runs on a thread pool, batching in the
Scheduler, forward passes on one GPU thread (the runner owns CUDA state). Results are handed
back to the event loop with ``call_soon_threadsafe``; nothing here blocks the loop.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from rewardserve.engine.config import EngineConfig
from rewardserve.engine.core import EngineCore
from rewardserve.engine.errors import (DeadlineExceededError, EngineError, EngineUnavailableError,
                                      ItemFailedError)
from rewardserve.engine.prepare import WorkItem
from rewardserve.engine.reward import RewardResult
from rewardserve.engine.runner import ItemFailed
from rewardserve.engine.scheduler import Request, Scheduler
from rewardserve.engine.score import ScoreOutput, ScoreParams
from rewardserve.engine.types import (ChatInput, EncodeInput, EncodeResult, ModelInfo, PoolingParams, PoolingTask,
                                      TokensInput)

log = logging.getLogger(__name__)
INLINE_PREPARE_MAX_TOKENS = 8192


@dataclass(frozen=True)
class EngineStats:
    """Queue depth now, and totals since start (for metrics)."""

    queued_requests: int
    queued_tokens: int
    num_rejected: int
    num_expired: int
    num_cancelled: int
    num_oom_splits: int
    num_failed_items: int


BatchObserver = Callable[[list[WorkItem], float], None]


class AsyncEngine:
    """Asynchronous engine over one EngineCore; create with ``from_config`` then ``await start()``."""

    def __init__(self, core: EngineCore, observers: Sequence[BatchObserver] = ()):
        self.core = core
        self.scheduler = Scheduler(core.config.scheduler)
        self.observers = list(observers)   # e.g. Prometheus metrics; called on the GPU thread
        self._pool = ThreadPoolExecutor(core.config.scheduler.tokenizer_workers, thread_name_prefix="tokenize")
        self._thread: threading.Thread | None = None
        self._ready = False
        self._draining = False
        self._num_preparing = 0  # requests handed to the tokenizer pool, not yet queued
        self.num_failed_items = 0

    @classmethod
    def from_config(cls, config: EngineConfig) -> "AsyncEngine":
        """Load the model (blocking: call it in a thread); ``start`` warms it up."""
        return cls(EngineCore(config))

    @property
    def info(self) -> ModelInfo:
        return self.core.info

    def add_observer(self, observer: BatchObserver) -> None:
        """Call ``observer(items, compute_seconds)`` after every batch (on the GPU thread)."""
        self.observers.append(observer)

    def stats(self) -> EngineStats:
        """A snapshot of queue depth and fault counters (cheap; safe from any thread)."""
        s = self.scheduler.stats
        return EngineStats(s.queued_requests, s.queued_tokens, s.num_rejected, s.num_expired, s.num_cancelled,
                           self.core.runner.num_oom_splits, self.num_failed_items)

    @property
    def is_ready(self) -> bool:
        """True once started and warm, False again while draining."""
        return self._ready and not self._draining

    async def start(self) -> None:
        """Warm up on the GPU thread, then start serving."""
        if self._thread is not None:
            return
        seconds = await asyncio.get_running_loop().run_in_executor(
            None, self.core.runner.warm_up, self.core.config.scheduler.max_num_batched_tokens)
        log.info("warm-up done in %.2fs", seconds)
        self._thread = threading.Thread(target=self._gpu_loop, name="gpu", daemon=True)
        self._thread.start()
        self._ready = True

    async def encode(self, inputs: Sequence[EncodeInput], task: PoolingTask | None = None,
                     params: PoolingParams | None = None, *, priority: int = 0,
                     deadline: float | None = None, request_id: str = "") -> list[EncodeResult]:
        """Run ``task`` on every input; results keep input order (see the interface docs)."""
        self._check_ready()
        if _is_small_token_batch(inputs):  # no tokenizer work: a thread hop would cost more than it saves
            items = self.core.prepare(inputs, task, params)
        else:
            items = await self._prepare(self.core.prepare, inputs, task, params)
        await self._run(items, priority, deadline, request_id)
        return [self.core.to_result(it) for it in items]

    async def chat_reward(self, conversations: Sequence[ChatInput], params: PoolingParams | None = None, *,
                          priority: int = 0, deadline: float | None = None,
                          request_id: str = "") -> list[RewardResult]:
        """Render each conversation with the chat template and score it."""
        self._check_ready()
        items = await self._prepare(self.core.prepare_chat, conversations, params)
        try:
            await self._run(items, priority, deadline, request_id)
        except ItemFailedError as exc:  # name the caller's field, not the engine's generic one
            raise exc.at("conversations", exc.index) from None
        return [self.core.to_reward(it) for it in items]

    async def score(self, query: Any, documents: Sequence[Any], params: ScoreParams | None = None, *,
                    priority: int = 0, deadline: float | None = None, request_id: str = "") -> ScoreOutput:
        """Score ``query`` against each document (see engine/score.py); queued like ``encode``."""
        self._check_ready()
        plan = await self._prepare(self.core.prepare_score, query, documents, params or ScoreParams())
        try:
            await self._run(plan.items, priority, deadline, request_id)
        except ItemFailedError as exc:  # the query's own item (embedding models) is named "query"
            raise (exc.at("query") if plan.query is not None and exc.index == plan.query.index
                   else exc.at("documents", exc.index)) from None
        return self.core.to_score(plan)

    def _check_ready(self) -> None:
        if not self.is_ready:
            raise EngineUnavailableError("draining" if self._draining else "engine is not ready yet")

    async def _prepare(self, fn: Callable[..., list[WorkItem]], *args: Any) -> list[WorkItem]:
        # Requests waiting for the tokenizer pool count against the queue limit too: a flood of
        # text must be refused at the door, not pile up unbounded in front of the pool.
        self.scheduler.check_room(self._num_preparing)
        self._num_preparing += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            self._num_preparing -= 1

    async def _run(self, items: list[WorkItem], priority: int, deadline: float | None, request_id: str) -> None:
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceededError("deadline passed before the request was queued")
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()

        def on_done(request: Request) -> None:  # runs on the GPU thread
            loop.call_soon_threadsafe(_settle, future, request)

        request = Request(request_id or uuid.uuid4().hex, items, priority, deadline, on_done=on_done)
        self.scheduler.submit(request)
        try:
            await future
        except asyncio.CancelledError:
            self.scheduler.cancel(request)  # queued items are dropped before compute
            raise

    def _gpu_loop(self) -> None:
        """Cut and launch the next batch, then finish the one in flight: the device computes
        batch i+1 while this thread finishes batch i. With nothing in flight it blocks for work."""
        inflight = None
        while True:
            batch = self.scheduler.next_batch(0.0 if inflight else None)
            if batch is None and inflight is None:
                return  # closed
            launched = self._launch(batch) if batch else None  # empty: all cancelled or expired
            if inflight is not None:
                self._finish_batch(*inflight)
            inflight = launched

    def _launch(self, batch: list[WorkItem]) -> tuple:
        start = time.monotonic()
        try:
            return batch, self.core.launch(batch), start
        except Exception:  # noqa: BLE001 - run it again item-isolated, synchronously
            self._compute_isolating(batch)
            return batch, None, start

    def _finish_batch(self, batch: list[WorkItem], pending, start: float) -> None:
        if pending is not None:
            try:
                self.core.collect(batch, pending)
            except Exception:  # noqa: BLE001
                self._compute_isolating(batch)
        seconds = time.monotonic() - start
        self._update_throughput(batch, seconds)
        for item in batch:
            item.queue_time_s = start - item.owner.arrival
            item.compute_time_s = seconds
        for observe in self.observers:  # before the replies go out: metrics never lag a reply
            observe(batch, seconds)
        for item in batch:
            if item.result is not None:
                self.scheduler.complete(item)

    def _compute_isolating(self, items: list[WorkItem]) -> None:
        """Run a batch; on failure split it so a failing item fails alone."""
        try:
            self.core.run(items)
        except Exception as exc:  # noqa: BLE001 - any failure must stay inside its items
            if len(items) > 1:
                half = len(items) // 2
                self._compute_isolating(items[:half])
                self._compute_isolating(items[half:])
                return
            self.num_failed_items += 1
            error = exc if isinstance(exc, EngineError) else _item_error(exc, items[0])
            self.scheduler.fail(items[0].owner, error)

    def _update_throughput(self, batch: list[WorkItem], seconds: float) -> None:
        tokens = sum(it.num_tokens for it in batch)
        if seconds > 0 and tokens:
            measured = tokens / seconds
            self.scheduler.throughput_tok_s = 0.8 * self.scheduler.throughput_tok_s + 0.2 * measured

    async def shutdown(self, grace_s: float = 30.0) -> None:
        """Refuse new work, finish what is queued (up to ``grace_s``), stop the GPU thread."""
        self._draining = True
        end = time.monotonic() + grace_s
        while not self.scheduler.is_idle() and time.monotonic() < end:
            await asyncio.sleep(0.01)
        self.scheduler.close()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, max(0.0, end - time.monotonic()) + 5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._ready = False


def _item_error(exc: Exception, item: WorkItem) -> Exception:
    if isinstance(exc, ItemFailed):
        return ItemFailedError("inputs", f"could not be computed ({exc}; {item.num_tokens} tokens)", item.index)
    log.exception("unexpected failure computing item %d of request %s", item.index, item.owner.request_id,
                  exc_info=exc)
    return exc


def _is_small_token_batch(inputs: Sequence[EncodeInput]) -> bool:
    """Token-id inputs small enough to validate on the event loop (well under a millisecond)."""
    total = 0
    for item in inputs:
        ids = item.token_ids if isinstance(item, TokensInput) else None
        if ids is None:
            return False
        total += len(ids)
    return total <= INLINE_PREPARE_MAX_TOKENS


def _settle(future: asyncio.Future, request: Request) -> None:
    if future.done():
        return
    if request.error is not None:
        future.set_exception(request.error)
    else:
        future.set_result(None)
