"""Prometheus metrics on their own port (``--metrics-port``).

Three sources: a gRPC interceptor (latency by RPC and status code), an engine batch observer
(batch size and tokens, queue vs compute time, tokens), and a collector that reads the engine's
queue depth and drop counters at scrape time.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Callable, Iterator, Sequence

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from rewardserve_client.v1 import reward_service_pb2 as pb

from rewardserve.engine.api import BatchItem, EngineAPI

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
        self.stream_items = Counter("rewardserve_stream_items", "StreamReward answers by status code", ["code"],
                                    registry=r)
        self._engine: EngineAPI | None = None
        r.register(_EngineCollector(lambda: self._engine))

    def bind_engine(self, engine: EngineAPI) -> None:
        """Observe ``engine``'s batches and read its queue depth at scrape time."""
        self._engine = engine
        engine.add_observer(self.observe_batch)

    def observe_batch(self, items: Sequence[BatchItem], compute_s: float) -> None:
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

    def __init__(self, engine: Callable[[], EngineAPI | None]) -> None:
        self._engine = engine

    def collect(self):
        engine = self._engine()
        if engine is None:
            return
        stats = engine.stats()
        yield GaugeMetricFamily("rewardserve_queue_requests", "Requests waiting or running", value=stats.queued_requests)
        yield GaugeMetricFamily("rewardserve_queue_tokens", "Tokens waiting or running", value=stats.queued_tokens)
        yield GaugeMetricFamily("rewardserve_replicas_alive", "Data-parallel replicas serving (0: none, NOT_SERVING)",
                                value=stats.replicas_alive)
        dropped = CounterMetricFamily("rewardserve_dropped_requests", "Requests dropped before compute",
                                      labels=["reason"])
        for reason in ("rejected", "expired", "cancelled"):
            dropped.add_metric([reason], getattr(stats, f"num_{reason}"))
        yield dropped
        yield CounterMetricFamily("rewardserve_oom_splits", "Batches split after CUDA out of memory",
                                  value=stats.num_oom_splits)
        yield CounterMetricFamily("rewardserve_failed_items", "Sequences that failed alone", value=stats.num_failed_items)


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Times every unary RPC and our streams (whole-stream duration), labelled with the final
    status code; counts stream answers by their own code."""

    def __init__(self, metrics: ServerMetrics, stream_prefix: str = "/rewardserve.") -> None:
        self.metrics = metrics
        self.stream_prefix = stream_prefix  # health Watch and reflection streams are not ours to time

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        path = handler_call_details.method
        method = path.rsplit("/", 1)[-1]
        if handler is not None and handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._timed(method, handler.unary_unary), request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        if handler is not None and handler.stream_stream is not None and path.startswith(self.stream_prefix):
            return grpc.stream_stream_rpc_method_handler(
                self._timed_stream(method, handler.stream_stream), request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return handler

    def _timed(self, method: str, behavior):
        async def timed(request, context):
            with self._timing(method, context):
                return await behavior(request, context)
        return timed

    def _timed_stream(self, method: str, behavior):
        async def timed(requests, context):
            with self._timing(method, context):  # the whole stream, first message to last
                async for reply in behavior(requests, context):
                    self.metrics.stream_items.labels(_answer_code(reply)).inc()
                    yield reply
        return timed

    @contextlib.contextmanager
    def _timing(self, method: str, context) -> Iterator[None]:
        start, code = time.perf_counter(), None
        try:
            yield
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            self._observe(method, code, context, start)

    def _observe(self, method: str, code, context, start: float) -> None:
        code = code or context.code() or grpc.StatusCode.OK
        name = code.name if isinstance(code, grpc.StatusCode) else str(code)
        self.metrics.rpc_latency.labels(method, name).observe(time.perf_counter() - start)


_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def _answer_code(reply: pb.StreamRewardResponse) -> str:
    """A stream answer's own status: OK, or its ItemError's code."""
    if reply.HasField("error"):
        return _CODE_NAMES.get(reply.error.code, str(reply.error.code))
    return "OK"
