"""Prometheus metrics on their own port (``--metrics-port``).

Three sources: a gRPC interceptor, an engine batch observer (batch size and tokens, queue vs
compute time, tokens), and a collector that reads the engine's queue depth and drop counters at
scrape time.

RPC series carry the labels every gRPC dashboard expects (``grpc_type``, ``grpc_service``,
``grpc_method``, ``grpc_code``: ``grpc_server_started_total``, ``grpc_server_handled_total``,
``grpc_server_handling_seconds``). Health checks, a probe every few seconds, would swamp them:
they are counted apart in ``rewardserve_health_checks_total``. The engine's own series keep
their ``rewardserve_`` names.
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
from rewardserve_client.v1.reward_service_pb2 import StreamRewardResponse

from rewardserve.engine.api import BatchItem, EngineAPI

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60)
TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536, 262144)
SEQ_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# Refusals must be fast (a refused caller retries elsewhere or later): fine steps below 100 ms.
REFUSAL_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1, 2, 5)


class ServerMetrics:
    """Every rewardserve metric, in a registry of its own (several servers can share a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        labels = ["grpc_type", "grpc_service", "grpc_method"]
        self.rpc_started = Counter("grpc_server_started", "RPCs started on the server", labels, registry=r)
        self.rpc_handled = Counter("grpc_server_handled", "RPCs completed on the server, by status code",
                                   [*labels, "grpc_code"], registry=r)
        self.rpc_latency = Histogram("grpc_server_handling_seconds", "RPC duration until the server's last reply "
                                     "(a whole stream for streams)", labels, buckets=LATENCY_BUCKETS, registry=r)
        self.refusal_latency = Histogram("rewardserve_refusal_seconds", "Time from a call's start on the server "
                                         "to its RESOURCE_EXHAUSTED answer (admission refusals)", ["grpc_method"],
                                         buckets=REFUSAL_BUCKETS, registry=r)
        self.health_checks = Counter("rewardserve_health_checks", "gRPC health calls (apart from the RPC series)",
                                     ["grpc_method"], registry=r)
        self.batch_seqs = Histogram("rewardserve_batch_sequences", "Sequences per packed forward pass",
                                    buckets=SEQ_BUCKETS, registry=r)
        self.batch_tokens = Histogram("rewardserve_batch_tokens", "Tokens per packed forward pass",
                                      buckets=TOKEN_BUCKETS, registry=r)
        self.queue_time = Histogram("rewardserve_queue_time_seconds", "Time a sequence waited before its batch ran",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.compute_time = Histogram("rewardserve_compute_time_seconds", "Time of one packed forward pass",
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("rewardserve_tokens", "Tokens of the sequences scored, every token of every sequence "
                              "(rate() gives tokens/s)", registry=r)
        self.reused_tokens = Counter("rewardserve_reused_tokens", "Tokens of rewardserve_tokens not computed: a "
                                     "prompt shared with another sequence (shared-prompt reuse)", registry=r)
        self.sequences = Counter("rewardserve_sequences", "Sequences computed", registry=r)
        self.stream_items = Counter("rewardserve_stream_items", "StreamReward answers by status code", ["code"],
                                    registry=r)
        self._engine: EngineAPI | None = None
        r.register(_EngineCollector(lambda: self._engine))
        self._malformed: dict[str, int] = {}
        r.register(_MalformedCollector(lambda: self._malformed))

    def bind_malformed(self, log: Any) -> None:
        """Export ``log.counts`` (service/wire.py's MalformedLog: undecodable messages per method)."""
        self._malformed = log.counts

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
        self.reused_tokens.inc(sum(item.reused_tokens for item in items))
        self.sequences.inc(len(items))
        for item in items:
            self.queue_time.observe(max(0.0, item.queue_time_s))

    def serve(self, port: int, host: str) -> int:
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
        yield from _prefix_cache_metrics(stats)


def _prefix_cache_metrics(stats):
    """The prefix cache (--prefix-cache-gb): hit rate = rate(hit) / rate(queried); memory now."""
    yield CounterMetricFamily("rewardserve_prefix_cache_queried_tokens", "Prompt tokens (whole blocks) looked up "
                              "in the prefix cache", value=stats.prefix_cache_queried_tokens)
    yield CounterMetricFamily("rewardserve_prefix_cache_hit_tokens", "Of those, tokens read from the cache instead "
                              "of computed", value=stats.prefix_cache_hit_tokens)
    yield CounterMetricFamily("rewardserve_prefix_cache_evicted_blocks", "Cache blocks evicted for newer ones "
                              "(least recently used first)", value=stats.prefix_cache_evicted_blocks)
    yield GaugeMetricFamily("rewardserve_prefix_cache_used_bytes", "Device memory holding cached prefix keys and "
                            "values", value=stats.prefix_cache_used_bytes)
    yield GaugeMetricFamily("rewardserve_prefix_cache_capacity_bytes", "Device memory of the prefix cache "
                            "(0: no cache)", value=stats.prefix_cache_capacity_bytes)


class _MalformedCollector:
    """Undecodable request messages per method, read at scrape time."""

    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def collect(self):
        family = CounterMetricFamily("rewardserve_malformed_requests", "Request messages that did not decode "
                                     "(answered INVALID_ARGUMENT)", labels=["grpc_method"])
        for method, count in sorted(dict(self._counts()).items()):
            family.add_metric([method], count)
        yield family


HEALTH_PREFIX = "/grpc.health.v1.Health/"


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every unary RPC and bidirectional stream (whole-stream duration) by
    service, method and final status code; counts stream answers by their own code; counts
    health calls apart."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        path = handler_call_details.method
        service, _, method = path.lstrip("/").rpartition("/")
        if path.startswith(HEALTH_PREFIX):
            self.metrics.health_checks.labels(method).inc()
            return handler
        if handler is not None and handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._timed(("unary", service, method), handler.unary_unary),
                request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
        if handler is not None and handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._timed_stream(("bidi_stream", service, method), handler.stream_stream),
                request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
        return handler

    def _timed(self, labels: tuple[str, str, str], behavior):
        async def timed(request, context):
            with self._timing(labels, context):
                return await behavior(request, context)
        return timed

    def _timed_stream(self, labels: tuple[str, str, str], behavior):
        async def timed(requests, context):
            with self._timing(labels, context):  # the whole stream, first message to last
                async for reply in behavior(requests, context):
                    if isinstance(reply, StreamRewardResponse):
                        self.metrics.stream_items.labels(_answer_code(reply)).inc()
                    yield reply
        return timed

    @contextlib.contextmanager
    def _timing(self, labels: tuple[str, str, str], context) -> Iterator[None]:
        self.metrics.rpc_started.labels(*labels).inc()
        start, code = time.perf_counter(), None
        try:
            yield
        except (asyncio.CancelledError, GeneratorExit):
            # A stream the client killed ends its handler with GeneratorExit: not an OK.
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            self._observe(labels, code, context, start)

    def _observe(self, labels: tuple[str, str, str], code, context, start: float) -> None:
        if code is None and _was_cancelled(context):
            code = grpc.StatusCode.CANCELLED  # the client went away: whatever the handler did, not OK
        code = code or context.code() or grpc.StatusCode.OK
        name = code.name if isinstance(code, grpc.StatusCode) else str(code)
        elapsed = time.perf_counter() - start
        self.metrics.rpc_latency.labels(*labels).observe(elapsed)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            self.metrics.refusal_latency.labels(labels[2]).observe(elapsed)
        self.metrics.rpc_handled.labels(*labels, name).inc()


def _was_cancelled(context) -> bool:
    try:
        return bool(context.cancelled())
    except Exception:  # noqa: BLE001 - a context without the call (tests' fakes): not cancelled
        return False


_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def _answer_code(reply: pb.StreamRewardResponse) -> str:
    """A stream answer's own status: OK, or its ItemError's code."""
    if reply.HasField("error"):
        return _CODE_NAMES.get(reply.error.code, str(reply.error.code))
    return "OK"
