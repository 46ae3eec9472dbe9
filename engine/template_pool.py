"""Request chat templates, rendered in worker processes that can be stopped.

A chat template sent with a request is code: ``{% for i in range(10**9) %}`` never ends, and
``{{ 'ab ' * 10**8 }}`` allocates gigabytes. Rendered in the server's process it could not be
interrupted. Here each render runs in one of a few worker processes (forked from a forkserver
that preloaded ``engine/template_worker.py``), under three budgets: time (the worker is killed and
replaced when it runs over), rendered size, and memory (an address-space cap in the worker).
A hostile template thus costs one worker for at most its time budget.
"""
from __future__ import annotations

import logging
import multiprocessing
import queue
import threading
from typing import Any, Sequence

from rewardserve.engine.errors import EngineOverloadedError

logger = logging.getLogger(__name__)

_WORKER_MODULE = "rewardserve.engine.template_worker"
_START_TIMEOUT_S = 60.0  # the forkserver's first start imports transformers' template module


class TemplateError(Exception):
    """The template could not be rendered within its budgets (the reason says which)."""


class TemplatePool:
    """``workers`` processes rendering request templates; started on first use.

    Thread-safe: the engine's tokenizer threads call ``render`` concurrently; each call holds
    one worker for the duration of its render.
    """

    def __init__(self, workers: int, timeout_s: float, max_chars: int, memory_bytes: int) -> None:
        self.timeout_s = timeout_s
        self.max_chars = max_chars
        self._memory_bytes = memory_bytes
        self._size = workers
        self._idle: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._started = False
        self._closed = False
        self._ctx = multiprocessing.get_context("forkserver")
        self.num_killed = 0  # renders stopped for running over their time budget

    def render(self, template: str, messages: Sequence[dict[str, Any]], options: dict[str, Any]) -> str:
        """``template`` rendered over ``messages`` (``options``: add_generation_prompt,
        continue_final_message, special tokens and template kwargs). Raises TemplateError."""
        self._start()
        try:
            worker = self._idle.get(timeout=self.timeout_s)
        except queue.Empty:
            raise EngineOverloadedError("every request-template worker is busy", self.timeout_s) from None
        process, conn = worker
        try:
            conn.send((template, list(messages), options))
            if conn.poll(self.timeout_s):
                status, value = conn.recv()
                self._idle.put(worker)
                if status != "ok":
                    raise TemplateError(value)
                return value
        except (EOFError, OSError, BrokenPipeError):
            # The worker died (e.g. killed by the kernel): replace it.
            self._replace(process, conn)
            raise TemplateError("the template worker stopped while rendering it") from None
        self.num_killed += 1
        self._replace(process, conn)
        raise TemplateError(f"rendering took longer than the budget of {self.timeout_s * 1000:.0f} ms")

    def _start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._ctx.set_forkserver_preload([_WORKER_MODULE])
            for _ in range(self._size):
                self._idle.put(self._spawn())
            self._started = True

    def _spawn(self) -> tuple[Any, Any]:
        from rewardserve.engine import template_worker

        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(target=template_worker.serve, args=(child, self.max_chars, self._memory_bytes),
                                    name="rewardserve-template", daemon=True)
        process.start()
        child.close()
        return process, parent

    def _replace(self, process: Any, conn: Any) -> None:
        """Kill a worker that ran over (or died) and put a fresh one in its place."""
        process.kill()
        process.join(5)
        conn.close()
        with self._lock:
            if self._closed:
                return
            self._idle.put(self._spawn())

    def close(self) -> None:
        """Stop every worker (engine shutdown)."""
        with self._lock:
            self._closed = True
        while True:
            try:
                process, conn = self._idle.get_nowait()
            except queue.Empty:
                return
            process.kill()
            conn.close()
