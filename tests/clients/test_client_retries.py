"""Retries of the blocking client: only UNAVAILABLE and RESOURCE_EXHAUSTED, within the deadline.

Time is a FakeTime: the client's clock only moves when its retry loop sleeps, so the waits are
asserted exactly instead of measured.
"""
import random

import grpc
import pytest

from fake_reward_server import Fail, Stall
from rewardserve_client import (DeadlineExceededError, InternalError, InvalidArgumentError,
                                ResourceExhaustedError, RewardClient, UnavailableError)

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.fixture
def client(server, fake_time):
    with RewardClient(server.target, timeout=10, max_retries=3, initial_backoff=0.1,
                      max_backoff=1.0, jitter=0.2, clock=fake_time.clock, sleep=fake_time.sleep,
                      rng=random.Random(0)) as c:
        yield c


def test_unavailable_is_retried_with_growing_backoff_until_success(client, fake, fake_time):
    fake.push("Encode", Fail(UNAVAILABLE), Fail(UNAVAILABLE))
    reply = client.encode(["x"], request_id="same")
    assert reply.results[0].num_tokens == 1
    assert fake.calls("Encode") == 3
    # Every attempt is the same request, under the same id.
    assert {r.request.request_id for r in fake.received["Encode"]} == {"same"}
    first, second = fake_time.sleeps
    assert 0.08 <= first <= 0.1 and 0.16 <= second <= 0.2


def test_retries_stop_after_max_retries(client, fake, fake_time):
    fake.push("ChatReward", *[Fail(UNAVAILABLE, "draining")] * 5)
    with pytest.raises(UnavailableError, match="draining"):
        client.chat_reward([[{"role": "user", "content": "x"}]])
    assert fake.calls("ChatReward") == 4 and len(fake_time.sleeps) == 3
    assert fake_time.sleeps[-1] <= 1.0  # capped by max_backoff


def test_resource_exhausted_waits_for_the_retry_info_delay(client, fake, fake_time):
    fake.push("Encode", Fail(EXHAUSTED, "queue full", retry_info_s=2.5))
    client.encode(["x"])
    assert fake.calls("Encode") == 2
    assert 2.5 <= fake_time.sleeps[0] <= 2.5 * 1.2


def test_resource_exhausted_waits_for_retry_after_ms(client, fake, fake_time):
    fake.push("Encode", Fail(EXHAUSTED, retry_after_ms=1200))
    client.encode(["x"])
    assert 1.2 <= fake_time.sleeps[0] <= 1.2 * 1.2


def test_the_longer_of_both_server_delays_wins(client, fake, fake_time):
    fake.push("Encode", Fail(EXHAUSTED, retry_info_s=0.5, retry_after_ms=3000))
    client.encode(["x"])
    assert fake_time.sleeps[0] >= 3.0


def test_retry_delay_past_the_deadline_raises_at_once(client, fake, fake_time):
    fake.push("Encode", Fail(EXHAUSTED, "queue full", retry_info_s=30))
    with pytest.raises(ResourceExhaustedError) as caught:
        client.encode(["x"])
    assert caught.value.retry_delay == 30
    assert fake.calls("Encode") == 1 and fake_time.sleeps == []


def test_retries_get_what_is_left_of_the_deadline(client, fake, fake_time):
    fake.push("Encode", Fail(EXHAUSTED, retry_info_s=4))
    client.encode(["x"])
    first, second = (r.time_remaining for r in fake.received["Encode"])
    # gRPC rounds the timeout it puts on the wire up, to as much as 100 ms (a 10 s timeout arrived
    # as 10.099 s), hence the slack; the second attempt still gets about 6 s, not a fresh 10.
    slack = 0.15
    assert 9 < first <= 10 + slack
    assert second <= 10 - fake_time.sleeps[0] + slack < 6 + 2 * slack


@pytest.mark.parametrize("code, error", [
    (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgumentError),
    (grpc.StatusCode.INTERNAL, InternalError),
    (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceededError),
])
def test_other_errors_are_never_retried(client, fake, fake_time, code, error):
    fake.push("Encode", Fail(code, "nope"))
    with pytest.raises(error) as caught:
        client.encode(["x"], request_id="r1")
    assert caught.value.code == code and caught.value.request_id == "srv-r1"
    assert fake.calls("Encode") == 1 and fake_time.sleeps == []


def test_deadline_is_enforced_and_not_retried(server, fake):
    fake.push("Encode", Stall(5))
    with RewardClient(server.target, timeout=0.2) as client:
        with pytest.raises(DeadlineExceededError) as caught:
            client.encode(["x"], request_id="late")
    assert caught.value.request_id == "srv-late"  # initial metadata arrived before the stall
    assert fake.calls("Encode") == 1


def test_per_call_timeout_overrides_the_default(server, fake):
    fake.push("GetModelInfo", Stall(5))
    with RewardClient(server.target, timeout=60) as client:
        with pytest.raises(DeadlineExceededError):
            client.model_info(timeout=0.2)


def test_unreachable_server_raises_unavailable_after_retries(fake_time):
    with RewardClient("127.0.0.1:1", timeout=5, max_retries=2, clock=fake_time.clock,
                      sleep=fake_time.sleep) as client:
        with pytest.raises(UnavailableError) as caught:
            client.model_info()
    assert len(fake_time.sleeps) == 2 and caught.value.request_id  # the client's own id
