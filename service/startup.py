"""What ``rewardserve serve`` checks and runs before the server: ports, the event loop, and
start-up failures as one line (cause and fix) instead of a traceback.

Nothing here imports torch: a busy port or a bad option is reported in about a second, before
the model (or the demo model) is touched.
"""
from __future__ import annotations

import asyncio
import errno
import socket
from typing import Any, Callable, Coroutine

from rewardserve.service.config import ServerConfig

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


class StartupError(Exception):
    """The server cannot start: ``cause`` says why, ``fix`` what to do (printed as one line)."""

    def __init__(self, cause: str, fix: str = ""):
        self.cause, self.fix = cause, fix
        super().__init__(f"{cause}; {fix}" if fix else cause)


def check_ports(config: ServerConfig) -> None:
    """Raise StartupError when the gRPC or the metrics port cannot be bound on ``config.host``.

    A probe bind (closed at once) with SO_REUSEADDR, as gRPC binds: a port left in TIME_WAIT is
    free, one that something listens on is not. Port 0 (any free port) needs no check.
    """
    if config.port and config.port == config.metrics_port:
        raise StartupError(f"--port and --metrics-port are both {config.port}", "give them different ports")
    for flag, port in (("--port", config.port), ("--metrics-port", config.metrics_port)):
        if port:
            _probe(config.host, port, flag)


def _probe(host: str, port: int, flag: str) -> None:
    bare = host.strip("[]")
    try:
        infos = socket.getaddrinfo(bare or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"--host {host}: not an address of this machine ({exc.strerror})",
                           "use 0.0.0.0 (every interface), 127.0.0.1 or one of this machine's addresses") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise _bind_error(host, port, flag, exc) from None


def _bind_error(host: str, port: int, flag: str, exc: OSError) -> StartupError:
    where = f"{flag} {port} on {host}"
    if exc.errno == errno.EADDRINUSE:
        return StartupError(f"{where}: the port is already in use (another rewardserve, or another program)",
                            f"stop it, or pick another port with {flag} (0 picks a free one)")
    if exc.errno == errno.EACCES:
        return StartupError(f"{where}: permission denied (ports below 1024 need privileges)",
                            f"pick a port above 1023 with {flag}")
    if exc.errno == errno.EADDRNOTAVAIL:
        return StartupError(f"{where}: {host} is not an address of this machine",
                            "use 0.0.0.0 (every interface), 127.0.0.1 or one of this machine's addresses")
    return StartupError(f"{where}: cannot listen ({exc.strerror or exc})", f"check --host and {flag}")


def run(main: Coroutine[Any, Any, int], loop_factory: LoopFactory | None) -> int:
    """Run ``main`` to completion on a new loop from ``loop_factory`` (asyncio's own when None).

    ``asyncio.Runner(loop_factory=...)`` does this from Python 3.11 on; this is the same life
    cycle for 3.10: run, cancel what is left, close async generators and the default executor.
    """
    loop = (loop_factory or asyncio.new_event_loop)()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        try:
            _cancel_remaining(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _cancel_remaining(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
