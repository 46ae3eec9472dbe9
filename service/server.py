"""RewardServer: the grpc.aio server around one engine, with health, reflection and drain.

Life cycle::

    start()   bind and listen at once (health NOT_SERVING), then in the background: load the
              model in a thread (unless an engine was given), ``engine.start()`` (warm-up),
              health SERVING
    drain()   the one stop timeline (below), then ``engine.shutdown()``

Drain timeline (SIGTERM): health NOT_SERVING at once → new calls still served for
``--drain-delay-s`` (balancers notice) → new calls refused UNAVAILABLE, idle StreamReward calls
ended UNAVAILABLE → in-flight calls run up to ``--grace-period-s`` (counted from the end of the
delay) → calls still open end UNAVAILABLE (never CANCELLED) and the engine drops their work →
the connections close. Clients retry UNAVAILABLE on another replica (scoring is idempotent).

The engine is injectable so tests can serve a fake one through the real transport.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import resource
import time
from pathlib import Path
from typing import Any, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from rewardserve.engine.api import EngineAPI
from rewardserve.engine.config import EngineConfig
from rewardserve.service.auth import AuthInterceptor, TokenFile
from rewardserve.service.config import ServeConfig, ServerConfig
from rewardserve.service.logs import TraceInterceptor
from rewardserve.service.metrics import MetricsInterceptor, ServerMetrics
from rewardserve.service import reflection  # v1 and v1alpha, serving the contract's comments
from rewardserve.service import wire
from rewardserve.service.servicer import SERVICE_NAME, RewardServicer

logger = logging.getLogger(__name__)

HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# Health answers for the whole server ("") and for the RewardService by name (what meshes ask).
HEALTH_CHECKED = ("", SERVICE_NAME)
REFLECTED = (SERVICE_NAME, HEALTH_SERVICE_NAME, *reflection.SERVICE_NAMES)

_FLUSH_S = 0.3  # at most this long to let the last replies and UNAVAILABLE endings go out
_ENGINE_STOP_S = 0.3  # past the grace period, what the engine may still take to stop
_FD_RESERVE = 256  # open files kept for the model, tokenizer, compile cache and metrics
_HEALTH_POLL_S = 0.5  # how often health re-reads engine.is_ready (data-parallel replicas can all be lost)
EngineLoader = Callable[[EngineConfig], EngineAPI]


def load_engine(config: EngineConfig) -> EngineAPI:
    """The real engine (blocking: loads the model). Imported here so that importing the server
    does not import torch."""
    from rewardserve.engine.async_engine import AsyncEngine

    return AsyncEngine.from_config(config)


class RewardServer:
    """The rewardserve gRPC server. Use ``async with RewardServer(config) as server`` or
    ``start()`` / ``drain()``; ``port`` is the bound port (useful with port 0)."""

    def __init__(self, config: ServeConfig, engine: EngineAPI | None = None, *,
                 loader: EngineLoader = load_engine) -> None:
        self.config = config = with_result_limit(config)
        self.port: int | None = None
        self._engine = engine
        self._loader = loader
        self._servicer = RewardServicer(stream_max_in_flight=config.server.stream_max_in_flight)
        self._health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self.metrics = ServerMetrics() if config.server.metrics_port else None
        self.malformed = wire.MalformedLog()  # undecodable request messages, per method
        self.decodes = wire.DecodeStats()  # request messages decoded whole or with their large ids cut
        if self.metrics:
            self.metrics.bind_malformed(self.malformed)
        self.metrics_port: int | None = None
        # Read at construction: a missing or empty token file fails the start, not the first call.
        self.tokens = TokenFile(config.server.auth_token_file) if config.server.auth_token_file else None
        self._bring_up: asyncio.Task | None = None
        self._drained: asyncio.Future | None = None
        self._delay_over = asyncio.Event()  # set by a second drain() call

    async def __aenter__(self) -> "RewardServer":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.drain()

    @property
    def engine(self) -> EngineAPI | None:
        """The engine once given or loaded; None while the model is loading."""
        return self._engine

    async def start(self) -> None:
        """Listen now; bring the engine up in the background (see ``wait_ready``)."""
        server = grpc.aio.server(options=self.config.server.channel_options(max_connections(self.config.server)),
                                 interceptors=self._interceptors())
        wire.add_to_server(self._servicer, server, self.malformed, self.decodes)  # raw bytes in: a bad message is INVALID_ARGUMENT
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        if self.config.server.reflection:
            reflection.enable_server_reflection(REFLECTED, server)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.port = _bind(server, self.config.server)
        await server.start()
        self._server = server
        logger.info("rewardserve listening on %s:%d", self.config.server.host, self.port)
        if self.metrics:
            host = self.config.server.metrics_address
            self.metrics_port = self.metrics.serve(self.config.server.metrics_port, host)
            logger.info("rewardserve metrics on http://%s:%d/metrics", host, self.metrics_port)
        self._bring_up = asyncio.create_task(self._bring_up_engine(), name="rewardserve-bring-up")

    def _interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """Outermost first: metrics see refused calls too; logs of a refusal carry its trace."""
        interceptors: list[grpc.aio.ServerInterceptor] = [MetricsInterceptor(self.metrics)] if self.metrics else []
        interceptors.append(TraceInterceptor())
        if self.tokens or self.config.server.tls_allowed_subjects:
            interceptors.append(AuthInterceptor(self.tokens, self.config.server.tls_allowed_subjects))
        return interceptors

    def reload_auth(self) -> None:
        """Re-read ``--auth-token-file`` (SIGHUP); a bad file keeps the tokens accepted so far."""
        if self.tokens is None:
            logger.info("auth: no --auth-token-file to reload")
        else:
            self.tokens.reload()

    async def wait_ready(self) -> None:
        """Return once the engine is warm and health says SERVING; raise if loading failed."""
        if self._bring_up is None:
            raise RuntimeError("RewardServer.start() was not called")
        await asyncio.shield(self._bring_up)

    async def drain(self, grace_s: float | None = None, delay_s: float | None = None) -> None:
        """Stop along the drain timeline (module docstring); ``grace_s`` / ``delay_s`` default
        to ``--grace-period-s`` / ``--drain-delay-s``.

        Idempotent: a second call (a second signal, ``__aexit__`` after ``drain``) waits for the
        first, and cuts its drain delay short (whoever asks twice wants out now).
        """
        if self._drained is not None:
            self._delay_over.set()
        else:
            grace = self.config.server.grace_period_s if grace_s is None else grace_s
            delay = self.config.server.drain_delay_s if delay_s is None else delay_s
            self._drained = asyncio.ensure_future(self._drain(grace, delay))
        await asyncio.shield(self._drained)

    async def _drain(self, grace: float, delay: float) -> None:
        # Permanent: a warm-up finishing during the drain cannot flip health back to SERVING.
        await self._health.enter_graceful_shutdown()
        if delay > 0:
            logger.info("rewardserve draining: health NOT_SERVING, still serving for %.1f s", delay)
            try:
                await asyncio.wait_for(self._delay_over.wait(), delay)
            except asyncio.TimeoutError:
                pass
        deadline = time.monotonic() + grace
        self._servicer.refuse_new_calls()
        await self._cancel_bring_up()
        if self._server is not None:
            await self._stop_listening(deadline)
        if self._engine is not None:
            await self._stop_engine(deadline)
        logger.info("rewardserve stopped")

    async def _stop_listening(self, deadline: float) -> None:
        """Keep the port open while in-flight calls finish: meanwhile health answers NOT_SERVING
        and new calls a clean UNAVAILABLE (stopping at once would cancel calls still in transit)."""
        open_calls = self._servicer.open_calls
        logger.info("rewardserve draining: refusing new calls; %d call(s) in flight, grace %.1f s",
                    len(open_calls), max(0.0, deadline - time.monotonic()))
        if not await open_calls.wait_idle(max(0.0, deadline - time.monotonic())):
            logger.warning("rewardserve grace period over: ending %d call(s) UNAVAILABLE", open_calls.expire())
            await open_calls.wait_idle(_FLUSH_S)
        # What is left: health watches and reflection streams (cancelled: the connections close).
        await self._server.stop(_FLUSH_S)

    async def _stop_engine(self, deadline: float) -> None:
        """Let the engine finish what is queued until the deadline; then stop waiting for it: work
        still in the tokenizer pool or on the device is abandoned (the process exits anyway)."""
        remaining = max(0.0, deadline - time.monotonic())
        try:
            await asyncio.wait_for(self._engine.shutdown(grace_s=remaining), remaining + _ENGINE_STOP_S)
        except asyncio.TimeoutError:
            logger.warning("rewardserve engine still busy past the grace period: abandoning its work")

    async def wait_for_termination(self) -> None:
        """Block until the server stops (for embedding it without the CLI)."""
        if self._server is not None:
            await self._server.wait_for_termination()

    async def _bring_up_engine(self) -> None:
        try:
            if self._engine is None:
                # Loading reads and moves gigabytes: keep it off the event loop so health answers.
                self._engine = await asyncio.to_thread(self._loader, self.config.engine)
            self._servicer.attach(self._engine)
            if self.metrics:
                self.metrics.bind_engine(self._engine)
            await self._engine.start()
        except asyncio.CancelledError:
            raise
        except Exception:
            # wait_ready() raises it to the caller (the CLI prints one line); the traceback is for DEBUG.
            logger.debug("rewardserve could not bring the engine up", exc_info=True)
            raise
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        logger.info("rewardserve ready: serving %s", self._engine.info.model)
        self._watch = asyncio.create_task(self._watch_engine(), name="rewardserve-health-watch")

    async def _watch_engine(self) -> None:
        """Health follows the engine once serving: NOT_SERVING when it stops being ready outside a
        drain (every data-parallel replica lost; one replica left keeps it SERVING)."""
        while self._engine.is_ready:
            await asyncio.sleep(_HEALTH_POLL_S)
        if self._drained is None:
            logger.error("rewardserve engine is no longer ready (no replica left): health NOT_SERVING")
            await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)

    async def _cancel_bring_up(self) -> None:
        if self._bring_up is not None and not self._bring_up.done():
            self._bring_up.cancel()
        if self._bring_up is not None:
            # Wait without raising: its failure was logged already, and drain must go on.
            await asyncio.wait({self._bring_up})
            if not self._bring_up.cancelled():
                self._bring_up.exception()  # mark it seen: no "exception never retrieved" at exit

    async def _set_health(self, status: int) -> None:
        for name in HEALTH_CHECKED:
            await self._health.set(name, status)


def with_result_limit(config: ServeConfig) -> ServeConfig:
    """The engine's --max-result-mb, when left at 0, is this server's --max-send-message-mb: a
    result that could not be sent is refused before it is computed."""
    engine = config.engine.with_result_limit(config.server.max_send_message_mb)
    return config if engine is config.engine else dataclasses.replace(config, engine=engine)


def max_connections(config: ServerConfig) -> int:
    """--max-connections, or (0) the open-file limit less a reserve, after raising the soft limit
    to the hard one: an idle-socket flood is then refused at accept instead of starving the
    process of file descriptors (the model, the tokenizer and the metrics need some too)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and hard != resource.RLIM_INFINITY:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    limit = max(64, (soft if soft != resource.RLIM_INFINITY else 1 << 20) - _FD_RESERVE)
    return min(config.max_connections, limit) if config.max_connections else limit


def _bind(server: grpc.aio.Server, config: ServerConfig) -> int:
    """Add the listening port (TLS when configured); returns the bound port."""
    if not config.tls_cert:
        return server.add_insecure_port(config.address)
    return server.add_secure_port(config.address, _tls_credentials(config))


def _tls_credentials(config: ServerConfig) -> grpc.ServerCredentials:
    key, cert = Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes()
    client_ca = Path(config.tls_client_ca).read_bytes() if config.tls_client_ca else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)
