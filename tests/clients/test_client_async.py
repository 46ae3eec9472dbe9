"""AsyncRewardClient against the fake server: same surface, conversions, retries, errors."""
import inspect
import random

import grpc
import numpy as np
import pytest

from fake_reward_server import Fail, Stall
from rewardserve_client import (AsyncRewardClient, DeadlineExceededError, InvalidArgumentError,
                                ResourceExhaustedError, RewardClient)


@pytest.fixture
async def client(server, fake_time):
    async with AsyncRewardClient(server.target, timeout=10, clock=fake_time.clock,
                                 sleep=fake_time.async_sleep, rng=random.Random(0)) as c:
        yield c


@pytest.mark.parametrize("name", ["__init__", "encode", "chat_reward", "model_info", "reward"])
def test_async_surface_matches_the_sync_one(name):
    sync = inspect.signature(getattr(RewardClient, name))
    asynchronous = inspect.signature(getattr(AsyncRewardClient, name))
    assert list(sync.parameters) == list(asynchronous.parameters)
    defaults = {k: p.default for k, p in sync.parameters.items() if k != "sleep"}
    assert defaults == {k: p.default for k, p in asynchronous.parameters.items() if k != "sleep"}


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
