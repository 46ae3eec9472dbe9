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
             (``TensorParallelRunner.run_staged``); each rank runs the same row through the same forward
             (``ModelRunner.run_staged``: eager, compiled, or the same CUDA graph), so their
             collectives pair up; only rank 0 pools and runs the head
          ─▶ "warm_up" / "probe" mirror rank 0's (the same dummy batches, compiles and captures,
             in the same order); "stop" ends a rank cleanly.

Why a pipe and not a collective broadcast for the row: an idle rank waits for the next batch
without a timeout (a server may idle for hours; a collective would time out), the row is small
(8 bytes x about 2 x tokens), and a rank that has died shows at once as a broken pipe.

A rank whose forward raises on its own (out of memory there only, say) must not leave the others
waiting in an all-reduce it never joins, nor pair its next batch's collectives with their last
ones. Every rank runs each row in step (``run_in_step``): when its forward fails it issues the
all-reduces it still owes on zeros (every forward all-reduces the same number of [T, H] tensors;
``sharded.COLLECTIVES`` counts the eager forward's calls, and the process group's sequence
number those of a compiled forward, once a row has shown it counts them), and after every row all ranks
all-reduce a tiny failure flag [N] (one per rank). A failed rank > 0 reports ("failed", row,
error type, message) over its pipe; rank 0 reads the flags with the row's results (at collect:
no extra host sync) and raises the rank's error, naming it: ``torch.OutOfMemoryError`` for out
of memory, so the batch pipeline splits and retries as on one GPU, else a ``RuntimeError``
(whose one-token probe then decides whether the group still computes). Rank 0's own failure
raises its own error, after the same catch-up. The group stays usable: every rank has issued
the same collectives, and rows are computed by every rank in the order they are sent.

Where a rank cannot keep in step (a CUDA graph's replay failed, or a compiled forward before
the sequence number was shown to count: what it issued is unknown; its catch-up failed; its
warm-up or probe failed: compiles and captures may differ between ranks after one), it reports
the failure as fatal and exits, and the group is lost.

A rank that dies (or reports a fatal failure): a watcher thread on rank 0 sees its report or its
process end, logs it, marks the group lost and aborts the NCCL group (a collective waiting for
the dead rank returns an error instead of waiting out the timeout; gloo fails such a collective
by itself when the peer's connection closes). The batch in flight and every later one fail with
``RankLost`` naming the rank and its error: the offline engine raises it, a server's batch
pipeline probes the runner, marks its replica lost and goes NOT_SERVING (pods get restarted by
their probes; with data parallelism the other replicas keep serving, see ``remote_replica``).
Nothing waits forever: every collective has the timeout.
"""
from __future__ import annotations

import logging
import os
import tempfile
import threading
import traceback
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.connection import Connection, wait
from typing import Any, Callable

import torch

from rewardserve.engine.config import EngineConfig
from rewardserve.engine.errors import EngineError
from rewardserve.engine.models.sharded import COLLECTIVES, Shard, all_reduce, bind_group
from rewardserve.engine.runner import ModelRunner
from rewardserve.engine.staging import Layout

log = logging.getLogger(__name__)
STOP_TIMEOUT_S = 10.0
LOST_GRACE_S = 5.0  # how long rank 0, its own collectives broken, waits for a rank to say why


class RankLost(RuntimeError):
    """A rank of the group is gone: nothing can be computed any more. Not an EngineError on
    purpose: the batch pipeline then probes the runner, which fails too, so a server's replica
    is marked lost (health NOT_SERVING) instead of failing request after request."""


class OutOfStep(Exception):
    """This rank could not keep its collectives in step with the group's after ``cause``."""

    def __init__(self, cause: Exception):
        super().__init__(str(cause))
        self.cause = cause


Computed = tuple[torch.Tensor, torch.Tensor]  # hidden [T or bucket, H], gather rows [G]


def run_in_step(run: Callable[[], Computed], *, tokens: int, path: str, device: torch.device, rank: int,
                world: int, group: Any) -> tuple[Computed | None, Exception | None, torch.Tensor]:
    """Run one staging row's forward (``run``; ``tokens``: its T; ``path``: ``forward_path``) on
    this rank so that every rank issues the same collectives whatever fails: → (result, None,
    flags) or (None, error, flags); flags [world] int32 is the all-reduced failure flag of every
    rank (on ``device``: read it with the row's results). Raises ``OutOfStep`` when that cannot
    be kept (see the module doc)."""
    COLLECTIVES.issued = 0
    start = _sequence(group)
    result, error = None, None
    try:
        result = run()
    except Exception as exc:  # noqa: BLE001 - every failure is the caller's; the collectives are ours
        issued = _issued(path, start, group)
        if issued is None:
            raise OutOfStep(exc) from exc
        error = exc
        traceback.clear_frames(exc.__traceback__)  # the failed forward's activations go now
        try:  # the all-reduces the others wait in (or will reach), on zeros [T, H]
            owed = COLLECTIVES.per_forward - issued
            if owed > 0:
                filler = torch.zeros(tokens, COLLECTIVES.width, dtype=COLLECTIVES.dtype, device=device)
                for _ in range(owed):
                    all_reduce(filler, group)
        except Exception as catch_up:  # noqa: BLE001
            raise OutOfStep(exc) from catch_up
    else:
        if path != "graph":  # a replay's collectives bypass the process group's count
            now = _sequence(group)
            COLLECTIVES.sequence_counts = None not in (start, now) and now - start == COLLECTIVES.per_forward
    try:
        flags = torch.zeros(world, dtype=torch.int32, device=device)
        flags[rank] = int(error is not None)
        flags = all_reduce(flags, group)  # [world]: which ranks failed this row
    except Exception as exc:  # noqa: BLE001
        raise OutOfStep(error or exc) from exc
    return result, error, flags


def forward_path(runner: ModelRunner, key: Any) -> str:
    """How a row runs: "graph" (CUDA graph ``key``), "compiled" or "eager"."""
    return "graph" if key is not None else "compiled" if runner.stats.get("compile") is True else "eager"


def _sequence(group: Any) -> int | None:
    """The process group's count of collectives issued (None where the backend keeps none)."""
    try:
        return group._get_sequence_number_for_group()
    except Exception:  # noqa: BLE001 - not every backend or torch version has it
        return None


def _issued(path: str, start: int | None, group: Any) -> int | None:
    """How many all-reduces the failed forward issued (None: unknown)."""
    if path == "eager":
        return COLLECTIVES.issued
    now = _sequence(group) if path == "compiled" and COLLECTIVES.sequence_counts else None
    return None if now is None or start is None else now - start


def _describe(exc: BaseException) -> tuple[str, str]:
    """(error type, first line of the message): what a rank reports of a failure."""
    text = str(exc).strip().splitlines()
    return type(exc).__name__, text[0] if text else ""


@dataclass(frozen=True)
class _Rendezvous:
    """What every rank needs to enter the one process group."""

    store: str          # a file for torch.distributed's FileStore (no port to race for)
    backend: str        # nccl or gloo
    world: int
    timeout_s: float

    def join(self, rank: int, device: torch.device) -> Any:
        import torch.distributed as dist

        if device.type == "cuda":  # NCCL binds each rank's communicator to the current device:
            torch.cuda.set_device(device)  # set before the group exists (the runner then owns the rest)
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
        self.rows = 0                  # staging rows sent: each rank numbers them the same
        self._reports: dict[tuple[int, int], tuple[str, str]] = {}  # (rank, row) → (error type, message)
        self._changed = threading.Condition()  # a report came in, or the group was lost
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
        """Keep the ranks' failure reports; mark the group lost on a fatal one or when a rank
        process ends while the group is in use."""
        pipes = {pipe: rank for rank, pipe in enumerate(self.pipes, start=1)}
        sentinels = {p.sentinel: rank for rank, p in enumerate(self.processes, start=1)}
        while not self._closing:
            try:
                ready = wait([*pipes, *sentinels])
            except (OSError, ValueError):  # close() closed the pipes
                return
            if self._closing:
                return
            for pipe in [r for r in ready if r in pipes]:  # before deaths: a report says why
                try:
                    self._on_report(pipes[pipe], pipe.recv())
                except (EOFError, OSError):  # its process is ending: its sentinel says so
                    del pipes[pipe]
            dead = [sentinels[r] for r in ready if not isinstance(r, Connection) and r in sentinels]
            if dead:
                process = self.processes[dead[0] - 1]
                process.join(1.0)  # reap it: its exit code
                self._mark_lost(f"tensor-parallel rank {dead[0]} died (exit code {process.exitcode})")
                return

    def _on_report(self, rank: int, message: tuple) -> None:
        """("failed", row or None, error type, message, fatal) from rank ``rank``."""
        _, row, kind, text, fatal = message
        log.error("tensor-parallel rank %d failed%s: %s: %s", rank, "" if row is None else f" on row {row}", kind,
                  text)
        with self._changed:
            self._reports[(rank, row)] = (kind, text)
            self._changed.notify_all()
        if fatal:
            self._mark_lost(f"tensor-parallel rank {rank} failed: {kind}: {text}")

    def _mark_lost(self, reason: str) -> None:
        """The group cannot compute any more (the first reason stays); abort what waits on it."""
        with self._changed:
            if self.lost is not None:
                return
            self.lost = reason
            self._changed.notify_all()
        log.error("%s: this engine cannot compute any more; restart it", reason)
        if self.rendezvous.backend == "nccl":  # a collective waiting for the lost rank returns an error now
            try:
                from torch.distributed.distributed_c10d import _abort_process_group

                _abort_process_group()
            except Exception:  # noqa: BLE001 - the collective timeout still ends the wait
                log.exception("could not abort the NCCL group: waiting collectives end at their timeout")

    def rank_error(self, rank: int, row: int) -> Exception:
        """The error of rank ``rank`` (> 0) on ``row``, which its flag said failed: its report, as
        ``torch.OutOfMemoryError`` (the batch pipeline splits the batch) or ``RuntimeError``;
        ``RankLost`` when the group is lost."""
        with self._changed:  # the report was sent with the flag: it is in the pipe or on its way
            self._changed.wait_for(lambda: (rank, row) in self._reports or self.lost is not None,
                                   timeout=self.rendezvous.timeout_s)
            report = self._reports.pop((rank, row), None)
        if self.lost is not None or report is None:
            return RankLost(self.lost or f"tensor-parallel rank {rank} failed on a batch and did not say why")
        kind, text = report
        message = f"tensor-parallel rank {rank} failed: {kind}: {text}"
        return torch.OutOfMemoryError(message) if kind == "OutOfMemoryError" else RuntimeError(message)

    def broken(self, exc: Exception) -> RankLost:
        """Rank 0 could not keep in step after ``exc``: the group is lost. Another rank's failure
        (reported, or its death) is usually why, so its reason is awaited briefly."""
        with self._changed:
            self._changed.wait_for(lambda: self.lost is not None, timeout=LOST_GRACE_S)
        kind, text = _describe(exc)
        self._mark_lost(f"tensor-parallel rank 0 failed: {kind}: {text}")
        return RankLost(self.lost)

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
                    self._mark_lost(f"tensor-parallel rank {rank} is gone ({type(exc).__name__})")
                    raise RankLost(self.lost) from exc

    def send_row(self, host: torch.Tensor, layout: Layout, key: Any, max_seqlen: int) -> int:
        """Every rank runs this staging row next; returns its number (ranks report failures by it)."""
        row = host.numpy()
        self._send_all(("row", layout, key, max_seqlen), memoryview(row).cast("B"))
        self.rows += 1  # one sending thread: the runner's
        return self.rows

    def send(self, *message: Any) -> None:
        """A command for every rank ("warm_up", max_tokens) or ("probe",)."""
        self._send_all(message)

    def wrap_forward(self, rank: int, wrapper: Callable) -> None:
        """``ModelRunner.wrap_forward(wrapper)`` on rank ``rank`` > 0, after the rows sent so far
        (fault injection and tracing of one rank; ``wrapper`` must pickle: a module-level callable)."""
        if not 0 < rank < self.world:
            raise ValueError(f"rank {rank}: the other ranks are 1..{self.world - 1} (rank 0 is this process's runner)")
        if self.lost is not None:
            raise RankLost(self.lost)
        with self._lock:
            self.pipes[rank - 1].send(("wrap_forward", wrapper))

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
    """Rank 0's runner: every staging row, warm-up and probe is mirrored on the other ranks; a
    row's failure on any rank is raised with the batch (see the module doc)."""

    def __init__(self, model, device, backend, head_dtype, *, group: TensorParallelGroup, **options):
        super().__init__(model, device, backend, head_dtype, **options)
        self.group = group
        self._rows: list[tuple[int, torch.Tensor]] = []  # (row, flags [N]) run by the current launch
        self._flags: dict[int, list[tuple[int, torch.Tensor]]] = {}  # id(Pending) → its rows' flags

    def run_staged(self, host, layout, key, max_seqlen):
        row = self.group.send_row(host, layout, key, max_seqlen)
        try:
            result, error, flags = run_in_step(lambda: super(TensorParallelRunner, self).run_staged(
                host, layout, key, max_seqlen), tokens=layout.tok_cap, path=forward_path(self, key),
                device=self.device, rank=0, world=self.group.world, group=self.group.group)
        except OutOfStep as out:
            raise self.group.broken(out.cause) from out.cause
        if error is not None:  # every rank is in step again: this batch fails as on one GPU
            raise error
        self._rows.append((row, flags))
        return result

    def launch(self, batch):
        self._rows = []
        pending = super().launch(batch)
        if pending.outputs is not None:  # computed already (CPU): so are the flags
            self._check(self._rows)
        else:
            self._flags[id(pending)] = self._rows
        return pending

    def collect(self, pending):
        rows = self._flags.pop(id(pending), [])
        outputs = super().collect(pending)
        self._check(rows)
        return outputs

    def _check(self, rows: list[tuple[int, torch.Tensor]]) -> None:
        """Raise the first other rank's failure on ``rows`` (their results are sums with zeros),
        or ``RankLost`` (an aborted NCCL group ends its kernels without an error)."""
        for row, flags in rows:
            failed = [rank for rank, flag in enumerate(flags.tolist()) if flag and rank > 0]
            if failed:
                raise self.group.rank_error(failed[0], row)
        if self.group.lost is not None:
            raise RankLost(self.group.lost)

    def warm_up(self, max_tokens: int) -> float:
        self.group.send("warm_up", max_tokens)
        return self._together(lambda: super(TensorParallelRunner, self).warm_up(max_tokens))

    def probe(self) -> None:
        self.group.send("probe")
        self._together(lambda: super(TensorParallelRunner, self).probe())

    def _together(self, run: Callable[[], Any]) -> Any:
        """A warm-up or probe: its failure on any rank loses the group (compiles and captures may
        differ between ranks after one, and its collectives are not counted)."""
        try:
            value = run()
        except Exception as exc:  # noqa: BLE001
            raise self.group.broken(exc) from exc
        if self.group.lost is not None:
            raise RankLost(self.group.lost)
        return value


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
        _Rank(runner, rank, rendezvous.world, pipe).serve()
    except Exception:  # noqa: BLE001 - reported (fatal) in _Rank; rank 0 also sees the process end
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


class _Rank:
    """Rank ``rank`` > 0's loop: run what rank 0 sends, in order; report failures."""

    def __init__(self, runner: ModelRunner, rank: int, world: int, pipe: Connection):
        self.runner, self.rank, self.world, self.pipe = runner, rank, world, pipe
        self.rows = 0  # numbered as rank 0 numbers them

    @torch.inference_mode()
    def serve(self) -> None:
        while True:
            try:
                message = self.pipe.recv()
            except (EOFError, OSError):  # rank 0 is gone
                return
            kind = message[0]
            if kind == "row":
                self._row(*message[1:])
            elif kind in ("warm_up", "probe"):
                try:
                    self.runner.warm_up(message[1]) if kind == "warm_up" else self.runner.probe()
                except Exception as exc:
                    self._report(None, exc, fatal=True)
                    raise
            elif kind == "wrap_forward":
                self.runner.wrap_forward(message[1])
            elif kind == "stop":
                import torch.distributed as dist

                dist.destroy_process_group()
                return

    def _row(self, layout: Layout, key: Any, max_seqlen: int) -> None:
        self.rows += 1
        host = torch.frombuffer(bytearray(self.pipe.recv_bytes()), dtype=torch.int64)  # [layout.total]
        try:
            _, error, _ = run_in_step(lambda: self.runner.run_staged(host, layout, key, max_seqlen),
                                      tokens=layout.tok_cap, path=forward_path(self.runner, key),
                                      device=self.runner.device, rank=self.rank, world=self.world,
                                      group=_world_group())
        except OutOfStep as out:
            self._report(self.rows, out.cause, fatal=True)
            raise
        if error is not None:
            self._report(self.rows, error, fatal=False)
            if isinstance(error, torch.OutOfMemoryError):  # as rank 0's pipeline does before its retry
                self.runner.release_memory()

    def _report(self, row: int | None, exc: Exception, *, fatal: bool) -> None:
        log.error("tensor-parallel rank %d failed%s: %r", self.rank, "" if row is None else f" on row {row}", exc)
        _reply(self.pipe, ("failed", row, *_describe(exc), fatal))


def _world_group() -> Any:
    import torch.distributed as dist

    return dist.group.WORLD


def _reply(pipe: Connection, message: tuple) -> None:
    try:
        pipe.send(message)
    except OSError:
        pass
