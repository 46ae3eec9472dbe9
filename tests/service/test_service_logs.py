"""Log lines as JSON, with the caller's W3C traceparent carried into every line of its call."""
from __future__ import annotations

import io
import json
import logging

import grpc
import pytest
from fake_engine import FakeEngine
from rewardserve_client.v1 import reward_service_pb2 as pb
from rewardserve_client.v1 import reward_service_pb2_grpc as pb_grpc

from rewardserve.service.logs import JsonFormatter, TraceContext, TraceFilter, current_trace, parse_traceparent
from rewardserve.service.server import RewardServer
from service_testlib import local_config

TRACE_ID, SPAN_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"


@pytest.mark.parametrize("value, expected", [
    (TRACEPARENT, TraceContext(TRACE_ID, SPAN_ID)),
    (f"01-{TRACE_ID}-{SPAN_ID}-00-future-fields", TraceContext(TRACE_ID, SPAN_ID)),  # newer versions may add
    (f"00-{TRACE_ID}-{SPAN_ID}-01-extra", None),   # version 00 has exactly four fields
    (f"ff-{TRACE_ID}-{SPAN_ID}-01", None),         # version ff is invalid
    (f"00-{'0' * 32}-{SPAN_ID}-01", None),         # all-zero trace id
    (f"00-{TRACE_ID}-{'0' * 16}-01", None),        # all-zero parent id
    (f"00-{TRACE_ID.upper()}-{SPAN_ID}-01", None),  # upper case is not allowed
    ("garbage", None),
])
def test_traceparent_is_parsed_as_w3c_trace_context_says(value, expected):
    assert parse_traceparent(value) == expected


async def test_log_lines_of_a_call_carry_its_trace_as_json_fields():
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.addFilter(TraceFilter())
    handler.setFormatter(JsonFormatter())
    service_logger = logging.getLogger("rewardserve.service")
    service_logger.addHandler(handler)
    fake = FakeEngine()
    fake.fail_with = RuntimeError("boom in the engine")  # logged (with traceback) inside the call
    try:
        async with RewardServer(local_config(), engine=fake) as server:
            await server.wait_ready()
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = pb_grpc.RewardServiceStub(channel)
                for metadata in ((("traceparent", TRACEPARENT),), ()):
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await stub.Encode(pb.EncodeRequest(inputs=[pb.EncodeInput(text="x")]), metadata=metadata)
                    assert info.value.code() == grpc.StatusCode.INTERNAL
    finally:
        service_logger.removeHandler(handler)
    entries = [json.loads(line) for line in lines.getvalue().splitlines()]
    errors = [e for e in entries if e["message"].startswith("internal error")]
    assert len(errors) == 2 and errors[0]["level"] == "ERROR" and "boom in the engine" in errors[0]["exception"]
    assert (errors[0]["trace_id"], errors[0]["span_id"]) == (TRACE_ID, SPAN_ID)
    assert "trace_id" not in errors[1]  # a call without traceparent
    assert not any("trace_id" in e for e in entries if "listening" in e["message"])  # outside any call
    assert current_trace() is None  # the test's own task never saw the calls' context


def test_text_lines_end_with_the_trace_when_there_is_one():
    from rewardserve.service.logs import TEXT_FORMAT, _current

    record = logging.LogRecord("rewardserve.service.rpc", logging.INFO, __file__, 1, "hello", None, None)
    token = _current.set(TraceContext(TRACE_ID, SPAN_ID))
    try:
        TraceFilter().filter(record)
    finally:
        _current.reset(token)
    assert logging.Formatter(TEXT_FORMAT).format(record).endswith(f"hello trace={TRACE_ID} span={SPAN_ID}")
