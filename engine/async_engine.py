"""AsyncEngine: the engine's face for servers (it implements ``api.EngineAPI``). Many
concurrent callers, one GPU thread.

Callers await ``encode`` / ``chat_reward``. Tokenization runs on a thread pool, batching in the
Scheduler, forward passes on one GPU thread running the batch pipeline (``pipeline.BatchLoop``;
the runner owns CUDA state). Results are handed back to the event loop with
``call_soon_threadsafe``; nothing here blocks the loop.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

from rewardserve.engine.api import BatchObserver, EngineStats
from rewardserve.engine.config import EngineConfig
from rewardserve.engine.core import EngineCore
from rewardserve.engine.errors import DeadlineExceededError, EngineUnavailableError, ItemFailedError
from rewardserve.engine.prepare import WorkItem
from rewardserve.engine.replicas import ReplicaSet
from rewardserve.engine.reward import RewardResult
from rewardserve.engine.scheduler import Request, Scheduler
from rewardserve.engine.score import ScoreOutput, ScoreParams, name_failure
from rewardserve.engine.types import (ChatInput, EncodeInput, EncodeResult, ModelInfo, PoolingParams, PoolingTask,
                                      TokensInput)

log = logging.getLogger(__name__)


class AsyncEngine:
    """Asynchronous engine over one EngineCore; create with ``from_config`` then ``await start()``.

    With ``--data-parallel-size N`` the core holds N runners; each replica runs the batch pipeline
    on its own thread against the one scheduler (``replicas.ReplicaSet``)."""

    def __init__(self, core: EngineCore, observers: Sequence[BatchObserver] = ()):
        self.core = core
        self.scheduler = Scheduler(core.config.scheduler, prefix=core.prefix, cached=core.cache_probe)
        self.replicas = ReplicaSet(self.scheduler, core.runners, observers)  # observers run on GPU threads
        self._pool = ThreadPoolExecutor(core.config.scheduler.tokenizer_workers, thread_name_prefix="tokenize")
        self._started = False
        self._ready = False
        self._draining = False
        self._num_preparing = 0  # requests handed to the tokenizer pool, not yet queued

    @classmethod
    def from_config(cls, config: EngineConfig) -> "AsyncEngine":
        """Load the model (blocking: call it in a thread); ``start`` warms it up."""
        return cls(EngineCore(config))

    @property
    def info(self) -> ModelInfo:
        return self.core.info

    def add_observer(self, observer: BatchObserver) -> None:
        """Call ``observer(items, compute_seconds)`` after every batch (on the GPU thread of the
        replica that computed it: with data parallelism, observers are called from several threads)."""
        self.replicas.observers.append(observer)

    def stats(self) -> EngineStats:
        """A snapshot of queue depth and fault counters (cheap; safe from any thread)."""
        s = self.scheduler.stats
        cache = self.replicas.prefix_cache_totals()
        return EngineStats(s.queued_requests, s.queued_tokens, s.num_rejected, s.num_expired, s.num_cancelled,
                           self.replicas.num_oom_splits, self.replicas.num_failed_items,
                           replicas_alive=self.replicas.num_alive, replicas_total=len(self.replicas.replicas),
                           prefix_cache_queried_tokens=cache.get("queried_tokens", 0),
                           prefix_cache_hit_tokens=cache.get("hit_tokens", 0),
                           prefix_cache_evicted_blocks=cache.get("evicted_blocks", 0),
                           prefix_cache_used_bytes=cache.get("used_bytes", 0),
                           prefix_cache_capacity_bytes=cache.get("capacity_bytes", 0))

    @property
    def is_ready(self) -> bool:
        """True once started and every replica warm, False again while draining or once no
        replica is left."""
        return self._ready and not self._draining and self.replicas.num_alive > 0

    async def start(self) -> None:
        """Warm up every replica, then start serving."""
        if self._started:
            return
        self._started = True
        seconds = await asyncio.get_running_loop().run_in_executor(
            None, self.replicas.warm_up, self.core.config.scheduler.max_num_batched_tokens)
        log.info("warm-up done in %.2fs (%d replica(s))", seconds, len(self.replicas.replicas))
        self.replicas.start()
        self._ready = True

    async def encode(self, inputs: Sequence[EncodeInput], task: PoolingTask | None = None,
                     params: PoolingParams | None = None, *, priority: int = 0,
                     deadline: float | None = None, request_id: str = "") -> list[EncodeResult]:
        """Run ``task`` on every input; results keep input order (see the interface docs)."""
        self._check_ready()
        if _is_small_token_batch(inputs, self.core.config.scheduler.inline_prepare_max_tokens):  # no tokenizer work: a thread hop would cost more than it saves
            items = self.core.prepare(inputs, task, params)
        else:
            items = await self._prepare(deadline, self.core.prepare, inputs, task, params)
        await self._run(items, "inputs", priority, deadline, request_id)
        return [self.core.to_result(it) for it in items]

    async def chat_reward(self, conversations: Sequence[ChatInput], params: PoolingParams | None = None, *,
                          priority: int = 0, deadline: float | None = None,
                          request_id: str = "") -> list[RewardResult]:
        """Render each conversation with the chat template and score it."""
        self._check_ready()
        items = await self._prepare(deadline, self.core.prepare_chat, conversations, params)
        await self._run(items, "conversations", priority, deadline, request_id)
        return [self.core.to_reward(it) for it in items]

    async def score(self, query: Any, documents: Sequence[Any], params: ScoreParams | None = None, *,
                    priority: int = 0, deadline: float | None = None, request_id: str = "") -> ScoreOutput:
        """Score ``query`` against each document (see engine/score.py); queued like ``encode``."""
        self._check_ready()
        plan = await self._prepare(deadline, self.core.prepare_score, query, documents, params or ScoreParams())
        try:
            await self._run(plan.items, "documents", priority, deadline, request_id)
        except ItemFailedError as exc:
            raise name_failure(plan, exc) from None
        return self.core.to_score(plan)

    def _check_ready(self) -> None:
        if not self.is_ready:
            reason = "no replica left" if self._ready and not self.replicas.num_alive else "engine is not ready yet"
            raise EngineUnavailableError("draining" if self._draining else reason)

    async def _prepare(self, deadline: float | None, fn: Callable[..., list[WorkItem]], *args: Any) -> list[WorkItem]:
        # Requests waiting for the tokenizer pool count against the queue limit too: a flood of
        # text must be refused at the door, not pile up unbounded in front of the pool.
        self.scheduler.check_room(self._num_preparing, deadline)
        self._num_preparing += 1
        abandoned = threading.Event()

        def job() -> list[WorkItem] | None:
            # Its turn came: skip work whose caller left or whose deadline passed meanwhile.
            if abandoned.is_set():
                return None
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceededError("deadline passed before the request was tokenized")
            return fn(*args)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, job)
        except asyncio.CancelledError:
            abandoned.set()
            self.scheduler.count_dropped("cancelled")  # abandoned while waiting for or in tokenization
            raise
        except DeadlineExceededError:
            self.scheduler.count_dropped("expired")
            raise
        finally:
            self._num_preparing -= 1

    async def _run(self, items: list[WorkItem], field: str, priority: int, deadline: float | None,
                   request_id: str) -> None:
        if deadline is not None and time.monotonic() >= deadline:
            self.scheduler.count_dropped("expired")  # tokenized for nobody: counted, not queued
            raise DeadlineExceededError("deadline passed before the request was queued")
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()

        def on_done(request: Request) -> None:  # runs on the GPU thread
            loop.call_soon_threadsafe(_settle, future, request)

        request = Request(request_id or uuid.uuid4().hex, items, priority, deadline, on_done=on_done, field_name=field)
        self.scheduler.submit(request)
        try:
            await future
        except asyncio.CancelledError:
            self.scheduler.cancel(request)  # queued items are dropped before compute
            raise

    async def shutdown(self, grace_s: float = 30.0) -> None:
        """Refuse new work, finish what is queued (up to ``grace_s``), stop the GPU threads; what
        is still queued then fails (EngineUnavailableError) rather than waiting forever."""
        self._draining = True
        end = time.monotonic() + grace_s
        while not self.scheduler.is_idle() and time.monotonic() < end:
            await asyncio.sleep(0.01)
        self.scheduler.close()
        # Before the join (which a server may stop waiting for): tokenization not started is dropped.
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.core.close()  # request-template workers: a render still running is killed
        await asyncio.get_running_loop().run_in_executor(None, self.replicas.join, max(0.0, end - time.monotonic()) + 5)
        self.scheduler.abort(EngineUnavailableError("the engine stopped before this request was computed"))
        self._ready = False


def _is_small_token_batch(inputs: Sequence[EncodeInput], max_tokens: int) -> bool:
    """Token-id inputs small enough to validate on the event loop (well under a millisecond)."""
    total = 0
    for item in inputs:
        ids = item.token_ids if isinstance(item, TokensInput) else None
        if ids is None:
            return False
        total += len(ids)
        if total > max_tokens:
            return False  # stop counting: a request of a million items is not read here
    return True


def _settle(future: asyncio.Future, request: Request) -> None:
    if future.done():
        return
    if request.error is not None:
        future.set_exception(request.error)
    else:
        future.set_result(None)
