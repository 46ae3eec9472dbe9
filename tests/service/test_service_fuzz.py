"""Fuzzing every RewardService RPC, the stream included, against the real engine on the demo model.

Fixed seeds, three sources of bytes: random bytes, mutated valid messages, and (hypothesis)
messages built field by field from the proto descriptors. Every answer must be OK or a clean
refusal: never UNKNOWN or INTERNAL, trailers inside gRPC's default metadata limit, and the server
healthy and scoring afterwards.
"""
from __future__ import annotations

import asyncio
import random
import threading
from typing import Iterator

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rewardserve_client.v1 import reward_service_pb2 as pb

from rewardserve.engine.config import EngineConfig, ModelConfig, RunnerConfig
from rewardserve.service.packed import varint
from rewardserve.service.wire import SERVICE
from service_testlib import live_server

hypothesis = pytest.importorskip("hypothesis")  # in requirements-dev.txt; a bare install may lack it
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytestmark = pytest.mark.slow
FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
METADATA_LIMIT = 8 * 1024  # gRPC's default soft limit on a client's received metadata
CASES_PER_RPC = 40
UNARY = [m for m in SERVICE.methods if not m.client_streaming]
STREAM = next(m for m in SERVICE.methods if m.client_streaming)


def _conversation() -> pb.Conversation:
    return pb.Conversation(messages=[pb.ChatMessage(role="user", content="2+2?"),
                                     pb.ChatMessage(role="assistant", content="4")])


VALID = {
    "Encode": pb.EncodeRequest(inputs=[pb.EncodeInput(text="The answer is 42."),
                                       pb.EncodeInput(token_ids=pb.TokenIds(ids=[5, 6, 7]))]),
    "Reward": pb.RewardRequest(inputs=[pb.EncodeInput(token_ids=pb.TokenIds(ids=[5, 6, 7]))]),
    "ChatReward": pb.ChatRewardRequest(conversations=[_conversation()], request_id="fuzz"),
    "GetModelInfo": pb.GetModelInfoRequest(),
    "StreamReward": pb.StreamRewardRequest(items=[pb.StreamItem(id="a", conversation=_conversation())]),
    "Score": pb.ScoreRequest(query=pb.ScoreInput(text="What is 2+2?"),
                             documents=[pb.ScoreInput(text="4"), pb.ScoreInput(token_ids=pb.TokenIds(ids=[5, 6]))]),
}


# ---- byte sources -------------------------------------------------------------------------------

def _random_bytes(rng: random.Random) -> bytes:
    return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64)))


def _mutated(rng: random.Random, valid: bytes) -> bytes:
    data = bytearray(valid)
    for _ in range(rng.randint(1, 4)):
        op, at = rng.randrange(4), rng.randrange(len(data) + 1)
        if op == 0 and data:
            data[at % len(data)] = rng.randrange(256)  # flip a byte
        elif op == 1:
            data[at:at] = bytes([rng.randrange(256)])  # insert one
        elif op == 2 and data:
            del data[at % len(data)]  # drop one
        else:
            del data[at:]  # truncate
    return bytes(data)


def _crafted() -> list[bytes]:
    """The red team's shapes: invalid UTF-8 in a string, a truncated varint, deep nesting."""
    deep = b""
    for _ in range(200):  # Struct → Value → Struct …, far past the parser's depth limit
        deep = b"\x0a" + varint(len(deep)) + deep
    return [b"\x3a\x02\xff\xfe",             # request_id (field 7) = invalid UTF-8
            b"\x12\x02\x0a",                  # a length that runs past the end
            b"\x30\xff\xff\xff",              # priority: truncated varint
            b"\x1a" + varint(len(deep)) + deep,
            b"\xff" * 11]


def _strategy(descriptor, depth: int = 0) -> st.SearchStrategy:
    """Messages of ``descriptor`` with arbitrary field values (nested up to depth 3)."""
    fields = {}
    for f in descriptor.fields:
        value = _field_strategy(f, depth)
        if value is None:
            continue
        fields[f.name] = st.lists(value, max_size=3) if f.is_repeated else value
    return st.fixed_dictionaries({}, optional=fields).map(lambda kw: _build(descriptor, kw))


def _build(descriptor, kw):
    from google.protobuf import message_factory
    cls = message_factory.GetMessageClass(descriptor)
    message = cls()
    for name, value in kw.items():
        field = descriptor.fields_by_name[name]
        if field.is_repeated:
            getattr(message, name).extend(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(message, name).CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


def _field_strategy(f, depth: int):
    t = f.type
    if t == FieldDescriptor.TYPE_MESSAGE:
        if depth >= 3 or f.message_type.GetOptions().map_entry:
            return None
        return _strategy(f.message_type, depth + 1)
    if t == FieldDescriptor.TYPE_STRING:
        return st.text(max_size=24)
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=24)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return st.floats(allow_nan=True, width=32)
    if t == FieldDescriptor.TYPE_ENUM:
        return st.sampled_from([v.number for v in f.enum_type.values])
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.one_of(st.integers(0, 1000), st.integers(0, 2**32 - 1))
    if t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
        return st.integers(-2**31, 2**31 - 1)
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    return st.integers(-2**63, 2**63 - 1)


# ---- the server, on its own loop in a thread (hypothesis drives plain functions) ----------------

class _Served:
    def __init__(self, engine: EngineConfig) -> None:
        self.port: int | None = None
        self.server = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main(engine)), daemon=True)

    async def _main(self, engine: EngineConfig) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        try:
            async with live_server(engine_config=engine) as live:
                self.port, self.server = live.server.port, live.server
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self._error = exc
            self._ready.set()

    def __enter__(self) -> "_Served":
        self._thread.start()
        self._ready.wait(180)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc_info) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@pytest.fixture(scope="module")
def served(demo_model_dir) -> Iterator[tuple[_Served, grpc.Channel]]:
    engine = EngineConfig(model=ModelConfig(model=str(demo_model_dir), dtype="float32", max_model_len=32),
                          runner=RunnerConfig(device="cpu"))
    with _Served(engine) as srv, grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
        yield srv, channel


class _Calls:
    """Raw-bytes callers for every method, and the codes seen."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.codes: dict[str, int] = {}
        self._unary = {m.name: channel.unary_unary(f"/{SERVICE.full_name}/{m.name}") for m in UNARY}
        self._stream = channel.stream_stream(f"/{SERVICE.full_name}/{STREAM.name}")

    def unary(self, method: str, data: bytes) -> None:
        try:
            self._unary[method](data, timeout=20)
            self._seen(method, grpc.StatusCode.OK, ())
        except grpc.RpcError as err:
            self._seen(method, err.code(), err.trailing_metadata() or ())

    def stream(self, messages: list[bytes]) -> None:
        try:
            for _ in self._stream(iter(messages), timeout=20):
                pass
            self._seen(STREAM.name, grpc.StatusCode.OK, ())
        except grpc.RpcError as err:
            self._seen(STREAM.name, err.code(), err.trailing_metadata() or ())

    def _seen(self, method: str, code: grpc.StatusCode, trailers) -> None:
        size = sum(len(k) + len(v) for k, v in trailers)
        assert code not in FORBIDDEN, f"{method}: {code}"
        assert size < METADATA_LIMIT, f"{method}: {size} bytes of trailers"
        key = f"{method}:{code.name}"
        self.codes[key] = self.codes.get(key, 0) + 1


def _assert_healthy(channel: grpc.Channel) -> None:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    chat = channel.unary_unary(f"/{SERVICE.full_name}/ChatReward", response_deserializer=pb.ChatRewardResponse.FromString)
    assert len(chat(VALID["ChatReward"].SerializeToString(), timeout=20).results) == 1


def test_raw_crafted_and_mutated_bytes_are_refused_cleanly(served):
    srv, channel = served
    calls, rng = _Calls(channel), random.Random(20)
    for method in UNARY:
        valid = VALID[method.name].SerializeToString()
        for data in _crafted():
            calls.unary(method.name, data)
        for _ in range(CASES_PER_RPC):
            calls.unary(method.name, _random_bytes(rng))
            calls.unary(method.name, _mutated(rng, valid))
    valid = VALID["StreamReward"].SerializeToString()
    for data in _crafted():
        calls.stream([valid, data])
    for _ in range(CASES_PER_RPC // 2):
        calls.stream([_random_bytes(rng)])
        calls.stream([valid, _mutated(rng, valid)])
    # The crafted cases cannot decode: each was refused, and counted, per method.
    assert calls.codes["Encode:INVALID_ARGUMENT"] >= len(_crafted())
    assert calls.codes["StreamReward:INVALID_ARGUMENT"] >= len(_crafted())
    assert all(srv.server.malformed.counts[m.name] >= len(_crafted()) - 1 for m in SERVICE.methods
               if m.name != "GetModelInfo")
    _assert_healthy(channel)


_SETTINGS = settings(max_examples=30, derandomize=True, deadline=None, database=None,
                     suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("method", [m.name for m in UNARY])
def test_hypothesis_built_messages_never_fail_unknown_or_internal(served, method):
    _, channel = served
    calls = _Calls(channel)
    descriptor = next(m for m in SERVICE.methods if m.name == method).input_type

    @_SETTINGS
    @given(_strategy(descriptor))
    def check(message):
        calls.unary(method, message.SerializeToString())
    check()
    _assert_healthy(channel)


def test_hypothesis_built_stream_messages_never_fail_unknown_or_internal(served):
    _, channel = served
    calls = _Calls(channel)

    @_SETTINGS
    @given(st.lists(_strategy(STREAM.input_type), min_size=1, max_size=3))
    def check(messages):
        calls.stream([m.SerializeToString() for m in messages])
    check()
    _assert_healthy(channel)


def test_request_chat_template_is_refused_naming_it_by_default(served):
    _, channel = served
    chat = channel.unary_unary(f"/{SERVICE.full_name}/ChatReward")
    request = pb.ChatRewardRequest(conversations=[_conversation()], chat_template="{% for i in range(10**9) %}{% endfor %}")
    with pytest.raises(grpc.RpcError) as err:
        chat(request.SerializeToString(), timeout=20)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("chat_template: request chat templates are off on this server")
    _assert_healthy(channel)
