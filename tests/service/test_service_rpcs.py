"""Every RPC through a real server and channel: what the engine is asked, what the client gets."""
from __future__ import annotations

import logging

import grpc
import pytest
from rewardserve_client.v1 import reward_service_pb2 as pb

from rewardserve.engine.types import ChatInput, PoolingTask, PoolingType, TextInput
from rewardserve.service.servicer import DEPRECATION_KEY

TEXT = pb.EncodeInput(text="hello")


def ids(*values: int) -> pb.EncodeInput:
    return pb.EncodeInput(token_ids=pb.TokenIds(ids=values))


async def test_encode_classify_returns_shaped_tensors_usage_and_timing(stub, fake):
    reply = await stub.Encode(pb.EncodeRequest(task=pb.POOLING_TASK_CLASSIFY, inputs=[TEXT, ids(1, 2, 3)]))
    assert reply.model == "fake-reward" and reply.task == pb.POOLING_TASK_CLASSIFY
    assert [r.index for r in reply.results] == [0, 1]
    assert list(reply.results[0].data.shape) == [1]
    assert reply.results[0].data.values[0] == pytest.approx(0.5)  # the fake: len(tokens) / 10
    assert reply.results[1].num_tokens == 3 and list(reply.results[1].pooled_positions) == [2]
    assert reply.usage.prompt_tokens == 8 and reply.usage.num_sequences == 2
    assert reply.timing.queue_seconds == pytest.approx(0.002) and reply.timing.total_seconds > 0
    call = fake.calls[-1]
    # token ids reach the engine as the wire message's repeated field (counted before any copy)
    assert call.inputs[0] == TextInput("hello") and list(call.inputs[1].token_ids) == [1, 2, 3]
    assert call.task is PoolingTask.CLASSIFY


async def test_encode_token_task_keeps_row_major_2d_data(stub):
    reply = await stub.Encode(pb.EncodeRequest(task=pb.POOLING_TASK_TOKEN_CLASSIFY, inputs=[ids(7, 8, 9)]))
    data = reply.results[0].data
    assert list(data.shape) == [3, 1] and list(data.values) == [7.0, 8.0, 9.0]


async def test_encode_unspecified_task_runs_and_reports_the_models_default(stub, fake):
    reply = await stub.Encode(pb.EncodeRequest(inputs=[TEXT]))
    assert reply.task == pb.POOLING_TASK_CLASSIFY
    assert fake.calls[-1].task is PoolingTask.CLASSIFY


async def test_encode_passes_pooling_truncation_and_priority(stub, fake):
    request = pb.EncodeRequest(
        task=pb.POOLING_TASK_EMBED, inputs=[TEXT], priority=-3, add_special_tokens=False,
        pooling=pb.PoolingParams(pooling_type=pb.POOLING_TYPE_MEAN, use_activation=False, normalize=True,
                                 dimensions=2, step_tag_id=5, returned_token_ids=[1, 2]),
        truncation=pb.Truncation(truncate_prompt_tokens=-1, side=pb.TRUNCATION_SIDE_RIGHT))
    reply = await stub.Encode(request)
    assert list(reply.results[0].data.shape) == [4]
    call = fake.calls[-1]
    p = call.params
    assert (p.pooling_type, p.use_activation, p.normalize, p.dimensions) == (PoolingType.MEAN, False, True, 2)
    assert (p.step_tag_id, p.returned_token_ids) == (5, (1, 2))
    assert (p.truncate_prompt_tokens, p.truncation_side, p.add_special_tokens) == (-1, "right", False)
    assert call.priority == -3


async def test_encode_unset_options_stay_none_so_server_defaults_apply(stub, fake):
    await stub.Encode(pb.EncodeRequest(inputs=[TEXT]))
    p = fake.calls[-1].params
    assert (p.pooling_type, p.use_activation, p.truncate_prompt_tokens, p.add_special_tokens) == (None,) * 4


async def test_reward_is_token_classify_with_deprecation_trailer(stub, fake, caplog, monkeypatch):
    import rewardserve.service.servicer as servicer_module

    monkeypatch.setattr(servicer_module, "_warned_deprecated", False)  # as in a fresh process
    caplog.set_level(logging.WARNING, logger="rewardserve.service.servicer")
    for _ in range(2):
        call = stub.Reward(pb.RewardRequest(inputs=[ids(3, 4)], request_id="old-api"))
        reply = await call
        trailers = dict(await call.trailing_metadata())
        assert "removed in rewardserve.v2" in trailers[DEPRECATION_KEY]
        assert "POOLING_TASK_TOKEN_CLASSIFY" in trailers[DEPRECATION_KEY]
    assert reply.request_id == "old-api" and list(reply.results[0].data.shape) == [2, 1]
    assert fake.calls[-1].task is PoolingTask.TOKEN_CLASSIFY
    # One warning per process, however many calls.
    assert len([r for r in caplog.records if "deprecated Reward" in r.getMessage()]) == 1


async def test_chat_reward_builds_chat_inputs_and_returns_rewards(stub, fake):
    kwargs = pb.ChatRewardRequest().chat_template_kwargs
    kwargs.update({"enable_thinking": False, "max_steps": 3, "ratio": 0.5, "tags": ["a"]})
    request = pb.ChatRewardRequest(
        conversations=[pb.Conversation(messages=[pb.ChatMessage(role="user", content="2+2?"),
                                                 pb.ChatMessage(role="assistant", content="4\n")])],
        chat_template="{{ messages }}", chat_template_kwargs=kwargs, add_generation_prompt=True,
        pooling=pb.PoolingParams(step_tag_id=ord("\n")))
    reply = await stub.ChatReward(request)
    result = reply.results[0]
    assert result.index == 0 and result.score == len("user2+2?assistant4\n")
    assert [(s.label, s.score) for s in result.label_scores] == [("reward", 0.5)]
    assert [s.position for s in result.step_scores] == [len("user2+2?assistant4")]
    assert [s.label for s in result.step_scores[0].label_scores] == ["neg", "pos"]
    assert reply.usage.num_sequences == 1 and reply.model == "fake-reward"
    conv: ChatInput = fake.calls[-1].inputs[0]
    assert conv.messages == ({"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4\n"})
    assert conv.chat_template == "{{ messages }}" and conv.add_generation_prompt is True
    assert conv.chat_template_kwargs == {"enable_thinking": False, "max_steps": 3, "ratio": 0.5, "tags": ["a"]}
    assert fake.calls[-1].params.step_tag_id == ord("\n")


async def test_chat_reward_without_template_override_uses_the_models(stub, fake):
    await stub.ChatReward(pb.ChatRewardRequest(
        conversations=[pb.Conversation(messages=[pb.ChatMessage(role="user", content="hi")])]))
    conv = fake.calls[-1].inputs[0]
    assert conv.chat_template is None and conv.chat_template_kwargs == {}


async def test_get_model_info_describes_the_model_and_server(stub):
    info = await stub.GetModelInfo(pb.GetModelInfoRequest())
    assert info.model == "fake-reward" and info.architecture == "FakeForSequenceClassification"
    assert list(info.tasks) == [pb.POOLING_TASK_CLASSIFY, pb.POOLING_TASK_TOKEN_CLASSIFY, pb.POOLING_TASK_EMBED]
    assert list(info.labels) == ["reward"] and info.vocab_size == 400 and info.max_model_len == 64
    assert info.has_chat_template and info.chat_template_sha256 == "ab" * 32 and info.is_causal
    assert info.server_version
    defaults = {d.task: d.pooling_type for d in info.default_pooling}
    assert defaults[pb.POOLING_TASK_TOKEN_CLASSIFY] == pb.POOLING_TYPE_ALL


@pytest.mark.parametrize("rpc, request_", [
    ("Encode", pb.EncodeRequest(inputs=[TEXT])),
    ("Reward", pb.RewardRequest(inputs=[TEXT])),
    ("ChatReward", pb.ChatRewardRequest(conversations=[pb.Conversation(messages=[pb.ChatMessage(role="user")])])),
    ("GetModelInfo", pb.GetModelInfoRequest()),
])
async def test_every_reply_carries_a_generated_request_id(stub, rpc, request_):
    call = getattr(stub, rpc)(request_)
    reply = await call
    header = dict(await call.initial_metadata())["x-request-id"]
    assert len(header) == 32 and int(header, 16) >= 0  # uuid4 hex
    if hasattr(reply, "request_id"):
        assert reply.request_id == header


async def test_callers_request_id_is_echoed_and_given_to_the_engine(stub, fake):
    call = stub.Encode(pb.EncodeRequest(inputs=[TEXT], request_id="trainer-step-7"))
    reply = await call
    assert reply.request_id == "trainer-step-7"
    assert dict(await call.initial_metadata())["x-request-id"] == "trainer-step-7"
    assert fake.calls[-1].request_id == "trainer-step-7"


@pytest.mark.parametrize("request_", [pb.EncodeRequest(inputs=[], request_id="refused-1"),
                                      pb.EncodeRequest(inputs=[TEXT], request_id="refused-1", task=99)])
async def test_refused_call_still_carries_its_request_id_header(stub, request_):
    call = stub.Encode(request_)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(await call.initial_metadata())["x-request-id"] == "refused-1"


async def test_an_unusable_request_id_is_refused_under_a_generated_one(stub):
    call = stub.Encode(pb.EncodeRequest(inputs=[TEXT], request_id="é" * 3))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    header = await _request_id_header(call)
    assert len(header) == 32 and int(header, 16) >= 0


async def _request_id_header(call) -> str:
    """The id the server sent: in the initial metadata, and in the trailers of every failure (a
    refusal may end the call before the initial metadata reaches the client); the shipped
    clients read both (rewardserve_client.errors)."""
    initial, trailing = dict(await call.initial_metadata()), dict(await call.trailing_metadata())
    return initial.get("x-request-id") or trailing["x-request-id"]


async def test_a_stream_with_an_unusable_request_id_is_refused_under_a_generated_one(stub):
    call = stub.StreamReward(metadata=(("x-request-id", "x" * 200),))  # valid metadata, too long for an id
    with pytest.raises(grpc.aio.AioRpcError) as error:
        async for _ in call:
            pass
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    header = await _request_id_header(call)
    assert len(header) == 32 and int(header, 16) >= 0


async def test_request_id_from_metadata_when_the_field_is_empty(stub):
    call = stub.Encode(pb.EncodeRequest(inputs=[TEXT]), metadata=(("x-request-id", "mesh-abc"),))
    assert (await call).request_id == "mesh-abc"
