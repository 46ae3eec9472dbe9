"""Prefix reuse seen from a client: a ChatReward group through a live server on the demo model
(CPU) reports each result's reused_tokens and their sum in Usage, with the rewards of a server
started with --no-prefix-reuse (whose replies say 0)."""
from __future__ import annotations

import pytest
from rewardserve_client.v1 import reward_service_pb2 as pb

from rewardserve.engine.config import EngineConfig, ModelConfig, PrefixConfig, RunnerConfig
from service_testlib import live_server

pytestmark = pytest.mark.slow

PROMPT = [pb.ChatMessage(role="system", content="You grade short arithmetic answers carefully. " * 3),
          pb.ChatMessage(role="user", content="What is six times seven? Explain the steps.")]
ANSWERS = ["42", "Six times seven is 42.", "It is 41.", "7 * 6 = 42, so 42."]


async def rewards(demo_model_dir, reuse: bool) -> tuple[pb.ChatRewardResponse, pb.EncodeResponse]:
    engine = EngineConfig(model=ModelConfig(model=str(demo_model_dir), dtype="float32"),
                          runner=RunnerConfig(device="cpu"), prefix=PrefixConfig(prefix_reuse=reuse))
    async with live_server(engine_config=engine) as live:
        chat = await live.stub.ChatReward(pb.ChatRewardRequest(groups=[pb.ChatGroup(
            prompt=PROMPT, responses=[pb.PolicyText(text=a) for a in ANSWERS], group_id="uid-0")]))
        prompt = list(range(5, 75))
        encode = await live.stub.Encode(pb.EncodeRequest(inputs=[
            pb.EncodeInput(token_ids=pb.TokenIds(ids=prompt + tail)) for tail in ([80], [81, 82], [83] * 9)]))
    return chat, encode


async def test_group_reports_reused_tokens_with_unchanged_rewards(demo_model_dir):
    chat, encode = await rewards(demo_model_dir, reuse=True)
    plain_chat, plain_encode = await rewards(demo_model_dir, reuse=False)
    reused = [r.reused_tokens for r in chat.results]
    assert reused[0] == 0 and all(n > 0 for n in reused[1:])  # the first computes the prompt
    assert chat.usage.reused_tokens == sum(reused) and plain_chat.usage.reused_tokens == 0
    for got, want in zip(chat.results, plain_chat.results):
        assert got.score == pytest.approx(want.score, abs=1e-5) and got.num_tokens == want.num_tokens
    assert [r.reused_tokens for r in encode.results] == [0, 64, 64] and encode.usage.reused_tokens == 128
    for got, want in zip(encode.results, plain_encode.results):
        assert got.data.values == pytest.approx(want.data.values, abs=1e-5)
    assert all(r.reused_tokens == 0 for r in plain_encode.results)


async def stream_one_by_one(demo_model_dir, cache_gb: float | None, reuse: bool = True):
    """A StreamReward group of four answers to one prompt, each item sent after the previous
    answer arrived (so each lands in a batch of its own); returns the answers and a metrics scrape."""
    from test_service_metrics import free_port, scrape

    engine = EngineConfig(model=ModelConfig(model=str(demo_model_dir), dtype="float32"),
                          runner=RunnerConfig(device="cpu"),
                          prefix=PrefixConfig(prefix_reuse=reuse, prefix_cache_gb=cache_gb))
    async with live_server(engine_config=engine, metrics_port=free_port()) as live:
        call = live.stub.StreamReward()
        answers = []
        for i, answer in enumerate(ANSWERS):
            messages = [*PROMPT, pb.ChatMessage(role="assistant", content=answer)]
            await call.write(pb.StreamRewardRequest(items=[pb.StreamItem(
                id=f"r{i}", group_id="uid-0", conversation=pb.Conversation(messages=messages))]))
            answers.append(await call.read())
        await call.done_writing()
        text = await scrape(live.server.metrics_port)
    return answers, text


async def test_stream_items_in_separate_batches_read_the_prefix_cache(demo_model_dir):
    """Items of one group sent one by one never share a batch: the first computes the prompt and
    caches it, every later one reads it (reused_tokens), with the rewards of --no-prefix-reuse;
    the metrics count the hits and the cache's memory."""
    from test_service_metrics import sample

    got, text = await stream_one_by_one(demo_model_dir, cache_gb=0.05)
    want, _ = await stream_one_by_one(demo_model_dir, cache_gb=None, reuse=False)
    assert [a.WhichOneof("outcome") for a in got] == ["result"] * len(ANSWERS)
    reused = [a.result.reused_tokens for a in got]
    assert reused[0] == 0 and all(n > 0 and n % 16 == 0 for n in reused[1:]), reused
    for a, b in zip(got, want):
        assert a.result.score == pytest.approx(b.result.score, abs=1e-5)
        assert b.result.reused_tokens == 0
    assert sample(text, "rewardserve_prefix_cache_hit_tokens_total") == sum(reused)
    assert sample(text, "rewardserve_prefix_cache_queried_tokens_total") >= sum(reused)
    assert 0 < sample(text, "rewardserve_prefix_cache_used_bytes") <= sample(text, "rewardserve_prefix_cache_capacity_bytes")
    assert sample(text, "rewardserve_reused_tokens_total") == sum(reused)
