"""rewardserve-client: Python client of the rewardserve gRPC service (rewardserve.v1).

    from rewardserve_client import RewardClient

    with RewardClient("localhost:50051") as client:
        reply = client.chat_reward([[{"role": "user", "content": "2+2?"},
                                     {"role": "assistant", "content": "4"}]])
        print(reply.scores)

Generated stubs: ``rewardserve_client.v1.reward_service_pb2`` and ``..._pb2_grpc``.
"""
from rewardserve_client._retry import RetryPolicy
from rewardserve_client._score import ScoreResponse, ScoreResult
from rewardserve_client.aio import AsyncRewardClient
from rewardserve_client.client import RewardClient
from rewardserve_client.errors import (CallCancelledError, DeadlineExceededError, InternalError,
                                       InvalidArgumentError, ResourceExhaustedError,
                                       RewardServeError, UnavailableError)
from rewardserve_client.stream import AsyncRewardStream
from rewardserve_client.types import (ChatRewardResponse, ChatRewardResult, EncodeResponse,
                                      EncodeResult, ModelInfo, PolicyText, PolicyTokenizerInfo,
                                      StepScore, StreamResult, Timing, Usage)

__all__ = [
    "AsyncRewardClient", "RewardClient", "RetryPolicy",
    "RewardServeError", "InvalidArgumentError", "ResourceExhaustedError",
    "DeadlineExceededError", "UnavailableError", "InternalError", "CallCancelledError",
    "EncodeResponse", "EncodeResult", "ChatRewardResponse", "ChatRewardResult", "StepScore",
    "ModelInfo", "Usage", "Timing", "PolicyText", "PolicyTokenizerInfo", "StreamResult",
    "AsyncRewardStream", "ScoreResponse", "ScoreResult",
]
