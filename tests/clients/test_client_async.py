"""AsyncRewardClient against the fake server: same surface, conversions, retries, errors."""
import asyncio
import inspect
import random

import grpc
import numpy as np
import pytest

from fake_reward_server import Fail, Stall
from rewardserve_client import (AsyncRewardClient, DeadlineExceededError, InvalidArgumentError,
                                ResourceExhaustedError, RewardClient, _calls)
from rewardserve_client.v1 import reward_service_pb2 as pb


@pytest.fixture
async def client(server, fake_time):
    async with AsyncRewardClient(server.target, timeout=10, clock=fake_time.clock,
                                 sleep=fake_time.async_sleep, rng=random.Random(0)) as c:
        yield c


UNARY = ["encode", "chat_reward", "model_info", "reward", "score"]


@pytest.mark.parametrize("name", ["__init__", *UNARY])
def test_async_surface_matches_the_sync_one(name):
    sync = inspect.signature(getattr(RewardClient, name))
    asynchronous = inspect.signature(getattr(AsyncRewardClient, name))
    assert list(sync.parameters) == list(asynchronous.parameters)
    defaults = {k: p.default for k, p in sync.parameters.items()}
    assert defaults == {k: p.default for k, p in asynchronous.parameters.items()}


@pytest.mark.parametrize("name", UNARY)
def test_each_call_is_defined_once_for_both_clients(name):
    builder = getattr(_calls, name)
    sync, asynchronous = getattr(RewardClient, name), getattr(AsyncRewardClient, name)
    assert sync.__wrapped__ is builder and asynchronous.__wrapped__ is builder
    assert sync.__doc__ == asynchronous.__doc__ == builder.__doc__ and builder.__doc__
    assert inspect.iscoroutinefunction(asynchronous) and not inspect.iscoroutinefunction(sync)
    # As bound methods the signature starts with the call's own first argument, not self.
    bound = inspect.signature(getattr(RewardClient("127.0.0.1:1"), name))
    assert list(bound.parameters) == list(inspect.signature(builder).parameters)


def test_both_streams_take_the_same_options_with_the_same_defaults():
    sync = inspect.signature(RewardClient.stream).parameters
    asynchronous = inspect.signature(AsyncRewardClient.stream).parameters
    assert list(sync) == ["self", "items", *list(asynchronous)[1:]]
    options = {k: p.default for k, p in asynchronous.items() if k != "self"}
    assert options == {k: p.default for k, p in sync.items() if k not in ("self", "items")}
    assert options["max_in_flight"] == 64 and options["timeout"] is None


def test_both_clients_leave_task_unset_and_ask_64_in_flight(server, fake):
    conversation = [{"role": "user", "content": "q"}]
    with RewardClient(server.target, timeout=5) as client:
        client.encode(["x"])
        assert [r.result.score for r in client.stream([("a", conversation)])] == [1.0]

    async def main():
        async with AsyncRewardClient(server.target, timeout=5) as client:
            await client.encode(["x"])
            async with client.stream() as stream:
                assert (await stream.score(conversation)).score == 1.0

    asyncio.run(main())
    assert [r.request.task for r in fake.received["Encode"]] == [pb.POOLING_TASK_UNSPECIFIED] * 2
    assert [o.max_in_flight for o in fake.stream_options] == [64, 64]


@pytest.mark.parametrize("cls", [RewardClient, AsyncRewardClient])
def test_the_public_api_has_docstrings(cls):
    public = [n for n in dir(cls) if not n.startswith("_")] + ["__init__"]
    assert cls.__doc__ and all(getattr(cls, n).__doc__ for n in public), public


async def test_encode_returns_shaped_float32_arrays(client, fake):
    reply = await client.encode([[1, 2, 3], "a b"], task="token_classify", step_tag_id=3)
    assert fake.last("Encode").pooling.step_tag_id == 3
    assert [r.data.shape for r in reply.results] == [(3, 2), (2, 2)]
    assert all(r.data.dtype == np.float32 for r in reply.results)
    np.testing.assert_array_equal(reply.results[1].data[1], [110, 111])


async def test_chat_reward_and_model_info(client, fake):
    reply = await client.chat_reward([[{"role": "user", "content": "q"}]],
                                     chat_template_kwargs={"enable_thinking": True})
    assert reply.scores == [-1.5]
    assert fake.last("ChatReward").chat_template_kwargs["enable_thinking"] is True
    info = await client.model_info()
    assert info.labels == ("bad", "good") and info.default_pooling["classify"] == "last"


async def test_reward_warns_and_calls_the_deprecated_rpc(client, fake):
    with pytest.warns(DeprecationWarning, match="rewardserve.v2"):
        reply = await client.reward([[4, 5, 6]])
    assert fake.calls("Reward") == 1 and reply.task == "token_classify"


async def test_unavailable_then_success(client, fake, fake_time):
    fake.push("Encode", Fail(grpc.StatusCode.UNAVAILABLE), Fail(grpc.StatusCode.UNAVAILABLE))
    reply = await client.encode(["x"])
    assert reply.results and fake.calls("Encode") == 3 and len(fake_time.sleeps) == 2


async def test_resource_exhausted_honours_the_retry_delay(client, fake, fake_time):
    fake.push("Encode", Fail(grpc.StatusCode.RESOURCE_EXHAUSTED, retry_info_s=1.5))
    await client.encode(["x"])
    assert fake.calls("Encode") == 2 and fake_time.sleeps[0] >= 1.5


async def test_retry_delay_past_the_deadline_is_not_waited_for(client, fake, fake_time):
    fake.push("Encode", Fail(grpc.StatusCode.RESOURCE_EXHAUSTED, retry_after_ms=60_000))
    with pytest.raises(ResourceExhaustedError):
        await client.encode(["x"])
    assert fake_time.sleeps == []


async def test_invalid_argument_is_not_retried(client, fake, fake_time):
    fake.push("ChatReward", Fail(grpc.StatusCode.INVALID_ARGUMENT, "conversations[0]: role 'bot'"))
    with pytest.raises(InvalidArgumentError, match="role 'bot'") as caught:
        await client.chat_reward([[{"role": "bot", "content": "x"}]], request_id="a1")
    assert caught.value.request_id == "srv-a1"
    assert fake.calls("ChatReward") == 1 and fake_time.sleeps == []


async def test_deadline_is_enforced(server, fake):
    fake.push("Encode", Stall(5))
    async with AsyncRewardClient(server.target, timeout=0.2) as client:
        with pytest.raises(DeadlineExceededError):
            await client.encode(["x"])
    assert fake.calls("Encode") == 1
