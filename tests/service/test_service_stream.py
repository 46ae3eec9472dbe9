"""StreamReward through the real transport around a fake engine whose items finish when the
test says so: answers matched by id in completion order, per-item errors that do not end the
stream, cancellation that frees queued work, and flow control bounding the items in flight."""
from __future__ import annotations

import asyncio
from collections import defaultdict

import grpc
import pytest
from fake_engine import FakeEngine
from grpc_health.v1 import health_pb2
from rewardserve_client.v1 import reward_service_pb2 as pb
from rewardserve_client.v1 import reward_service_pb2_grpc as pb_grpc

from rewardserve.service.server import RewardServer
from rewardserve.service.config import ServerConfig
from service_testlib import health_status, local_config


class GatedEngine(FakeEngine):
    """Each stream item waits for its own gate (by item id); counts the items queued at once."""

    def __init__(self) -> None:
        super().__init__()
        self.gates: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.queued_now = 0
        self.most_queued = 0

    def release(self, *item_ids: str) -> None:
        for item_id in item_ids:
            self.gates[item_id].set()

    async def wait_for_turn(self, call) -> None:
        self.queued_now += 1
        self.most_queued = max(self.most_queued, self.queued_now)
        try:
            await self.gates[call.request_id.rsplit("/", 1)[-1]].wait()
        finally:
            self.queued_now -= 1


@pytest.fixture
def fake() -> GatedEngine:  # overrides conftest's: the server fixture serves this engine
    return GatedEngine()


def item(item_id: str, *turns: tuple[str, str], group_id: str = "") -> pb.StreamItem:
    messages = [pb.ChatMessage(role=r, content=c) for r, c in turns or (("user", item_id),)]
    return pb.StreamItem(id=item_id, group_id=group_id, conversation=pb.Conversation(messages=messages))


async def wait_until(predicate, timeout: float = 5.0) -> None:
    end = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < end, "timed out"
        await asyncio.sleep(0.01)


async def test_answers_come_as_items_finish_matched_by_id(stub, fake):
    call = stub.StreamReward()
    await call.write(pb.StreamRewardRequest(items=[item("a", ("user", "x")), item("bb", ("user", "xyz")),
                                                   item("c", ("user", "hello"), group_id="g1")]))
    await wait_until(lambda: fake.queued_now == 3)
    answers = []
    for item_id in ("c", "a", "bb"):  # finish them out of order
        fake.release(item_id)
        answers.append(await call.read())
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF and await call.code() == grpc.StatusCode.OK
    assert [a.id for a in answers] == ["c", "a", "bb"]
    # The fake's score is the length of role + content: each answer is its own item's.
    assert [(a.result.score, a.result.index, a.result.group_id) for a in answers] == [
        (9.0, 2, "g1"), (5.0, 0, ""), (7.0, 1, "")]
    # Each answer carries its own item's timing (the fake: queue 1 ms, compute 3 ms per item).
    assert all(a.timing.queue_seconds == pytest.approx(0.001) for a in answers)
    assert all(a.timing.compute_seconds == pytest.approx(0.003) for a in answers)
    assert all(a.timing.total_seconds > 0 for a in answers)


async def test_item_errors_travel_in_the_stream_and_do_not_end_it(stub, fake):
    fake.release("ok1", "ok2", "dup")
    requests = [pb.StreamRewardRequest(items=[item("ok1"), item("bad", ("robot", "x"))]),
                pb.StreamRewardRequest(items=[pb.StreamItem(id="", conversation=item("x").conversation),
                                              pb.StreamItem(id="nothing"), item("ok2")])]
    answers = {a.id: a async for a in stub.StreamReward(iter(requests))}
    assert answers["ok1"].HasField("result") and answers["ok2"].HasField("result")
    invalid = grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert answers["bad"].error.code == invalid and "unknown role 'robot'" in answers["bad"].error.message
    assert answers[""].error.message.startswith("id: must not be empty")
    assert answers["nothing"].error.message == "conversation: must be set"


async def test_a_duplicate_id_in_flight_is_refused_alone(stub, fake):
    call = stub.StreamReward()
    await call.write(pb.StreamRewardRequest(items=[item("same"), item("same")]))
    refused = await call.read()
    assert refused.id == "same" and "already in flight" in refused.error.message
    assert refused.error.code == grpc.StatusCode.ALREADY_EXISTS.value[0]
    fake.release("same")
    assert (await call.read()).HasField("result")
    await call.done_writing()
    assert await call.code() == grpc.StatusCode.OK


async def test_cancelling_the_stream_drops_its_queued_work(stub, fake):
    call = stub.StreamReward()
    await call.write(pb.StreamRewardRequest(items=[item("a"), item("b"), item("c")]))
    await wait_until(lambda: len(fake.calls) == 3)
    call.cancel()
    await wait_until(lambda: all(c.finished.is_set() for c in fake.calls))
    assert [c.outcome for c in fake.calls] == ["cancelled"] * 3
    assert fake.queued_now == 0


async def test_flow_control_bounds_the_items_in_flight(stub, fake):
    ids = [f"i{n}" for n in range(12)]
    call = stub.StreamReward()
    await call.write(pb.StreamRewardRequest(options=pb.StreamRewardOptions(max_in_flight=3)))
    writer = asyncio.ensure_future(_write_all(call, ids))
    await wait_until(lambda: fake.queued_now == 3)
    await asyncio.sleep(0.2)  # more items are on the wire, but none is taken in
    assert len(fake.calls) == 3
    answered = []
    for item_id in ids:
        fake.release(item_id)
        answered.append((await call.read()).id)
    await writer
    assert answered == ids and fake.most_queued == 3
    assert await call.read() == grpc.aio.EOF


async def _write_all(call, ids) -> None:
    for item_id in ids:
        await call.write(pb.StreamRewardRequest(items=[item(item_id)]))
    await call.done_writing()


async def test_options_after_the_first_message_end_the_stream(stub, fake):
    requests = [pb.StreamRewardRequest(items=[]), pb.StreamRewardRequest(options=pb.StreamRewardOptions(priority=1))]
    call = stub.StreamReward(iter(requests))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in call:
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("options: only the first message")


async def test_stream_options_reach_every_item_and_the_limit_is_reported(stub, fake):
    fake.release("a")
    options = pb.StreamRewardOptions(priority=7, pooling=pb.PoolingParams(step_tag_id=ord("x")),
                                     truncation=pb.Truncation(truncate_prompt_tokens=5))
    answers = [a async for a in stub.StreamReward(iter([pb.StreamRewardRequest(options=options, items=[
        item("a", ("user", "xx"))])]))]
    (call,) = fake.calls
    assert call.priority == 7 and call.params.step_tag_id == ord("x") and call.params.truncate_prompt_tokens == 5
    assert len(answers[0].result.step_scores) == 2
    info = await stub.GetModelInfo(pb.GetModelInfoRequest())
    assert info.stream_max_in_flight == ServerConfig().stream_max_in_flight


async def test_an_engine_not_ready_fails_items_not_the_stream(stub, fake):
    fake.started = False  # e.g. the engine restarting: each item is refused UNAVAILABLE
    fake.release("a")
    answers = [a async for a in stub.StreamReward(iter([pb.StreamRewardRequest(items=[item("a")])]))]
    assert answers[0].error.code == grpc.StatusCode.UNAVAILABLE.value[0]


async def test_a_draining_server_answers_what_it_read_then_ends_the_stream_unavailable(stub, fake, server,
                                                                                       health_stub):
    call = stub.StreamReward()
    await call.write(pb.StreamRewardRequest(items=[item("a")]))
    await wait_until(lambda: fake.queued_now == 1)
    drain = asyncio.ensure_future(server.drain(5.0))
    while await health_status(health_stub) != health_pb2.HealthCheckResponse.NOT_SERVING:
        await asyncio.sleep(0.01)
    await call.write(pb.StreamRewardRequest(items=[item("b")]))  # read, but not taken in
    fake.release("a", "b")
    assert (await call.read()).id == "a"
    assert await call.code() == grpc.StatusCode.UNAVAILABLE
    await drain
    assert [c.request_id.rsplit("/", 1)[-1] for c in fake.calls] == ["a"]


async def test_server_limit_caps_what_a_stream_may_ask_for():
    """--stream-max-in-flight is the ceiling: GetModelInfo reports it, and a bad value is refused."""
    with pytest.raises(ValueError, match="stream-max-in-flight"):
        ServerConfig(stream_max_in_flight=0)
    config = local_config(stream_max_in_flight=7)
    async with RewardServer(config, FakeEngine()) as server:
        await server.wait_ready()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            info = await pb_grpc.RewardServiceStub(channel).GetModelInfo(pb.GetModelInfoRequest())
    assert info.stream_max_in_flight == 7
