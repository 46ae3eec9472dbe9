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
