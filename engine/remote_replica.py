"""Data parallel over tensor-parallel groups: replicas 1..N-1 each run in a leader process.

A process belongs to at most one torch.distributed group, and NCCL wants one device per
process, so the serving process can be rank 0 of one group only. With ``--data-parallel-size D``
and ``--tensor-parallel-size T`` (both > 1):

    replica 0:   the serving process is rank 0 of group 0 (as with tensor parallelism alone),
                 on devices [0, T) from ``--device`` (cuda:K → cuda:K..K+T-1)
    replica r>0: a spawned leader process is rank 0 of group r, on devices [r*T, (r+1)*T);
                 it spawns its own ranks 1..T-1 (``tensor_parallel.TensorParallelGroup``, its
                 own rendezvous file, its own gloo/NCCL ports) and runs that replica's runner,
                 pooling and head included

In the serving process each leader is a ``RemoteRunner``: the runner interface the batch
pipeline and ``replicas.ReplicaSet`` use (``launch``/``collect``/``execute``, ``probe``,
``warm_up``, ``release_memory``, ``device``), so dispatch, failure isolation and requeue keep
their one owner (``replicas.py``). Over the leader's pipe::

    serving ──("batch", id, [WireItem])──▶ leader: PackedBatch → runner.launch → collect
            ◀─("done", id, [(data, logits) as numpy])──  or ("failed", id, exception)
            ──("warm_up", id, max_tokens) / ("probe", id)──▶ ◀──("done", id, value)
            ──("release",) / ("stop",)──▶

The leader overlaps like the batch pipeline: it launches batch i+1 before collecting batch i
when one is waiting. An exception comes back as its own type when it survives pickling (an
``EngineError`` that does not becomes an ``EngineError`` with its message, anything else a
``RuntimeError``), so out of memory still splits a batch and an engine error stays with its
item. A dead leader (broken pipe) or a dead rank of its group (``RankLost`` from the leader)
fails the batch, the pipeline's probe fails too, and ``ReplicaSet`` marks that replica lost
and requeues its batches; the other replicas keep serving.
"""
from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import pickle
import threading
from collections import deque
from dataclasses import dataclass
from itertools import count
from multiprocessing.connection import Connection
from typing import Any, Protocol, Sequence

import torch

from rewardserve.engine.batch import PackedBatch
from rewardserve.engine.config import EngineConfig
from rewardserve.engine.errors import EngineError
from rewardserve.engine.pooling import ResolvedPooling
from rewardserve.engine.tensor_parallel import STOP_TIMEOUT_S, RankLost

log = logging.getLogger(__name__)
Output = tuple[torch.Tensor, torch.Tensor | None]


class Runner(Protocol):
    """What a replica's batch pipeline asks of its runner (``ModelRunner`` and ``RemoteRunner``)."""

    device: torch.device

    def launch(self, batch: PackedBatch) -> Any: ...
    def collect(self, pending: Any) -> list[Output]: ...
    def execute(self, batch: PackedBatch) -> list[Output]: ...
    def probe(self) -> None: ...
    def warm_up(self, max_tokens: int) -> float: ...
    def release_memory(self) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class WireItem:
    """What a runner reads of a WorkItem (the request it belongs to stays in the serving process)."""

    token_ids: Sequence[int]
    positions: Sequence[int]
    pooling: ResolvedPooling


def replica_config(config: EngineConfig, index: int) -> EngineConfig:
    """The config of replica ``index``'s group: its first device (cuda:K + index*T; the CPU
    stays the CPU), one replica."""
    from rewardserve.engine.loader import resolve_device

    device = resolve_device(config.runner.device)
    name = f"cuda:{(device.index or 0) + index * config.parallel.tensor_parallel_size}" \
        if device.type == "cuda" else str(device)
    return dataclasses.replace(config, runner=dataclasses.replace(config.runner, device=name),
                               parallel=dataclasses.replace(config.parallel, data_parallel_size=1))


def check_devices(config: EngineConfig) -> None:
    """Refuse, before any process starts, D x T ranks on fewer GPUs (one line)."""
    from rewardserve.engine.loader import resolve_device

    device = resolve_device(config.runner.device)
    if device.type != "cuda":
        return
    dp, tp = config.parallel.data_parallel_size, config.parallel.tensor_parallel_size
    first, available = device.index or 0, torch.cuda.device_count()
    if first + dp * tp > available:
        raise EngineError(f"--data-parallel-size {dp} x --tensor-parallel-size {tp} from cuda:{first} needs GPUs "
                          f"up to cuda:{first + dp * tp - 1}; this machine has {available}")


@dataclass
class _Sent:
    """A batch the leader is computing (``RemoteRunner.launch``'s pending handle)."""

    id: int
    batch: PackedBatch


class RemoteRunner:
    """Replica ``index``'s runner, in its leader process (see the module doc)."""

    def __init__(self, index: int, config: EngineConfig):
        import torch.multiprocessing as mp

        self.index = index
        self.config = replica_config(config, index)
        self.device = torch.device(self.config.runner.device)
        self.stats: dict = {}
        self.rank_pids: list[int] = []  # the group's ranks 1..T-1 (children of the leader)
        self.num_batches = 0  # batches sent to the leader (each computed there, or failed)
        self._ids = count()
        self._replies: dict[int, tuple] = {}
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()
        self._closed = False
        self.pipe, theirs = mp.get_context("spawn").Pipe()
        # Not a daemon: a daemonic process may not start processes, and the leader starts its ranks.
        # Its pipe closes when this process ends, which ends the leader; close() (also at exit) stops it.
        self.process = mp.get_context("spawn").Process(target=leader_main, args=(index, self.config, theirs),
                                                       daemon=False, name=f"rewardserve-replica{index}")
        self.process.start()
        theirs.close()
        atexit.register(self.close)  # after multiprocessing's own exit hook: runs before it joins children
        self.pid = self.process.pid

    def connect(self) -> "RemoteRunner":
        """Wait until the leader has loaded its shard and its group is up; a failure is one line."""
        try:
            reply = self.pipe.recv()
        except (EOFError, OSError):
            self.process.join(1.0)
            reply = ("error", f"the process ended (exit code {self.process.exitcode})")
        if reply[0] != "ready":
            raise EngineError(f"data-parallel replica {self.index} ({self.device}) failed to start: {reply[1]}")
        self.rank_pids = reply[1]
        log.info("data-parallel replica %d ready on %s (leader pid %d, ranks %s)", self.index, self.device, self.pid,
                 self.rank_pids)
        return self

    def launch(self, batch: PackedBatch) -> _Sent:
        items = [WireItem(it.token_ids, it.positions, it.pooling) for it in batch.items]
        self.num_batches += 1
        return _Sent(self._send("batch", items), batch)

    def collect(self, pending: _Sent) -> list[Output]:
        outputs = self._reply(pending.id)
        return [(torch.from_numpy(data), None if logits is None else torch.from_numpy(logits))
                for data, logits in outputs]

    def execute(self, batch: PackedBatch) -> list[Output]:
        return self.collect(self.launch(batch))

    def probe(self) -> None:
        self._reply(self._send("probe"))

    def warm_up(self, max_tokens: int) -> float:
        seconds, self.stats = self._reply(self._send("warm_up", max_tokens))
        return seconds

    def release_memory(self) -> None:
        self._post(("release",))

    def wrap_forward(self, wrapper) -> None:
        raise NotImplementedError(f"replica {self.index}'s forward runs in its leader process (pid {self.pid}): "
                                  "wrap a local replica's forward instead")

    def _send(self, kind: str, *args: Any) -> int:
        request = next(self._ids)
        self._post((kind, request, *args))
        return request

    def _post(self, message: tuple) -> None:
        try:
            with self._send_lock:
                self.pipe.send(message)
        except OSError as exc:  # BrokenPipeError: the leader is gone
            raise RankLost(self._gone()) from exc

    def _reply(self, request: int) -> Any:
        """The leader's answer to ``request`` (answers to other requests are kept for their callers)."""
        with self._recv_lock:
            while request not in self._replies:
                try:
                    message = self.pipe.recv()
                except (EOFError, OSError) as exc:
                    raise RankLost(self._gone()) from exc
                self._replies[message[1]] = message
            kind, _, value = self._replies.pop(request)
        if kind == "failed":
            raise value
        return value

    def _gone(self) -> str:
        self.process.join(1.0)
        return f"data-parallel replica {self.index}'s leader process ended (exit code {self.process.exitcode})"

    def close(self) -> None:
        """Stop the leader (it stops its ranks), then terminate what has not ended."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        # Sent from a thread: a leader stuck in a collective reads nothing, and once the pipe's
        # buffer holds unread batches a send blocks (until the leader ends: then it fails).
        stop = threading.Thread(target=_send_stop, args=(self.pipe,), daemon=True, name="replica-stop")
        stop.start()
        self.process.join(STOP_TIMEOUT_S * 2)  # the leader waits up to STOP_TIMEOUT_S for each of its ranks
        if self.process.is_alive():
            log.warning("data-parallel replica %d's leader did not stop: terminating it", self.index)
            self.process.terminate()
            self.process.join(STOP_TIMEOUT_S)
        if self.process.is_alive():  # e.g. blocked in a collective with a dead rank, SIGTERM unheard
            log.warning("data-parallel replica %d's leader ignored SIGTERM: killing it", self.index)
            self.process.kill()
            self.process.join(STOP_TIMEOUT_S)
        stop.join(STOP_TIMEOUT_S)  # the leader has ended: a blocked send has failed by now
        self.pipe.close()


def start_remote(config: EngineConfig) -> list[RemoteRunner]:
    """Start replicas 1..D-1's leaders (they load while the serving process loads replica 0);
    ``check_devices`` has passed."""
    started: list[RemoteRunner] = []
    try:
        for index in range(1, config.parallel.data_parallel_size):
            started.append(RemoteRunner(index, config))
    except BaseException:
        close_all(started)
        raise
    return started


def close_all(runners: Sequence[RemoteRunner]) -> None:
    for runner in runners:
        runner.close()


# --- the leader process ---------------------------------------------------------------------

def leader_main(index: int, config: EngineConfig, pipe: Connection) -> None:
    """Replica ``index``'s rank 0: start and join its group, then run what the serving process
    sends until "stop" (or until the serving process is gone: its pipe closes)."""
    logging.basicConfig(level=logging.WARNING, format=f"%(levelname)s replica{index} %(name)s: %(message)s")
    from rewardserve.engine import torch_setup
    from rewardserve.engine.loader import one_line

    torch_setup.configure(torch_setup.cache_dir_from(os.environ))  # this process's entry point
    group = None
    try:
        group, runner = _leader_runner(config)
        pipe.send(("ready", [p.pid for p in group.processes]))
    except Exception as exc:  # noqa: BLE001 - reported in one line; the serving process raises it
        log.exception("replica %d failed to start", index)
        _try_send(pipe, ("error", one_line(exc)))
        if group is not None:
            group.close()
        return
    try:
        _Leader(runner, pipe).serve()
    finally:
        group.close()


def _leader_runner(config: EngineConfig):
    from rewardserve.engine.core import make_runner
    from rewardserve.engine.loader import load
    from rewardserve.engine.tensor_parallel import TensorParallelGroup, TensorParallelRunner

    group = TensorParallelGroup(config)
    try:
        loaded = load(config, group.shard)
        group.connect(loaded.model, loaded.device)
        return group, make_runner(config, loaded, loaded.model, loaded.device, TensorParallelRunner, group=group)
    except BaseException:
        group.close()
        raise


class _Leader:
    """The leader's loop: batches launched in order, at most one in flight behind the newest."""

    def __init__(self, runner, pipe: Connection):
        self.runner = runner
        self.pipe = pipe
        self.inflight: deque[tuple[int, Any]] = deque()  # (request id, Pending)

    @torch.inference_mode()
    def serve(self) -> None:
        while True:
            if self.inflight and not self.pipe.poll(0):  # nothing new: finish the oldest batch
                self._finish()
                continue
            try:
                message = self.pipe.recv()
            except (EOFError, OSError):  # the serving process is gone
                return
            kind = message[0]
            if kind == "batch":
                self._launch(message[1], message[2])
                continue
            while self.inflight:  # a command runs after every batch sent before it
                self._finish()
            if kind == "stop":
                return
            if kind == "release":
                self.runner.release_memory()
            elif kind == "probe":
                self._answer(message[1], lambda: self.runner.probe())
            elif kind == "warm_up":
                self._answer(message[1], lambda: (self.runner.warm_up(message[2]), dict(self.runner.stats)))

    def _launch(self, request: int, items: list[WireItem]) -> None:
        try:
            self.inflight.append((request, self.runner.launch(PackedBatch.of(items))))
        except Exception as exc:  # noqa: BLE001 - the serving process isolates it
            self._reply(("failed", request, portable(exc)))
        while len(self.inflight) > 1:
            self._finish()

    def _finish(self) -> None:
        request, pending = self.inflight.popleft()
        self._answer(request, lambda: [(data.numpy(), None if logits is None else logits.numpy())
                                       for data, logits in self.runner.collect(pending)])

    def _answer(self, request: int, compute) -> None:
        try:
            self._reply(("done", request, compute()))
        except Exception as exc:  # noqa: BLE001 - the serving process decides what it means
            self._reply(("failed", request, portable(exc)))

    def _reply(self, message: tuple) -> None:
        _try_send(self.pipe, message)


def portable(exc: Exception) -> Exception:
    """``exc`` if it survives pickling as itself; else an ``EngineError`` (for engine errors:
    they stay with their item) or a ``RuntimeError`` with its type and message."""
    try:
        back = pickle.loads(pickle.dumps(exc))
        if type(back) is type(exc):
            return exc
    except Exception:  # noqa: BLE001 - not picklable: described below
        pass
    text = f"{type(exc).__name__}: {exc}"
    return EngineError(text) if isinstance(exc, EngineError) else RuntimeError(text)


def _send_stop(pipe: Connection) -> None:
    try:
        pipe.send(("stop",))
    except OSError:  # the leader is gone
        pass


def _try_send(pipe: Connection, message: tuple) -> None:
    try:
        pipe.send(message)
    except OSError:  # the serving process is gone
        pass
    except Exception as exc:  # noqa: BLE001 - an unpicklable value: its request still gets an answer
        pipe.send(("failed", message[1], RuntimeError(f"unpicklable reply: {exc}")))
