"""The ``rewardserve`` console script: ``serve`` (the gRPC server), ``encode`` and ``score`` (offline).

``serve``'s options are generated from ``ServeConfig`` (one default, one help text per field).
Environment variables are read here and nowhere else: ``REWARDSERVE_MODEL``, ``REWARDSERVE_HOST``
and ``REWARDSERVE_PORT`` act like options given before the command line's own (which win), and
``XDG_CACHE_HOME`` places the demo model. The event loop is chosen here too (``--event-loop``).

Start-up failures (bad options, a busy port, a model that cannot be loaded) end the process with
one line naming the cause and the fix, and exit code 2; ``--log-level DEBUG`` adds the traceback.
The ports are checked before torch is imported or the demo model is built. ``--help`` imports
no torch either.
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

from rewardserve.engine.cli_args import OneLineParser, add_config_arguments, config_from_args
from rewardserve.service.config import ServeConfig
from rewardserve.service.process import exit_now
from rewardserve.service.startup import StartupError, check_ports, run

logger = logging.getLogger("rewardserve.service")

ENV_OPTIONS = {"REWARDSERVE_MODEL": "--model", "REWARDSERVE_HOST": "--host", "REWARDSERVE_PORT": "--port"}
ModelPreparer = Callable[[ServeConfig], ServeConfig]
SERVE_DESCRIPTION = """\
Run the gRPC server (rewardserve.v1.RewardService, grpc.health.v1, reflection).

Without --model (and without REWARDSERVE_MODEL) it serves the built-in demo model: tiny, random
weights (meaningless scores), created on first use without a download. The server is ready when
the log says "rewardserve ready" and the health check answers SERVING. SIGTERM or Ctrl-C drains
and exits 0; a start-up failure prints one line and exits 2.
"""


def environment_help() -> str:
    """The environment variables ``serve`` reads, as the --help epilog."""
    lines = ["environment:"]
    lines += [f"  {name:<24} default for serve's {flag} (the command line wins)" for name, flag in ENV_OPTIONS.items()]
    lines += ["  XDG_CACHE_HOME           the demo model and the torch.compile cache live under",
              "                           $XDG_CACHE_HOME/rewardserve (default ~/.cache/rewardserve)",
              "  TORCHINDUCTOR_CACHE_DIR  moves the torch.compile cache",
              "  HF_HOME, HF_TOKEN, HF_ENDPOINT  hub downloads of --model HUB_ID (huggingface_hub's own)"]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """``rewardserve {serve,encode,score}``; unknown options are errors."""
    parser = OneLineParser(prog="rewardserve", description="Serve reward models over gRPC, or score inputs offline.",
                           epilog=environment_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{serve,encode,score}")
    serve = commands.add_parser("serve", help="run the gRPC server (the built-in demo model without --model)",
                                description=SERVE_DESCRIPTION, epilog=environment_help(), usage="%(prog)s [options]",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(serve, ServeConfig)
    # Listed for --help only: main() hands `encode ...` to the engine's CLI before parsing.
    commands.add_parser("encode", help="score JSONL inputs offline, without a server (see rewardserve encode --help)",
                        add_help=False)
    commands.add_parser("score", help="score queries against documents offline (see `rewardserve score --help`)",
                        add_help=False)
    return parser


def main(argv: Sequence[str] | None = None, *, prepare_model: ModelPreparer | None = None) -> int:
    """Entry point; returns the process exit code (2: a start-up failure, printed as one line).

    ``prepare_model`` (default ``resolve_model``: the demo model when --model is empty) is a seam:
    tests pass one that records whether start-up got that far."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["encode"]:
        from rewardserve.engine.cli import main_encode  # the engine's CLI: torch loads only there

        return main_encode(argv[1:]) or 0
    if argv[:1] == ["score"]:
        from rewardserve.engine.score_cli import main_score  # offline Score: torch loads only here

        return main_score(argv[1:]) or 0
    config = parse_serve_config(argv)
    from rewardserve.service.logs import configure_logging  # imports grpc: not for --help

    configure_logging(config.server.log_level, config.server.log_format)
    try:
        check_ports(config.server)  # before torch and the demo model: a busy port fails at once
        config = (prepare_model or resolve_model)(config)
        from rewardserve.engine.torch_setup import cache_dir_from, configure  # torch loads here, after the checks

        configure(cache_dir_from(os.environ))
        return run(_serve_then_exit(config), loop_factory(config.server.event_loop))
    except StartupError as exc:
        logger.debug("start-up failure", exc_info=exc)  # the traceback, with --log-level DEBUG
        print(f"rewardserve serve: error: {exc}", file=sys.stderr)
        return 2


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
        parser.exit(2, f"rewardserve serve: error: {exc} (see rewardserve serve --help)\n")
    return config


def loop_factory(event_loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The ``--event-loop`` choice as a loop factory for ``startup.run`` (None: asyncio's own).

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
    from rewardserve.engine.demo import demo_model_dir, with_demo_model

    cache = os.environ.get("XDG_CACHE_HOME") or None
    try:
        engine = with_demo_model(config.engine, cache, "rewardserve serve", logger)
    except OSError as exc:
        raise StartupError(f"cannot create the demo model in {demo_model_dir(cache).parent} ({exc.strerror or exc})",
                           "point XDG_CACHE_HOME at a writable folder, or pass --model") from exc
    return config if engine is config.engine else dataclasses.replace(config, engine=engine)


async def _serve_then_exit(config: ServeConfig) -> int:
    """Serve, then leave at once: the loop's clean-up would join tokenizer threads the drain
    already gave up on (see service/process.py). Start-up failures raise before this exits."""
    exit_now(await serve(config))


async def serve(config: ServeConfig) -> int:
    """Run the server until SIGTERM/SIGINT, then drain; 0 on a clean stop. Raises StartupError
    when it cannot listen or the engine cannot come up."""
    from rewardserve.service.server import RewardServer

    server = RewardServer(config)
    logger.info("event loop: %s", type(asyncio.get_running_loop()).__module__.split(".")[0])
    stop = _stop_on_signals()
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, server.reload_auth)
    try:
        await server.start()
    except (RuntimeError, OSError) as exc:  # gRPC or metrics could not bind (taken since check_ports)
        await server.drain(0.0)
        raise StartupError(f"cannot listen on {config.server.address} (metrics port {config.server.metrics_port}): "
                           f"{exc}", "stop what holds the port, or pick others with --port / --metrics-port") from exc
    failure = await _serve_until_stopped(server, stop)
    await server.drain(0.0 if failure else None)
    if failure is not None:
        raise _load_failure(failure) from failure
    return 0


def _load_failure(exc: BaseException) -> StartupError:
    """The engine's own errors name the cause and the fix; anything else gets a pointer to DEBUG."""
    from rewardserve.engine.api import EngineError

    first = (str(exc).strip().splitlines() or [""])[0]
    if isinstance(exc, (EngineError, ValueError, OSError)):
        return StartupError(first)
    return StartupError(f"the engine could not start ({type(exc).__name__}: {first})",
                        "run with --log-level DEBUG for the traceback")


async def _serve_until_stopped(server, stop: asyncio.Event) -> BaseException | None:
    """Wait for a stop signal; the exception when the engine failed to come up first."""
    ready = asyncio.create_task(server.wait_ready())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({ready, stopped}, return_when=asyncio.FIRST_COMPLETED)
    failure = ready.exception() if ready.done() and not ready.cancelled() else None
    if failure is None:
        await stopped
    ready.cancel()
    stopped.cancel()
    return failure


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
