"""BatchLoop: the one batch pipeline. Scheduler → PackedBatch → runner → results, with failure isolation.

The offline ``Engine`` runs it on the caller's thread until its request is done; the
``AsyncEngine`` runs it on its GPU thread until the scheduler closes. Batch i+1 is cut and
launched before batch i is collected, so the host's finishing and packing overlap the device's
work.

Failure isolation (one path): when a batch fails (CUDA out of memory, say) nothing of it is
kept; it is split in two and each half runs on its own, recursively. A half that succeeds keeps
its results and is never computed again; an item that fails alone fails only its request
(``ItemFailedError`` for out of memory, the error itself otherwise).

Replicas (data parallel, ``replicas.ReplicaSet``): each replica runs its own BatchLoop on the
shared scheduler. Before a failure is isolated, ``on_lost`` being set, the runner is probed:
a device that cannot run one token is lost, and every batch the loop holds goes back to the
queue through ``on_lost`` (another replica computes it) instead of failing its items.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from rewardserve.engine.api import BatchObserver
from rewardserve.engine.batch import PackedBatch
from rewardserve.engine.errors import EngineError, ItemFailedError
from rewardserve.engine.prepare import WorkItem
from rewardserve.engine.runner import ModelRunner, Pending
from rewardserve.engine.scheduler import Scheduler

log = logging.getLogger(__name__)


@dataclass
class _Launched:
    batch: PackedBatch
    pending: Pending | None  # None: already computed (item by item, after a failure at launch)
    start: float


class ReplicaLost(Exception):
    """The runner's device stopped working (its probe failed after ``cause``)."""

    def __init__(self, cause: Exception):
        super().__init__(f"device lost: {cause}")
        self.cause = cause


class BatchLoop:
    """Drives batches from ``scheduler`` through ``runner``; reports items back to the scheduler."""

    def __init__(self, scheduler: Scheduler, runner: ModelRunner, observers: Sequence[BatchObserver] = ()):
        self.scheduler = scheduler
        self.runner = runner
        self.observers = list(observers)  # called after every batch, before its replies go out
        self.num_oom_splits = 0
        self.num_failed_items = 0
        self.held: list[PackedBatch] = []  # batches taken from the queue and not yet reported
        # Set by a ReplicaSet: may this loop take a second batch while one is in flight (least-loaded)?
        self.may_take: Callable[[], bool] = lambda: True
        # Set by a ReplicaSet: called with the held batches when the device is lost (None: no probing).
        self.on_lost: Callable[[list[PackedBatch], ReplicaLost], None] | None = None

    def run(self, *, block: bool) -> None:
        """Run batches until the queue is empty (``block=False``) or the scheduler is closed
        (``block=True``: with nothing in flight, wait for work). Returns early when the device is lost."""
        try:
            self._run(block)
        except ReplicaLost as lost:
            held, self.held = self.held, []
            self.on_lost(held, lost)

    def _run(self, block: bool) -> None:
        inflight: _Launched | None = None
        while True:
            if inflight is not None and not self.may_take():  # a less-loaded replica takes the next batch
                self._finish(inflight)
                inflight = None
                continue
            batch = self.scheduler.next_batch(None if block and inflight is None else 0.0)
            if batch is None and inflight is None:
                return  # closed (block) or drained
            launched = self._launch(batch) if batch else None  # empty: all cancelled or expired
            if inflight is not None:
                self._finish(inflight)
            inflight = launched

    def _launch(self, batch: PackedBatch) -> _Launched:
        start = time.monotonic()
        self.held.append(batch)
        try:
            return _Launched(batch, self.runner.launch(batch), start)
        except Exception as exc:  # noqa: BLE001 - isolated below, synchronously
            self._check_device(exc)
            self._isolate(batch, exc)
            return _Launched(batch, None, start)

    def _finish(self, launched: _Launched) -> None:
        batch = launched.batch
        if launched.pending is not None:
            try:
                self._store(batch, self.runner.collect(launched.pending))
            except Exception as exc:  # noqa: BLE001
                self._check_device(exc)
                self._isolate(batch, exc)
        self.held = [b for b in self.held if b is not batch]
        seconds = time.monotonic() - launched.start
        self.scheduler.record_throughput(batch.num_tokens, seconds)
        for item in batch:
            item.queue_time_s = launched.start - item.owner.arrival
            item.compute_time_s = seconds
        for observe in self.observers:  # before the replies go out: metrics never lag a reply
            observe(batch.items, seconds)
        for item in batch:
            if item.result is not None:
                self.scheduler.complete(item)

    @staticmethod
    def _store(batch: PackedBatch, outputs: list) -> None:
        for item, out in zip(batch, outputs):
            item.result = out

    def _isolate(self, batch: PackedBatch, exc: Exception) -> None:
        """``batch`` failed as a whole with ``exc``: run each half on its own (see the module doc)."""
        if len(batch) == 1:
            self._fail(batch.items[0], exc)
            return
        if isinstance(exc, torch.OutOfMemoryError):
            self.num_oom_splits += 1
            log.warning("CUDA out of memory on a batch of %d sequences; splitting it", len(batch))
            self.runner.release_memory()
        for half in batch.split():
            try:
                self._store(half, self.runner.execute(half))
            except Exception as half_exc:  # noqa: BLE001 - any failure must stay inside its items
                self._check_device(half_exc)
                self._isolate(half, half_exc)

    def _check_device(self, exc: Exception) -> None:
        """Raise ReplicaLost when ``exc`` came from a dead device (probed; never for out of memory
        or an engine error, which belong to their items)."""
        if self.on_lost is None or isinstance(exc, (torch.OutOfMemoryError, EngineError)):
            return
        try:
            self.runner.probe()
        except Exception as probe_exc:  # noqa: BLE001 - any failure of one token means the device is gone
            log.error("replica on %s failed a one-token probe after %r: %r", self.runner.device, exc, probe_exc)
            raise ReplicaLost(exc) from exc

    def _fail(self, item: WorkItem, exc: Exception) -> None:
        self.num_failed_items += 1
        self.scheduler.fail(item.owner, _item_error(exc, item))


def _item_error(exc: Exception, item: WorkItem) -> Exception:
    """What the request of an item that failed alone ends with."""
    field = item.owner.field_name
    if isinstance(exc, torch.OutOfMemoryError):
        reason = f"could not be computed (out of memory on a single sequence; {item.num_tokens} tokens)"
        return ItemFailedError(field, reason, item.index)
    if isinstance(exc, EngineError):
        return exc
    log.exception("unexpected failure computing item %d of request %s", item.index, item.owner.request_id,
                  exc_info=exc)
    return exc
