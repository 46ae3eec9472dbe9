"""Malformed request bytes are INVALID_ARGUMENT (unary and stream), counted and logged at most once
per interval; errors echo only a short prefix of the input and their trailers stay small."""
from __future__ import annotations

import logging
import urllib.request

import grpc
import pytest
from rewardserve_client.v1 import reward_service_pb2 as pb

from rewardserve.engine.api import InvalidInputError, preview
from rewardserve.service.errors import MAX_MESSAGE_CHARS, to_failure
from rewardserve.service.wire import SERVICE, MalformedLog
from service_testlib import live_server

BAD_UTF8 = b"\x3a\x02\xff\xfe"  # EncodeRequest.request_id (field 7) = two bytes of invalid UTF-8


def test_malformed_log_counts_every_message_and_logs_once_per_interval(caplog):
    now = [0.0]
    log = MalformedLog(interval_s=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="rewardserve.service.wire"):
        for _ in range(5):
            log.record("Encode", "Error parsing message")
        now[0] = 10.5
        log.record("StreamReward", "Error parsing message")
    assert log.counts == {"Encode": 5, "StreamReward": 1}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "4 more since the last such line" in lines[1]


def test_echoed_input_is_cut_and_trailers_stay_small():
    role = "x" * 10_000
    assert len(preview(role)) < 60
    failure = to_failure(InvalidInputError("conversations[0].messages[0].role", f"unknown role {role}"), "id")
    assert len(failure.message) <= MAX_MESSAGE_CHARS and "more chars]" in failure.message
    assert sum(len(k) + len(v) for k, v in failure.trailing_metadata) < 2048


async def test_undecodable_unary_and_stream_are_invalid_argument_and_counted(fake, unused_tcp_port):
    async with live_server(fake, metrics_port=unused_tcp_port) as live:
        encode = live.channel.unary_unary(f"/{SERVICE.full_name}/Encode")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await encode(BAD_UTF8, timeout=5)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("request: not a decodable rewardserve.v1.EncodeRequest")
        assert dict(err.value.initial_metadata()).get("x-request-id")  # traceable like any refusal

        stream = live.channel.stream_stream(f"/{SERVICE.full_name}/StreamReward")
        good = pb.StreamRewardRequest(items=[pb.StreamItem(id="a", conversation=pb.Conversation(
            messages=[pb.ChatMessage(role="user", content="hi")]))]).SerializeToString()
        call = stream(iter([good, b"\x0a\x05\x0a\x01"]), timeout=5)  # an item cut short
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in call:
                pass
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "StreamRewardRequest" in err.value.details()

        assert live.server.malformed.counts == {"Encode": 1, "StreamReward": 1}
        with urllib.request.urlopen(f"http://127.0.0.1:{live.server.metrics_port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        assert 'rewardserve_malformed_requests_total{grpc_method="Encode"} 1.0' in text
        reply = await live.stub.Encode(pb.EncodeRequest(inputs=[pb.EncodeInput(text="still fine")]), timeout=5)
        assert reply.results


async def test_a_killed_stream_is_not_recorded_ok(fake, unused_tcp_port):
    import asyncio

    async with live_server(fake, metrics_port=unused_tcp_port) as live:
        conversation = pb.Conversation(messages=[pb.ChatMessage(role="user", content="hi")])
        for n in range(4):
            requests: asyncio.Queue = asyncio.Queue()
            await requests.put(pb.StreamRewardRequest(items=[pb.StreamItem(id=f"{n}", conversation=conversation)]))

            async def messages():
                while True:
                    yield await requests.get()
            call = live.stub.StreamReward(messages())
            await call.read()  # one answer, the stream still open
            call.cancel()

        def handled() -> list[str]:
            with urllib.request.urlopen(f"http://127.0.0.1:{live.server.metrics_port}/metrics", timeout=5) as reply:
                text = reply.read().decode()
            return [line for line in text.splitlines() if line.startswith("grpc_server_handled_total")
                    and 'grpc_method="StreamReward"' in line]

        def four_cancelled(lines: list[str]) -> bool:
            return any('grpc_code="CANCELLED"' in line and line.endswith(" 4.0") for line in lines)
        for _ in range(300):  # the server records each cancellation when its handler unwinds
            lines = await asyncio.to_thread(handled)
            if four_cancelled(lines):
                break
            await asyncio.sleep(0.1)
    assert four_cancelled(lines), lines
    assert not any('grpc_code="OK"' in line for line in lines), lines


async def test_the_heap_is_trimmed_after_a_large_request_only(fake, monkeypatch):
    # A large request's parsed message is freed into glibc's arenas, which keep it: four refused
    # 50 MB token-id requests left +200 MB RSS. After a large request the free heap goes back.
    from rewardserve.service import wire

    trims: list[int] = []
    monkeypatch.setattr(wire, "TRIM_AFTER_BYTES", 10_000)
    monkeypatch.setattr(wire, "release_free_memory", lambda: trims.append(1))
    async with live_server(fake) as live:
        small = pb.EncodeRequest(inputs=[pb.EncodeInput(token_ids=pb.TokenIds(ids=[5] * 10))])
        large = pb.EncodeRequest(inputs=[pb.EncodeInput(token_ids=pb.TokenIds(ids=[5] * 20_000))])
        await live.stub.Encode(small, timeout=5)
        assert trims == []
        with pytest.raises(grpc.aio.AioRpcError):
            await live.stub.Encode(large, timeout=5)  # too long for the model: refused, then trimmed
        assert trims == [1]


def test_release_free_memory_runs_where_there_is_no_glibc_too():
    from rewardserve.service.wire import release_free_memory

    release_free_memory()  # glibc: malloc_trim(0); elsewhere nothing, and never an error
