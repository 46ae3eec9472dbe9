"""Tensor parallel: one front end (rank 0) drives N-1 rank processes that hold the rest of the model.

Rank 0 is the process that serves (``rewardserve serve`` / ``encode``, or a library's ``Engine``):
its scheduler, runner and server are the only ones. It spawns ranks 1..N-1 itself
(``torch.multiprocessing`` "spawn"; no torchrun) and talks to each over a pipe:

    start ─▶ every rank loads its shard (``models/sharded.py``; no collective yet)
          ─▶ each rank reports "loaded" (or its error, in one line: rank 0 raises it)
          ─▶ "join": all ranks enter the process group (NCCL on CUDA, gloo on the CPU, file
             rendezvous, ``--tensor-parallel-timeout-s`` on every collective) and build a runner
          ─▶ per batch, rank 0's runner fills its staging row and, before running it, sends
             ("row", layout, graph key, max_seqlen) + the row's bytes to every rank
             (``ModelRunner.on_staged``); each rank runs the same row through the same forward
             (``ModelRunner.run_staged``: eager, compiled, or the same CUDA graph), so their
             collectives pair up; only rank 0 pools and runs the head
          ─▶ "warm_up" / "probe" mirror rank 0's (the same dummy batches, compiles and captures,
             in the same order); "stop" ends a rank cleanly.

Why a pipe and not a collective broadcast for the row: an idle rank waits for the next batch
without a timeout (a server may idle for hours; a collective would time out), the row is small
(8 bytes x about 2 x tokens), and a rank that has died shows at once as a broken pipe.

A rank that dies: a watcher thread on rank 0 sees its process end, logs it, marks the group
lost and aborts the NCCL group (a collective waiting for the dead rank returns an error instead
of waiting out the timeout; gloo fails such a collective by itself). Every later batch fails
at once with ``RankLost``: the offline engine raises it, a server's batch pipeline probes the
runner, marks its replica lost and goes NOT_SERVING (pods get restarted by their probes; with
data parallelism the other replicas keep serving, see ``remote_replica``).
Nothing waits forever: every collective has the timeout.
"""
from __future__ import annotations

import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.connection import Connection, wait
from typing import Any

import torch

from rewardserve.engine.config import EngineConfig
from rewardserve.engine.errors import EngineError
from rewardserve.engine.models.sharded import Shard, bind_group
from rewardserve.engine.runner import ModelRunner
from rewardserve.engine.staging import Layout

log = logging.getLogger(__name__)
STOP_TIMEOUT_S = 10.0


class RankLost(RuntimeError):
    """A rank of the group is gone: nothing can be computed any more. Not an EngineError on
    purpose: the batch pipeline then probes the runner, which fails too, so a server's replica
    is marked lost (health NOT_SERVING) instead of failing request after request."""


@dataclass(frozen=True)
class _Rendezvous:
    """What every rank needs to enter the one process group."""

    store: str          # a file for torch.distributed's FileStore (no port to race for)
    backend: str        # nccl or gloo
    world: int
    timeout_s: float

    def join(self, rank: int, device: torch.device) -> Any:
        import torch.distributed as dist

        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(self.backend, init_method=f"file://{self.store}", rank=rank, world_size=self.world,
                                timeout=timedelta(seconds=self.timeout_s),
                                device_id=device if device.type == "cuda" else None)
        return dist.group.WORLD


class TensorParallelGroup:
    """Rank 0's side of the group: the rank processes, their pipes, the process group."""

    def __init__(self, config: EngineConfig):
        import torch.distributed as dist
        import torch.multiprocessing as mp

        from rewardserve.engine.loader import resolve_device

        if dist.is_available() and dist.is_initialized():  # the group is this process's default one
            raise EngineError(f"--tensor-parallel-size {config.parallel.tensor_parallel_size}: this process already "
                              "belongs to a torch.distributed group (another tensor-parallel engine?); close it first")
        self.world = config.parallel.tensor_parallel_size
        self.shard = Shard(0, self.world)
        device = resolve_device(config.runner.device)
        fd, store = tempfile.mkstemp(prefix="rewardserve-tp-")
        os.close(fd)
        os.unlink(store)  # the FileStore creates it; a stale file would hold an old group's keys
        self.rendezvous = _Rendezvous(store, "nccl" if device.type == "cuda" else "gloo", self.world,
                                      config.parallel.tensor_parallel_timeout_s)
        self.group: Any = None
        self.lost: str | None = None  # why the group cannot compute any more
        self._closing = False
        self._lock = threading.Lock()
        context = mp.get_context("spawn")
        self.pipes: list[Connection] = []
        self.processes = []  # rank r's process is processes[r - 1]
        for rank in range(1, self.world):
            mine, theirs = context.Pipe()
            process = context.Process(target=worker_main, args=(rank, config, self.rendezvous, theirs), daemon=True,
                                      name=f"rewardserve-tp-rank{rank}")
            process.start()
            theirs.close()
            self.pipes.append(mine)
            self.processes.append(process)
        log.info("tensor parallel: started ranks 1..%d (%s)", self.world - 1, self.rendezvous.backend)

    def connect(self, model: torch.nn.Module, device: torch.device) -> None:
        """After rank 0 loaded its shard: wait for every rank's, then enter the process group
        together and bind it to ``model``'s parallel layers."""
        self._expect("loaded")
        self._send_all(("join",))
        self.group = self.rendezvous.join(0, device)
        bind_group(model, self.group)
        self._expect("ready")
        threading.Thread(target=self._watch, name="tp-watch", daemon=True).start()

    def _expect(self, word: str) -> None:
        """Wait for ``word`` from every rank; a rank's error or death is a one-line EngineError."""
        for rank, (pipe, process) in enumerate(zip(self.pipes, self.processes), start=1):
            wait([pipe, process.sentinel])
            try:
                reply = pipe.recv()
            except (EOFError, OSError):
                reply = ("error", f"the process ended (exit code {process.exitcode})")
            if reply[0] != word:
                raise EngineError(f"--tensor-parallel-size {self.world}: rank {rank} failed: {reply[1]}")

    def _watch(self) -> None:
        """Log and mark the group lost when a rank process ends while the group is in use."""
        ready = wait([p.sentinel for p in self.processes])
        if self._closing:
            return
        rank = 1 + [p.sentinel for p in self.processes].index(ready[0])
        self.processes[rank - 1].join(1.0)  # reap it: its exit code
        code = self.processes[rank - 1].exitcode
        self.lost = f"tensor-parallel rank {rank} died (exit code {code})"
        log.error("%s: this engine cannot compute any more; restart it", self.lost)
        if self.rendezvous.backend == "nccl":  # a collective waiting for the dead rank returns an error now
            try:
                from torch.distributed.distributed_c10d import _abort_process_group

                _abort_process_group()
            except Exception:  # noqa: BLE001 - the collective timeout still ends the wait
                log.exception("could not abort the NCCL group: waiting collectives end at their timeout")

    def _send_all(self, message: tuple, payload: memoryview | None = None) -> None:
        if self.lost is not None:
            raise RankLost(self.lost)
        with self._lock:  # one message at a time: a row's header and its bytes stay together
            for rank, pipe in enumerate(self.pipes, start=1):
                try:
                    pipe.send(message)
                    if payload is not None:
                        pipe.send_bytes(payload)
                except OSError as exc:  # BrokenPipeError: the rank is gone
                    self.lost = self.lost or f"tensor-parallel rank {rank} is gone ({type(exc).__name__})"
                    raise RankLost(self.lost) from exc

    def send_row(self, host: torch.Tensor, layout: Layout, key: Any, max_seqlen: int) -> None:
        """``ModelRunner.on_staged``: every rank runs this staging row next."""
        row = host.numpy()
        self._send_all(("row", layout, key, max_seqlen), memoryview(row).cast("B"))

    def send(self, *message: Any) -> None:
        """A command for every rank ("warm_up", max_tokens) or ("probe",)."""
        self._send_all(message)

    def close(self) -> None:
        """Stop every rank ("stop", then terminate what has not ended) and leave the group."""
        if self._closing:
            return
        self._closing = True
        for pipe in self.pipes:
            try:
                pipe.send(("stop",))
            except OSError:
                pass
        for process in self.processes:
            process.join(STOP_TIMEOUT_S)
            if process.is_alive():
                log.warning("tensor-parallel rank %s did not stop: terminating it", process.name)
                process.terminate()
                process.join(STOP_TIMEOUT_S)
        if self.group is not None:
            import torch.distributed as dist

            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001 - a lost group may not tear down cleanly
                log.debug("process group teardown failed", exc_info=True)
        for pipe in self.pipes:
            pipe.close()
        if os.path.exists(self.rendezvous.store):
            os.unlink(self.rendezvous.store)


class TensorParallelRunner(ModelRunner):
    """Rank 0's runner: every staging row, warm-up and probe is mirrored on the other ranks."""

    def __init__(self, model, device, backend, head_dtype, *, group: TensorParallelGroup, **options):
        super().__init__(model, device, backend, head_dtype, **options)
        self.group = group
        self.on_staged = group.send_row

    def warm_up(self, max_tokens: int) -> float:
        self.group.send("warm_up", max_tokens)
        return super().warm_up(max_tokens)

    def probe(self) -> None:
        self.group.send("probe")
        super().probe()


def worker_main(rank: int, config: EngineConfig, rendezvous: _Rendezvous, pipe: Connection) -> None:
    """Rank ``rank`` > 0: load the shard, join the group, then run what rank 0 sends until "stop"
    (or until rank 0 is gone: its pipe closes)."""
    logging.basicConfig(level=logging.WARNING, format=f"%(levelname)s tp-rank{rank} %(name)s: %(message)s")
    from rewardserve.engine import torch_setup

    torch_setup.configure(torch_setup.cache_dir_from(os.environ))  # this process's entry point
    try:
        runner = _worker_runner(rank, config, rendezvous, pipe)
    except Exception as exc:  # noqa: BLE001 - reported to rank 0 in one line, which raises it
        from rewardserve.engine.loader import one_line

        log.exception("rank %d failed to start", rank)
        _reply(pipe, ("error", one_line(exc)))
        return
    try:
        _serve(runner, pipe)
    except Exception:  # noqa: BLE001 - rank 0 sees the process end (and its collectives fail)
        log.exception("tensor-parallel rank %d failed", rank)
        raise SystemExit(1) from None


def _worker_runner(rank: int, config: EngineConfig, rendezvous: _Rendezvous, pipe: Connection) -> ModelRunner:
    from rewardserve.engine.core import make_runner
    from rewardserve.engine.loader import load

    loaded = load(config, Shard(rank, rendezvous.world))
    pipe.send(("loaded",))
    if pipe.recv()[0] != "join":
        raise SystemExit(0)
    bind_group(loaded.model, rendezvous.join(rank, loaded.device))
    runner = make_runner(config, loaded, loaded.model, loaded.device)
    pipe.send(("ready",))
    return runner


@torch.inference_mode()
def _serve(runner: ModelRunner, pipe: Connection) -> None:
    while True:
        try:
            message = pipe.recv()
        except (EOFError, OSError):  # rank 0 is gone
            return
        kind = message[0]
        if kind == "row":
            _, layout, key, max_seqlen = message
            host = torch.frombuffer(bytearray(pipe.recv_bytes()), dtype=torch.int64)  # [layout.total]
            runner.run_staged(host, layout, key, max_seqlen)
        elif kind == "warm_up":
            runner.warm_up(message[1])
        elif kind == "probe":
            runner.probe()
        elif kind == "stop":
            import torch.distributed as dist

            dist.destroy_process_group()
            return


def _reply(pipe: Connection, message: tuple) -> None:
    try:
        pipe.send(message)
    except OSError:
        pass
