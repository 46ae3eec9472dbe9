"""Data parallel: N replicas of the model, each a ModelRunner on its own device, behind one scheduler.

Each replica runs the one batch pipeline (``pipeline.BatchLoop``) on its own thread against the
shared ``Scheduler``. Dispatch is least-loaded: an idle replica waits on the queue and takes the
next batch at once; a replica with a batch in flight takes a second one (to overlap its host work
with the device's) only while no live replica holds fewer batches. The single-replica guarantees
stay where they are owned, so they hold for every replica: order and priority (the one queue),
deadlines and cancellation (checked when a batch is cut), backpressure (the queue limits), OOM
isolation (each loop), drain (the queue closes; each thread finishes what it holds).

A replica whose device is lost (a failure, then a failed one-token probe) is logged and stops;
the batches it held go back to the queue and the others compute them. When none is left the
queue is aborted: every waiting request fails with ``EngineUnavailableError``, new ones are
refused, and the engine reports not ready (health NOT_SERVING). Nothing waits forever.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Sequence

import torch

from rewardserve.engine.api import BatchObserver
from rewardserve.engine.batch import PackedBatch
from rewardserve.engine.errors import EngineError, EngineUnavailableError
from rewardserve.engine.pipeline import BatchLoop, ReplicaLost
from rewardserve.engine.runner import ModelRunner
from rewardserve.engine.scheduler import Scheduler

log = logging.getLogger(__name__)


def replica_devices(device: torch.device, count: int) -> list[torch.device]:
    """The device of each of ``count`` replicas: every one on the CPU, or consecutive GPUs from
    ``device``'s index (cuda → cuda:0..count-1, cuda:2 → cuda:2..). One replica keeps ``device``."""
    if count == 1:
        return [device]
    if device.type != "cuda":
        return [device] * count
    first = device.index or 0
    available = torch.cuda.device_count()
    if first + count > available:
        raise EngineError(f"--data-parallel-size {count} from cuda:{first} needs GPUs up to cuda:{first + count - 1}; "
                          f"this machine has {available}")
    return [torch.device("cuda", first + i) for i in range(count)]


def replicate(model: torch.nn.Module, devices: list[torch.device], make_runner) -> list[ModelRunner]:
    """One runner per device; replica i > 0 gets a host copy of ``model`` (made before replica 0
    moves the original, so the host holds at most two copies at once)."""
    runners = [make_runner(copy.deepcopy(model), device) for device in reversed(devices[1:])]
    runners.append(make_runner(model, devices[0]))
    return runners[::-1]


class Replica:
    """One runner and the batch loop that drives it; ``alive`` until its device is lost."""

    def __init__(self, index: int, runner: ModelRunner, loop: BatchLoop):
        self.index = index
        self.runner = runner
        self.loop = loop
        self.alive = True
        self.thread: threading.Thread | None = None


class ReplicaSet:
    """The replicas serving one scheduler (one replica without data parallelism)."""

    def __init__(self, scheduler: Scheduler, runners: Sequence[ModelRunner], observers: Sequence[BatchObserver] = ()):
        self.scheduler = scheduler
        self.observers = list(observers)  # one list shared by every loop: add_observer reaches all
        self.replicas: list[Replica] = []
        self._lock = threading.Lock()
        for index, runner in enumerate(runners):
            loop = BatchLoop(scheduler, runner)
            loop.observers = self.observers
            loop.may_take = partial(self._may_take, loop)
            loop.on_lost = partial(self._lost, index)
            self.replicas.append(Replica(index, runner, loop))

    @property
    def num_alive(self) -> int:
        return sum(r.alive for r in self.replicas)

    @property
    def num_oom_splits(self) -> int:
        return sum(r.loop.num_oom_splits for r in self.replicas)

    @property
    def num_failed_items(self) -> int:
        return sum(r.loop.num_failed_items for r in self.replicas)

    def prefix_cache_totals(self) -> dict[str, int]:
        """Every replica's prefix cache counters summed (``prefix_cache.CacheStats`` fields; all 0
        without a cache). Plain int reads of another thread's counters: a snapshot, never torn."""
        totals: dict[str, int] = {}
        for replica in self.replicas:
            cache = getattr(replica.runner, "cache", None)  # a remote replica's runner keeps none here
            for name, value in (dataclasses.asdict(cache.stats).items() if cache is not None else ()):
                totals[name] = totals.get(name, 0) + value
        return totals

    def warm_up(self, max_tokens: int) -> float:
        """Warm every replica (concurrently: each on its own device); returns seconds."""
        start = time.monotonic()
        with ThreadPoolExecutor(len(self.replicas), thread_name_prefix="warm-up") as pool:
            list(pool.map(lambda r: r.runner.warm_up(max_tokens), self.replicas))
        return time.monotonic() - start

    def start(self) -> None:
        """One thread per replica, each running the batch pipeline until the scheduler closes."""
        for replica in self.replicas:
            name = "gpu" if len(self.replicas) == 1 else f"gpu-{replica.index}"
            replica.thread = threading.Thread(target=replica.loop.run, kwargs={"block": True}, name=name, daemon=True)
            replica.thread.start()

    def join(self, timeout: float) -> None:
        """Wait (up to ``timeout`` seconds in all) for every replica thread to finish."""
        end = time.monotonic() + timeout
        for replica in self.replicas:
            if replica.thread is not None:
                replica.thread.join(max(0.0, end - time.monotonic()))

    def _may_take(self, loop: BatchLoop) -> bool:
        """Least-loaded: a second batch only while no live replica holds fewer."""
        mine = len(loop.held)
        return all(len(r.loop.held) >= mine for r in self.replicas if r.alive and r.loop is not loop)

    def _lost(self, index: int, held: list[PackedBatch], lost: ReplicaLost) -> None:
        """Replica ``index``'s device is gone: its batches go back to the queue for the others."""
        items = [item for batch in held for item in batch]
        with self._lock:  # requeue and count under one lock: the last replica to die sees all the work
            self.scheduler.requeue(items)
            self.replicas[index].alive = False
            left = self.num_alive
        log.error("replica %d (%s) lost (%s): %d sequence(s) go back to the queue; %d of %d replicas left",
                  index, self.replicas[index].runner.device, lost.cause, len(items), left, len(self.replicas))
        self.replicas[index].runner.close()  # a remote leader and its ranks give their GPUs back now
        if left == 0:
            self.scheduler.abort(EngineUnavailableError("no replica left: every device failed"))
