"""Prometheus metrics on their own port (``--metrics-port``).

Three sources: a gRPC interceptor (latency by RPC and status code), an engine batch observer
(batch size and tokens, queue vs compute time, tokens), and a collector that reads the engine's
queue depth and drop counters at scrape time.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60)
TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536, 262144)
SEQ_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServerMetrics:
    """Every rewardserve metric, in a registry of its own (several servers can share a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rpc_latency = Histogram("rewardserve_rpc_latency_seconds", "RPC latency by method and status code",
                                     ["method", "code"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_seqs = Histogram("rewardserve_batch_sequences", "Sequences per packed forward pass",
                                    buckets=SEQ_BUCKETS, registry=r)
        self.batch_tokens = Histogram("rewardserve_batch_tokens", "Tokens per packed forward pass",
                                      buckets=TOKEN_BUCKETS, registry=r)
        self.queue_time = Histogram("rewardserve_queue_time_seconds", "Time a sequence waited before its batch ran",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.compute_time = Histogram("rewardserve_compute_time_seconds", "Time of one packed forward pass",
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("rewardserve_tokens", "Tokens computed (rate() gives tokens/s)", registry=r)
        self.sequences = Counter("rewardserve_sequences", "Sequences computed", registry=r)
        self._engine: Any = None
        r.register(_EngineCollector(lambda: self._engine))

    def bind_engine(self, engine: Any) -> None:
        """Observe ``engine``'s batches and read its queue depth at scrape time."""
        self._engine = engine
        engine.add_observer(self.observe_batch)

    def observe_batch(self, items: list[Any], compute_s: float) -> None:
        """Engine observer, called on the GPU thread after each batch."""
        num_tokens = sum(item.num_tokens for item in items)
        self.batch_seqs.observe(len(items))
        self.batch_tokens.observe(num_tokens)
        self.compute_time.observe(compute_s)
        self.tokens.inc(num_tokens)
        self.sequences.inc(len(items))
        for item in items:
            self.queue_time.observe(max(0.0, item.queue_time_s))

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Start the HTTP endpoint (a daemon thread); returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server.server_port


class _EngineCollector:
    """Queue depth and drop counters, read from ``engine.stats()`` when Prometheus scrapes."""

    def __init__(self, engine: Callable[[], Any]) -> None:
        self._engine = engine

    def collect(self):
        engine = self._engine()
        if engine is None:
            return
        stats = engine.stats()
        yield GaugeMetricFamily("rewardserve_queue_requests", "Requests waiting or running", value=stats.queued_requests)
        yield GaugeMetricFamily("rewardserve_queue_tokens", "Tokens waiting or running", value=stats.queued_tokens)
        dropped = CounterMetricFamily("rewardserve_dropped_requests", "Requests dropped before compute",
                                      labels=["reason"])
        for reason in ("rejected", "expired", "cancelled"):
            dropped.add_metric([reason], getattr(stats, f"num_{reason}"))
        yield dropped
        yield CounterMetricFamily("rewardserve_oom_splits", "Batches split after CUDA out of memory",
                                  value=stats.num_oom_splits)
        yield CounterMetricFamily("rewardserve_failed_items", "Sequences that failed alone", value=stats.num_failed_items)


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Times every unary RPC and labels it with its final status code."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler  # streams (health Watch, reflection) are not timed
        method = handler_call_details.method.rsplit("/", 1)[-1]
        return grpc.unary_unary_rpc_method_handler(
            self._timed(method, handler.unary_unary), request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)

    def _timed(self, method: str, behavior):
        async def timed(request, context):
            start, code = time.perf_counter(), None
            try:
                return await behavior(request, context)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            finally:
                code = code or context.code() or grpc.StatusCode.OK
                name = code.name if isinstance(code, grpc.StatusCode) else str(code)
                self.metrics.rpc_latency.labels(method, name).observe(time.perf_counter() - start)
        return timed
