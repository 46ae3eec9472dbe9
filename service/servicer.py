"""RewardServicer: the rewardserve.v1.RewardService RPCs. Each one converts the request, awaits
the engine and converts the result back; ids, deadlines and errors are ``@unary``'s job."""
from __future__ import annotations

import logging
from importlib import metadata
from typing import Any, AsyncIterator

from rewardserve_client.v1 import reward_service_pb2 as pb
from rewardserve_client.v1 import reward_service_pb2_grpc as pb_grpc

from rewardserve.engine.api import EncodeResult, EngineAPI, EngineUnavailableError, ItemError, PoolingTask
from rewardserve.service import chat_convert, convert
from rewardserve.service.rpc import CallScope, OpenCalls, stream, unary
from rewardserve.service.stream import ItemStream

logger = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RewardService"].full_name
DEPRECATION_KEY = "x-rewardserve-deprecated"
DEPRECATION_TEXT = ("Reward is deprecated and is removed in rewardserve.v2; "
                    "call Encode with task POOLING_TASK_TOKEN_CLASSIFY")
_warned_deprecated = False  # per process, as the contract promises


def server_version() -> str:
    """The installed rewardserve distribution's version."""
    try:
        return metadata.version("rewardserve")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


class RewardServicer(pb_grpc.RewardServiceServicer):
    """Serves one engine. The engine may be attached after the server started listening
    (the model loads in the background); until then, and once draining, RPCs answer UNAVAILABLE."""

    def __init__(self, stream_max_in_flight: int, engine: EngineAPI | None = None) -> None:
        self._engine = engine
        self._stream_max_in_flight = stream_max_in_flight
        self._version = server_version()
        self._draining = False
        self.open_calls = OpenCalls()  # read by @unary and by the server's drain

    def refuse_new_calls(self) -> None:
        """Drain: answer new calls UNAVAILABLE (clients retry elsewhere); open calls go on."""
        self._draining = True
        self.open_calls.refusing.set()  # idle streams end now (UNAVAILABLE), busy ones once answered

    def attach(self, engine: EngineAPI) -> None:
        """Serve ``engine`` from now on (called once the model is loaded)."""
        self._engine = engine

    @property
    def engine(self) -> EngineAPI:
        """The engine, or UNAVAILABLE while the model is still loading or the server drains."""
        if self._draining:
            raise EngineUnavailableError("the server is draining; retry on another replica")
        if self._engine is None:
            raise EngineUnavailableError("the model is still loading")
        return self._engine

    @unary
    async def Encode(self, request: pb.EncodeRequest, call: CallScope) -> pb.EncodeResponse:
        """Any pooling task on texts or token ids."""
        req = convert.encode_call(request)  # a bad request is INVALID_ARGUMENT even while loading
        engine = self.engine
        results = await engine.encode(req.inputs, req.task, req.params, priority=req.priority,
                                      deadline=call.deadline, request_id=call.request_id)
        # the task the engine ran (it resolves an unset one); inputs are never empty
        reply = pb.EncodeResponse(request_id=call.request_id, model=engine.info.model,
                                  task=convert.TASK_TO_PROTO[results[0].task], **_encode_body(results, call))
        convert.add_encode_results(reply.results, results)
        return reply

    @unary
    async def Reward(self, request: pb.RewardRequest, call: CallScope) -> pb.RewardResponse:
        """Deprecated: Encode with TOKEN_CLASSIFY. Every reply (errors too) says so in its trailers."""
        call.trailing_metadata.append((DEPRECATION_KEY, DEPRECATION_TEXT))
        _warn_deprecated_once()
        req, engine = convert.reward_call(request), self.engine
        results = await engine.encode(req.inputs, PoolingTask.TOKEN_CLASSIFY, req.params, priority=req.priority,
                                      deadline=call.deadline, request_id=call.request_id)
        reply = pb.RewardResponse(request_id=call.request_id, model=engine.info.model, **_encode_body(results, call))
        convert.add_encode_results(reply.results, results)
        return reply

    @unary
    async def ChatReward(self, request: pb.ChatRewardRequest, call: CallScope) -> pb.ChatRewardResponse:
        """Conversations and groups of responses, re-templated when needed, rendered and scored."""
        req, engine = chat_convert.chat_call(request), self.engine
        try:
            results = await engine.chat_reward(req.conversations, req.params, priority=req.priority,
                                               deadline=call.deadline, request_id=call.request_id)
        except ItemError as exc:  # name the group and response, not the flattened position
            raise chat_convert.proto_error(exc, req.origins) from None
        return pb.ChatRewardResponse(
            request_id=call.request_id, model=engine.info.model,
            results=[chat_convert.result(r, origin) for r, origin in zip(results, req.origins)],
            usage=convert.usage(results), timing=convert.timing(results, call.elapsed()))

    @stream
    async def StreamReward(self, requests: AsyncIterator[pb.StreamRewardRequest],
                           call: CallScope) -> AsyncIterator[pb.StreamRewardResponse]:
        """Items scored as they arrive, answered as they finish; see service/stream.py."""
        async for answer in ItemStream(requests, lambda: self.engine, call, self._stream_max_in_flight,
                                       stop=self.open_calls.refusing).answers():
            yield answer

    @unary
    async def GetModelInfo(self, request: pb.GetModelInfoRequest, call: CallScope) -> pb.GetModelInfoResponse:
        """The served model, the server version and the stream limit."""
        return convert.model_info(self.engine.info, self._version, self._stream_max_in_flight)


def _warn_deprecated_once() -> None:
    # One line per process is enough to find the callers; one per call would flood the log.
    global _warned_deprecated
    if not _warned_deprecated:
        _warned_deprecated = True
        logger.warning("a client called the deprecated Reward RPC: %s", DEPRECATION_TEXT)


def _encode_body(results: list[EncodeResult], call: CallScope) -> dict[str, Any]:
    """The reply fields Encode and Reward share, but ``results``: those are added in place
    (``convert.add_encode_results``), since a message passed to a constructor is copied."""
    return {"usage": convert.usage(results), "timing": convert.timing(results, call.elapsed())}
