"""Prometheus metrics of a real server on the demo model: RPCs by gRPC service, method and code,
stream answers by code, batches, tokens, queue depth and drop counters, scraped over HTTP from --metrics-port."""
from __future__ import annotations

import asyncio
import dataclasses
import re
import socket
import urllib.request

import grpc
import pytest
from rewardserve_client.v1 import reward_service_pb2 as pb
from rewardserve_client.v1 import reward_service_pb2_grpc as pb_grpc

from rewardserve.engine.config import EngineConfig, ModelConfig, PrefixConfig, RunnerConfig, SchedulerConfig
from rewardserve.service.server import RewardServer
from service_testlib import local_config

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))  # the exposition sorts labels
    pattern = rf"^{re.escape(name)}(\{{{re.escape(want)}\}})? ([0-9.e+-]+)$" if want else rf"^{re.escape(name)} ([0-9.e+-]+)$"
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.groups()[-1]) if match else 0.0


def stream_item(item_id: str, role: str) -> pb.StreamItem:
    messages = [pb.ChatMessage(role=role, content="hi"), pb.ChatMessage(role="assistant", content="hello")]
    return pb.StreamItem(id=item_id, conversation=pb.Conversation(messages=messages))


async def scrape(port: int) -> str:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            return reply.read().decode()
    return await asyncio.to_thread(get)


async def test_metrics_count_rpcs_batches_tokens_and_queue(demo_model_dir):
    engine = EngineConfig(model=ModelConfig(model=str(demo_model_dir)), runner=RunnerConfig(device="cpu"),
                          prefix=PrefixConfig(prefix_reuse=True))  # opt-in: reused tokens are counted
    server_cfg = dataclasses.replace(local_config().server, metrics_port=free_port())
    config = dataclasses.replace(local_config(), engine=engine, server=server_cfg)
    async with RewardServer(config) as server:
        await asyncio.wait_for(server.wait_ready(), 120)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.RewardServiceStub(channel)
            seqs = [[1 + i] * (5 + i) for i in range(6)]
            await asyncio.gather(*[stub.Encode(pb.EncodeRequest(inputs=[pb.EncodeInput(token_ids=pb.TokenIds(ids=s))]))
                                   for s in seqs])
            shared = list(range(5, 45))  # two inputs sharing 40 tokens: one computes 32 (two 16-token blocks) for both
            await stub.Encode(pb.EncodeRequest(inputs=[pb.EncodeInput(token_ids=pb.TokenIds(ids=shared + [t]))
                                                       for t in (50, 51)]))
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Encode(pb.EncodeRequest(inputs=[pb.EncodeInput(token_ids=pb.TokenIds(ids=[400]))]))
            answers = [a async for a in stub.StreamReward(iter([pb.StreamRewardRequest(items=[
                stream_item("good", "user"), stream_item("bad", "robot")])]))]
        text = await scrape(server.metrics_port)
    assert sorted(a.WhichOneof("outcome") for a in answers) == ["error", "result"]
    assert sample(text, "rewardserve_stream_items_total", code="OK") == 1
    assert sample(text, "rewardserve_stream_items_total", code="INVALID_ARGUMENT") == 1
    service = "rewardserve.v1.RewardService"
    assert sample(text, "grpc_server_handled_total", grpc_type="bidi_stream", grpc_service=service,
                  grpc_method="StreamReward", grpc_code="OK") == 1
    assert sample(text, "grpc_server_handled_total", grpc_type="unary", grpc_service=service,
                  grpc_method="Encode", grpc_code="OK") == 7
    assert sample(text, "grpc_server_handled_total", grpc_type="unary", grpc_service=service,
                  grpc_method="Encode", grpc_code="INVALID_ARGUMENT") == 1
    assert sample(text, "grpc_server_started_total", grpc_type="unary", grpc_service=service, grpc_method="Encode") == 8
    assert sample(text, "grpc_server_handling_seconds_count", grpc_type="unary", grpc_service=service,
                  grpc_method="Encode") == 8
    chat_tokens = next(a.result.num_tokens for a in answers if a.WhichOneof("outcome") == "result")
    assert sample(text, "rewardserve_tokens_total") == sum(map(len, seqs)) + chat_tokens + 2 * 41
    assert sample(text, "rewardserve_reused_tokens_total") == 32
    assert sample(text, "rewardserve_sequences_total") == 9
    assert 3 <= sample(text, "rewardserve_batch_tokens_count") <= 9
    assert sample(text, "rewardserve_queue_time_seconds_count") == 9
    assert "rewardserve_queue_requests 0.0" in text and "rewardserve_queue_tokens 0.0" in text
    assert sample(text, "rewardserve_dropped_requests_total", reason="expired") == 0


async def test_refusals_are_timed_apart(demo_model_dir):
    # 1 token/s assumed until a batch is measured: a call with a deadline is refused at once
    # (deadline-aware admission); one without is computed. Only the refusal is in the histogram.
    engine = EngineConfig(model=ModelConfig(model=str(demo_model_dir)), runner=RunnerConfig(device="cpu"),
                          scheduler=SchedulerConfig(initial_throughput_tok_s=1.0))
    server_cfg = dataclasses.replace(local_config().server, metrics_port=free_port())
    config = dataclasses.replace(local_config(), engine=engine, server=server_cfg)
    request = pb.EncodeRequest(inputs=[pb.EncodeInput(token_ids=pb.TokenIds(ids=[5] * 10))])
    async with RewardServer(config) as server:
        await asyncio.wait_for(server.wait_ready(), 120)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.RewardServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Encode(request, timeout=5)
            await stub.Encode(request)
        text = await scrape(server.metrics_port)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert sample(text, "rewardserve_refusal_seconds_count", grpc_method="Encode") == 1
    assert sample(text, "rewardserve_refusal_seconds_bucket", grpc_method="Encode", le="+Inf") == 1
    assert sample(text, "grpc_server_handling_seconds_count", grpc_type="unary",
                  grpc_service="rewardserve.v1.RewardService", grpc_method="Encode") == 2


def test_drop_and_fault_counters_come_from_engine_stats():
    from prometheus_client import generate_latest

    from fake_engine import FakeEngine

    from rewardserve.engine.api import EngineStats
    from rewardserve.service.metrics import ServerMetrics

    engine = FakeEngine()
    engine.engine_stats = EngineStats(queued_requests=3, queued_tokens=120, num_rejected=4, num_expired=5,
                                      num_cancelled=6, num_oom_splits=7, num_failed_items=8,
                                      prefix_cache_queried_tokens=640, prefix_cache_hit_tokens=480,
                                      prefix_cache_evicted_blocks=3, prefix_cache_used_bytes=4096,
                                      prefix_cache_capacity_bytes=8192)
    metrics = ServerMetrics()
    metrics.bind_engine(engine)
    text = generate_latest(metrics.registry).decode()
    assert sample(text, "rewardserve_queue_requests") == 3 and sample(text, "rewardserve_queue_tokens") == 120
    for reason, value in (("rejected", 4), ("expired", 5), ("cancelled", 6)):
        assert sample(text, "rewardserve_dropped_requests_total", reason=reason) == value
    assert sample(text, "rewardserve_oom_splits_total") == 7 and sample(text, "rewardserve_failed_items_total") == 8
    assert sample(text, "rewardserve_prefix_cache_queried_tokens_total") == 640
    assert sample(text, "rewardserve_prefix_cache_hit_tokens_total") == 480
    assert sample(text, "rewardserve_prefix_cache_evicted_blocks_total") == 3
    assert sample(text, "rewardserve_prefix_cache_used_bytes") == 4096
    assert sample(text, "rewardserve_prefix_cache_capacity_bytes") == 8192
