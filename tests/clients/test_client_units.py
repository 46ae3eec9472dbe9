"""Pieces of the client that need no server: retry-delay parsing, backoff, tensor conversion."""
import random

import grpc
import numpy as np
import pytest

from fake_reward_server import status_with_retry_info
from rewardserve_client import RetryPolicy, RewardServeError, UnavailableError
from rewardserve_client._results import to_array
from rewardserve_client._status import parse_retry_delay
from rewardserve_client.v1 import reward_service_pb2 as pb


def test_retry_info_is_read_from_the_rich_status():
    blob = status_with_retry_info(grpc.StatusCode.RESOURCE_EXHAUSTED, "full", 0.75)
    assert parse_retry_delay([("grpc-status-details-bin", blob)]) == pytest.approx(0.75)


@pytest.mark.parametrize("trailing, expected", [
    ([("retry-after-ms", "250")], 0.25),
    ([("retry-after-ms", "soon")], None),
    ([("grpc-status-details-bin", b"\xff\xff not protobuf")], None),
    ([], None),
])
def test_retry_after_header_and_garbage(trailing, expected):
    assert parse_retry_delay(trailing) == expected


def test_backoff_grows_to_its_cap_with_jitter_below_it():
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=0.5, backoff_multiplier=2, jitter=0.5)
    rng = random.Random(1)
    waits = [policy.backoff(n, rng) for n in range(6)]
    caps = [0.1, 0.2, 0.4, 0.5, 0.5, 0.5]
    assert all(cap * 0.5 <= w <= cap for w, cap in zip(waits, caps))


def test_server_delay_is_a_floor_and_the_deadline_a_ceiling():
    policy = RetryPolicy(jitter=0.2)
    error = RewardServeError(grpc.StatusCode.RESOURCE_EXHAUSTED, "full", retry_delay=2.0)
    wait = policy.wait_before_retry(0, error, time_left=10, rng=random.Random(0))
    assert 2.0 <= wait <= 2.4
    assert policy.wait_before_retry(0, error, time_left=2.0, rng=random.Random(0)) is None


def test_only_unavailable_and_resource_exhausted_are_retryable():
    policy, rng = RetryPolicy(), random.Random(0)
    for code in grpc.StatusCode:
        wait = policy.wait_before_retry(0, RewardServeError(code, ""), None, rng)
        retryable = code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert (wait is not None) == retryable, code


def test_error_message_names_code_and_request_id():
    error = UnavailableError(grpc.StatusCode.UNAVAILABLE, "draining", request_id="r-7")
    assert str(error) == "UNAVAILABLE: draining (request id r-7)"
    assert not isinstance(error, grpc.RpcError)


def test_tensor_with_empty_shape_is_a_flat_vector():
    array = to_array(pb.FloatTensor(values=[1.0, 2.0]))
    assert array.shape == (2,) and array.dtype == np.float32


def test_stream_answers_carry_their_own_timing():
    from rewardserve_client.stream import to_stream_result

    timing = pb.Timing(queue_seconds=0.25, compute_seconds=0.5, total_seconds=1.0)
    good = to_stream_result(pb.StreamRewardResponse(id="a", result=pb.ChatRewardResult(score=2.0), timing=timing))
    bad = to_stream_result(pb.StreamRewardResponse(id="b", error=pb.ItemError(code=3, message="conversation: x"),
                                                   timing=timing))
    assert good.ok and good.result.score == 2.0 and good.timing.compute_seconds == 0.5
    assert not bad.ok and bad.timing.total_seconds == 1.0 and bad.error.item_id == "b"


def test_the_channel_balances_with_health_checks_and_no_grpc_retry_policy():
    import json

    from rewardserve_client._base import merge_options

    options = dict(merge_options(None))
    config = json.loads(options["grpc.service_config"])
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert config["healthCheckConfig"] == {"serviceName": "rewardserve.v1.RewardService"}
    assert "retryPolicy" not in json.dumps(config) and "hedgingPolicy" not in json.dumps(config)
    assert options["grpc.service_config_disable_resolution"] == 1  # no DNS TXT config either
    assert options["grpc.max_reconnect_backoff_ms"] == 2000
    assert options["grpc.dns_min_time_between_resolutions_ms"] == 2000
    mine = dict(merge_options([("grpc.service_config", "{}")]))
    assert mine["grpc.service_config"] == "{}"  # the caller's replaces ours
