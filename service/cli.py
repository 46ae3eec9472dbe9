"""The ``rewardserve`` console script: ``serve`` (the gRPC server) and ``encode`` (offline).

``serve``'s options are generated from ``ServeConfig`` (one default, one help text per field).
Environment variables are read here and nowhere else: ``REWARDSERVE_MODEL``, ``REWARDSERVE_HOST``
and ``REWARDSERVE_PORT`` act like options given before the command line's own (which win), and
``XDG_CACHE_HOME`` places the demo model. The event loop is chosen here too (``--event-loop``).
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
from typing import Callable, Sequence

from rewardserve.engine.cli_args import add_config_arguments, config_from_args
from rewardserve.service.config import ServeConfig
from rewardserve.service.logs import configure_logging
from rewardserve.service.process import exit_now

logger = logging.getLogger("rewardserve.service")

ENV_OPTIONS = {"REWARDSERVE_MODEL": "--model", "REWARDSERVE_HOST": "--host", "REWARDSERVE_PORT": "--port"}
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def build_parser() -> argparse.ArgumentParser:
    """``rewardserve {serve,encode}``; unknown options are errors."""
    parser = argparse.ArgumentParser(prog="rewardserve", description="Serve reward models over gRPC.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{serve,encode}")
    serve = commands.add_parser("serve", help="run the gRPC server (the built-in demo model without --model)")
    add_config_arguments(serve, ServeConfig)
    # Listed for --help only: main() hands `encode ...` to the engine's CLI before parsing.
    commands.add_parser("encode", help="score inputs offline, without a server (see `rewardserve encode --help`)",
                        add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["encode"]:
        from rewardserve.engine.cli import main_encode  # the engine's CLI: torch loads only here

        return main_encode(argv[1:]) or 0
    config = parse_serve_config(argv)
    configure_logging(config.server.log_level, config.server.log_format)
    with asyncio.Runner(loop_factory=loop_factory(config.server.event_loop)) as runner:
        # Exit before the runner joins its threads: the drain already gave up on busy ones.
        return exit_now(runner.run(serve(resolve_model(config))))


def parse_serve_config(argv: Sequence[str]) -> ServeConfig:
    """``serve ...`` (plus the REWARDSERVE_* variables) as a ServeConfig; bad options exit 2."""
    argv = list(argv)
    if argv[:1] == ["serve"]:
        argv = ["serve", *_env_arguments(), *argv[1:]]
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(ServeConfig, args)
        loop_factory(config.server.event_loop)
    except ValueError as exc:  # bad choice, half-configured TLS, port out of range, no uvloop
        parser.error(str(exc))
    return config


def loop_factory(event_loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The ``--event-loop`` choice as an ``asyncio.Runner`` loop factory (None: asyncio's own).

    uvloop's loop wakes faster when gRPC's poller thread hands it a completion, which is a
    few of the hand-offs every call makes; "auto" uses it when the package is installed.
    """
    if event_loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if event_loop == "uvloop":
            raise ValueError("--event-loop uvloop: the uvloop package is not installed "
                             "(pip install 'rewardserve[uvloop]')") from None
        return None
    return uvloop.new_event_loop


def _env_arguments() -> list[str]:
    args = []
    for name, flag in ENV_OPTIONS.items():
        if os.environ.get(name):
            args += [flag, os.environ[name]]
    return args


def resolve_model(config: ServeConfig) -> ServeConfig:
    """The configured model, or the built-in demo model (created on first use) with a warning."""
    from rewardserve.engine.demo import with_demo_model

    engine = with_demo_model(config.engine, os.environ.get("XDG_CACHE_HOME") or None, "rewardserve serve", logger)
    return config if engine is config.engine else dataclasses.replace(config, engine=engine)


async def serve(config: ServeConfig) -> int:
    """Run the server until SIGTERM/SIGINT, then drain; 0 on a clean stop, 1 when it cannot serve."""
    from rewardserve.service.server import RewardServer

    server = RewardServer(config)
    logger.info("event loop: %s", type(asyncio.get_running_loop()).__module__.split(".")[0])
    stop = _stop_on_signals()
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, server.reload_auth)
    try:
        await server.start()
    except RuntimeError as exc:  # gRPC could not bind the address
        logger.error("rewardserve cannot listen on %s: %s", config.server.address, exc)
        return 1
    failed = await _serve_until_stopped(server, stop)
    await server.drain(0.0 if failed else None)
    return 1 if failed else 0


async def _serve_until_stopped(server, stop: asyncio.Event) -> bool:
    """Wait for a stop signal; True when the engine failed to come up first."""
    ready = asyncio.create_task(server.wait_ready())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({ready, stopped}, return_when=asyncio.FIRST_COMPLETED)
    failed = ready.done() and not ready.cancelled() and ready.exception() is not None
    if not failed:
        await stopped
    ready.cancel()
    stopped.cancel()
    return failed


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM (orchestrators) or SIGINT (Ctrl-C)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        logger.info("rewardserve got %s: draining", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    return stop
