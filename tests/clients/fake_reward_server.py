"""A scripted fake RewardService on a real grpc.aio server (127.0.0.1:0) for the client tests.

The server runs in a background thread with its own event loop, so both the blocking client and
the asyncio client (on the test's loop) talk to it over a real TCP channel.
"""
from __future__ import annotations

import asyncio
import threading
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Optional

import grpc
from google.protobuf import any_pb2, duration_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from rewardserve_client.v1 import reward_service_pb2 as pb
from rewardserve_client.v1 import reward_service_pb2_grpc as pb_grpc

SERVER_REQUEST_ID = "srv-"  # the fake's reply id: this prefix + the id the client sent
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RewardService"].full_name


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def status_with_retry_info(code: grpc.StatusCode, message: str, delay_s: float) -> bytes:
    """A google.rpc.Status with a RetryInfo detail, encoded by hand (independent of the client)."""
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(delay_s * 1e9))
    retry_info = _field(1, delay.SerializeToString())
    detail = any_pb2.Any(type_url="type.googleapis.com/google.rpc.RetryInfo", value=retry_info)
    return (_varint(1 << 3) + _varint(code.value[0]) + _field(2, message.encode())
            + _field(3, detail.SerializeToString()))


@dataclass
class Fail:
    """Scripted error: abort with this status (and retry hints for RESOURCE_EXHAUSTED)."""

    code: grpc.StatusCode
    details: str = "scripted failure"
    retry_info_s: Optional[float] = None
    retry_after_ms: Optional[int] = None


@dataclass
class Stall:
    """Scripted delay before answering normally."""

    seconds: float


@dataclass
class Received:
    request: object
    metadata: dict
    time_remaining: Optional[float]  # the deadline the client gave this attempt, as seen here


@dataclass
class FakeRewardService(pb_grpc.RewardServiceServicer):
    """Answers every RPC from small deterministic rules unless a scripted action comes first."""

    received: dict = field(default_factory=lambda: defaultdict(list))
    script: dict = field(default_factory=lambda: defaultdict(deque))
    reply_override: dict = field(default_factory=dict)
    stream_metadata: list = field(default_factory=list)  # one dict per StreamReward call
    stream_options: list = field(default_factory=list)  # and its StreamRewardOptions

    def push(self, method: str, *actions) -> None:
        self.script[method].extend(actions)

    def calls(self, method: str) -> int:
        return len(self.received[method])

    def last(self, method: str):
        return self.received[method][-1].request

    async def _serve(self, method, request, context, build):
        metadata = dict(context.invocation_metadata())
        self.received[method].append(Received(request, metadata, context.time_remaining()))
        rid = SERVER_REQUEST_ID + metadata.get("x-request-id", "")
        await context.send_initial_metadata((("x-request-id", rid),))
        action = self.script[method].popleft() if self.script[method] else None
        if isinstance(action, Fail):
            await context.abort(action.code, action.details, _trailing(action))
        if isinstance(action, Stall):
            await asyncio.sleep(action.seconds)
        if method in self.reply_override:
            return self.reply_override[method]
        return build(request, rid, context)

    async def Encode(self, request, context):
        return await self._serve("Encode", request, context, encode_reply)

    async def Reward(self, request, context):
        return await self._serve("Reward", request, context, reward_reply)

    async def ChatReward(self, request, context):
        return await self._serve("ChatReward", request, context, chat_reward_reply)

    async def GetModelInfo(self, request, context):
        return await self._serve("GetModelInfo", request, context, lambda *_: MODEL_INFO)

    async def StreamReward(self, request_iterator, context):
        """Answers each item at once; its score is its number of messages."""
        self.stream_metadata.append(dict(context.invocation_metadata()))
        async for message in request_iterator:
            if message.HasField("options"):
                self.stream_options.append(message.options)
            for item in message.items:
                score = float(len(item.conversation.messages))
                yield pb.StreamRewardResponse(id=item.id, result=pb.ChatRewardResult(score=score))


def _trailing(action: Fail) -> tuple:
    trailing = []
    if action.retry_info_s is not None:
        trailing.append(("grpc-status-details-bin",
                         status_with_retry_info(action.code, action.details, action.retry_info_s)))
    if action.retry_after_ms is not None:
        trailing.append(("retry-after-ms", str(action.retry_after_ms)))
    return tuple(trailing)


def _length(item: pb.EncodeInput) -> int:
    return len(item.text.split()) if item.HasField("text") else len(item.token_ids.ids)


def _encode_result(index: int, item: pb.EncodeInput, per_token: bool) -> pb.EncodeResult:
    """Values index*100 + position*10 + label, so tests can check the reshape exactly."""
    n = _length(item)
    rows = n if per_token else 1
    values = [index * 100 + r * 10 + c for r in range(rows) for c in range(2)]
    shape = [rows, 2] if per_token else [2]
    positions = list(range(n)) if per_token else [n - 1]
    return pb.EncodeResult(index=index, data=pb.FloatTensor(shape=shape, values=values),
                           num_tokens=n, truncated=False, pooled_positions=positions,
                           reused_tokens=index)  # as if each input shared `index` prompt tokens


def encode_reply(request, rid, context) -> pb.EncodeResponse:
    task = request.task or pb.POOLING_TASK_CLASSIFY
    per_token = task in (pb.POOLING_TASK_TOKEN_CLASSIFY, pb.POOLING_TASK_TOKEN_EMBED)
    # Answered in reverse order: the client must put results back in input order.
    results = [_encode_result(i, x, per_token) for i, x in enumerate(request.inputs)][::-1]
    tokens = sum(r.num_tokens for r in results)
    return pb.EncodeResponse(request_id=request.request_id or rid, model="fake-rm", task=task,
                             results=results, usage=pb.Usage(prompt_tokens=tokens,
                                                             num_sequences=len(results),
                                                             reused_tokens=sum(r.reused_tokens for r in results)),
                             timing=pb.Timing(queue_seconds=0.25, compute_seconds=0.5,
                                              total_seconds=1.0))


def reward_reply(request, rid, context) -> pb.RewardResponse:
    context.set_trailing_metadata((("x-rewardserve-deprecated", "use Encode"),))
    results = [_encode_result(i, x, True) for i, x in enumerate(request.inputs)]
    return pb.RewardResponse(request_id=request.request_id or rid, model="fake-rm",
                             results=results)


def chat_reward_reply(request, rid, context) -> pb.ChatRewardResponse:
    results = []
    for i, conversation in enumerate(request.conversations):
        labels = [pb.LabelScore(label="LABEL_0", score=0.25), pb.LabelScore(label="LABEL_1",
                                                                              score=0.75)]
        steps = [pb.StepScore(position=p, score=0.5, label_scores=labels) for p in (3, 7)]
        results.append(pb.ChatRewardResult(
            index=i, score=-1.5 + i, label_scores=labels, num_tokens=len(conversation.messages), reused_tokens=i,
            step_scores=steps if request.pooling.HasField("step_tag_id") else []))
    return pb.ChatRewardResponse(request_id=request.request_id or rid, model="fake-rm",
                                 results=results[::-1], usage=pb.Usage(num_sequences=len(results)))


MODEL_INFO = pb.GetModelInfoResponse(
    model="fake-rm", architecture="Qwen2ForProcessRewardModel",
    tasks=[pb.POOLING_TASK_CLASSIFY, pb.POOLING_TASK_TOKEN_CLASSIFY], labels=["bad", "good"],
    max_model_len=4096, dtype="bfloat16", hidden_size=64, vocab_size=1000,
    has_chat_template=True, chat_template_sha256="ab" * 32, tokenizer_sha256="cd" * 32,
    server_version="0.1.0", is_causal=True,
    default_pooling=[pb.DefaultPooling(task=pb.POOLING_TASK_CLASSIFY,
                                       pooling_type=pb.POOLING_TYPE_LAST),
                     pb.DefaultPooling(task=pb.POOLING_TASK_TOKEN_CLASSIFY,
                                       pooling_type=pb.POOLING_TYPE_STEP)])


class ServerThread:
    """A grpc.aio server on 127.0.0.1:0 driven by its own event loop in a daemon thread.

    It serves the standard health service too (SERVING, until :meth:`set_serving` says otherwise),
    which the clients' round-robin balancing watches.
    """

    def __init__(self, servicer: pb_grpc.RewardServiceServicer, address: str = "127.0.0.1:0"):
        self.servicer = servicer
        self.address = address
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = None
        self.health = None
        self.port = 0

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    async def _start(self) -> int:
        self.server = grpc.aio.server()
        pb_grpc.add_RewardServiceServicer_to_server(self.servicer, self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        port = self.server.add_insecure_port(self.address)
        await self.server.start()
        return port

    def set_serving(self, serving: bool) -> None:
        """Report the RewardService SERVING or NOT_SERVING on the health service."""
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        self._run(self.health.set(SERVICE_NAME, status))

    def start(self) -> "ServerThread":
        self.thread.start()
        self.port = self._run(self._start())
        return self

    def stop(self) -> None:
        self._run(self.server.stop(grace=None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


class FakeTime:
    """A clock that only moves when the code under test sleeps; records every sleep."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)
