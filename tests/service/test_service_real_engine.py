"""The server around the real AsyncEngine on the demo model (CPU): the issue's bad inputs get
INVALID_ARGUMENT naming field and item, while a concurrent good call on the same server succeeds."""
from __future__ import annotations

import asyncio

import grpc
import pytest
from rewardserve_client.v1 import reward_service_pb2 as pb

from rewardserve.engine.config import EngineConfig, ModelConfig, RunnerConfig
from service_testlib import live_server

pytestmark = pytest.mark.slow
MAX_LEN = 32


def chat(*turns: tuple[str, str]) -> pb.Conversation:
    return pb.Conversation(messages=[pb.ChatMessage(role=r, content=c) for r, c in turns])


@pytest.fixture
async def real_stub(demo_model_dir):
    engine = EngineConfig(model=ModelConfig(model=str(demo_model_dir), dtype="float32", max_model_len=MAX_LEN),
                          runner=RunnerConfig(device="cpu"))
    async with live_server(engine_config=engine) as live:  # the default loader: AsyncEngine.from_config
        yield live.stub


async def test_real_engine_every_rpc_and_bad_inputs_beside_a_good_call(real_stub):
    info = await real_stub.GetModelInfo(pb.GetModelInfoRequest())
    assert info.max_model_len == MAX_LEN and info.vocab_size == 400
    good = [
        real_stub.Encode(pb.EncodeRequest(inputs=[pb.EncodeInput(text="The answer is 42.")] * 3)),
        real_stub.Reward(pb.RewardRequest(inputs=[pb.EncodeInput(token_ids=pb.TokenIds(ids=[5, 6, 7]))])),
        real_stub.ChatReward(pb.ChatRewardRequest(conversations=[chat(("user", "2+2?"), ("assistant", "4"))])),
    ]
    bad = [
        (real_stub.Encode(pb.EncodeRequest()), "inputs: must not be empty"),
        (real_stub.ChatReward(pb.ChatRewardRequest(conversations=[chat(("user", "hi")), chat(("robot", "x"))])),
         "conversations[1]: unknown role 'robot'"),
        (real_stub.Encode(pb.EncodeRequest(inputs=[pb.EncodeInput(text="ok"),
                                                   pb.EncodeInput(token_ids=pb.TokenIds(ids=[1, 400]))])),
         "inputs[1]: token id 400"),
        (real_stub.Encode(pb.EncodeRequest(inputs=[pb.EncodeInput(token_ids=pb.TokenIds(ids=[1] * (MAX_LEN + 1)))])),
         f"inputs[0]: input has {MAX_LEN + 1} tokens"),
        # checked by the engine alone (the service passes them through), named in proto terms
        (real_stub.Encode(pb.EncodeRequest(task=pb.POOLING_TASK_EMBED, inputs=[pb.EncodeInput(text="a")],
                                           pooling=pb.PoolingParams(dimensions=0))), "pooling.dimensions: must be in 1.."),
        (real_stub.Encode(pb.EncodeRequest(inputs=[pb.EncodeInput(text="a"), pb.EncodeInput(token_ids=pb.TokenIds())])),
         "inputs[1]: input is empty (0 tokens)"),
        (real_stub.Encode(pb.EncodeRequest(inputs=[pb.EncodeInput(text="a")],
                                           truncation=pb.Truncation(truncate_prompt_tokens=0))),
         f"truncation.truncate_prompt_tokens: must be -1 or in 1..{MAX_LEN}"),
        (real_stub.ChatReward(pb.ChatRewardRequest(conversations=[chat(("user", "hi")), pb.Conversation()])),
         "conversations[1]: conversation has no messages"),
        (real_stub.ChatReward(pb.ChatRewardRequest(conversations=[chat(("user", "hi")), chat(("", "x"))])),
         "conversations[1]: unknown role ''"),
        (real_stub.ChatReward(pb.ChatRewardRequest(conversations=[pb.Conversation(
            messages=[pb.ChatMessage(role="user", content="hi")], rendered=pb.PolicyText(text="x"))])),
         "conversations[0]: rendered: excludes messages and response"),
        (real_stub.ChatReward(pb.ChatRewardRequest(groups=[pb.ChatGroup(
            prompt=[pb.ChatMessage(role="user", content="hi")], responses=[pb.PolicyText(text="a"), pb.PolicyText()])])),
         "groups[0].responses[1]: response: set either text or token_ids"),
    ]
    outcomes = await asyncio.gather(*good, *(call for call, _ in bad), return_exceptions=True)
    encoded, rewarded, chatted = outcomes[:3]
    assert [r.index for r in encoded.results] == [0, 1, 2] and encoded.task == pb.POOLING_TASK_CLASSIFY
    assert list(rewarded.results[0].data.shape) == [3, 1]
    assert chatted.results[0].num_tokens > 0 and chatted.results[0].label_scores[0].label == "reward"
    for error, (_, message) in zip(outcomes[3:], bad):
        assert isinstance(error, grpc.aio.AioRpcError), error
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith(message)
    truncated = await real_stub.Encode(pb.EncodeRequest(
        inputs=[pb.EncodeInput(token_ids=pb.TokenIds(ids=[1] * (MAX_LEN + 1)))],
        truncation=pb.Truncation(truncate_prompt_tokens=-1)))
    assert truncated.results[0].truncated and truncated.results[0].num_tokens == MAX_LEN


async def test_real_server_refuses_overload_with_retry_info_and_stays_serving(demo_model_dir):
    from google.rpc import error_details_pb2, status_pb2
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from rewardserve.engine.config import SchedulerConfig

    engine = EngineConfig(model=ModelConfig(model=str(demo_model_dir)), runner=RunnerConfig(device="cpu"),
                          scheduler=SchedulerConfig(max_queue_requests=2))
    async with live_server(engine_config=engine) as live:
        stub, channel = live.stub, live.channel
        calls = [stub.Encode(pb.EncodeRequest(inputs=[pb.EncodeInput(text=f"answer {i} " * 20)] * 4))
                 for i in range(24)]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
        served = [o for o in outcomes if isinstance(o, pb.EncodeResponse)]
        assert refused and served and len(refused) + len(served) == 24
        for error in refused:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "queue full" in error.details()
            status = status_pb2.Status.FromString(dict(error.trailing_metadata())["grpc-status-details-bin"])
            retry = error_details_pb2.RetryInfo()
            assert status.details[0].Unpack(retry) and retry.retry_delay.ToTimedelta().total_seconds() > 0
        assert all(len(r.results) == 4 for r in served)
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        again = await stub.Encode(pb.EncodeRequest(inputs=[pb.EncodeInput(text="after the flood")]))
        assert len(again.results) == 1


async def test_a_task_the_model_cannot_do_is_named_beside_a_good_call(tmp_path):
    import transformers

    from rewardserve.engine.demo import build_tokenizer

    folder = tmp_path / "bert-embedder"  # a BertModel: no score head, so embed tasks only
    build_tokenizer(folder)
    config = transformers.BertConfig(vocab_size=400, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=128)
    config.architectures = ["BertModel"]
    transformers.BertModel(config).save_pretrained(str(folder))
    engine = EngineConfig(model=ModelConfig(model=str(folder)), runner=RunnerConfig(device="cpu"))
    async with live_server(engine_config=engine) as live:
        stub = live.stub
        tokens = pb.EncodeInput(token_ids=pb.TokenIds(ids=[5, 6, 7, 8]))
        good, bad = await asyncio.gather(
            stub.Encode(pb.EncodeRequest(task=pb.POOLING_TASK_EMBED, inputs=[tokens])),
            stub.Encode(pb.EncodeRequest(task=pb.POOLING_TASK_CLASSIFY, inputs=[tokens])),
            return_exceptions=True)
    assert list(good.results[0].data.shape) == [32] and good.task == pb.POOLING_TASK_EMBED
    assert isinstance(bad, grpc.aio.AioRpcError) and bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad.details().startswith("task:") and "classify" in bad.details()


async def test_encode_without_a_task_reports_the_task_the_engine_resolved(demo_model_dir):
    # --pooler-config STEP pooling: an Encode without a task is token_classify, and the reply says so
    pooler = '{"pooling_type": "STEP", "step_tag_id": 7}'
    engine = EngineConfig(model=ModelConfig(model=str(demo_model_dir), dtype="float32", pooler_config=pooler),
                          runner=RunnerConfig(device="cpu"))
    async with live_server(engine_config=engine) as live:
        reply = await live.stub.Encode(pb.EncodeRequest(inputs=[pb.EncodeInput(token_ids=pb.TokenIds(ids=[5, 7, 6, 7]))]))
    assert reply.task == pb.POOLING_TASK_TOKEN_CLASSIFY
    assert list(reply.results[0].pooled_positions) == [1, 3] and list(reply.results[0].data.shape) == [2, 1]
