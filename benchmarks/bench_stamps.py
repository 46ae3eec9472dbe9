"""Stage stamps for bench_overhead: ``time.perf_counter_ns`` at each boundary one call crosses.

Wraps the client library, the servicer, the engine and the runner in place (benchmark only), and
stamps protobuf parsing and serialisation through stamped codecs. CLOCK_MONOTONIC is one clock for
the whole machine, so client and server stamps can be subtracted.
"""
from __future__ import annotations

import asyncio
import time

STAMPS: list[tuple[str, int, str | None]] = []  # (stage, perf_counter_ns, request id: a call's first)
# The order in which one call crosses the stage boundaries (c: client, s: servicer, e: engine on
# the event loop, g: GPU thread, l: back on the loop).
STAGES = ("c.start", "c.built", "c.serialized", "s.parsed", "s.enter", "s.header_started", "s.converted",
          "e.enter", "e.prepared", "e.submitted", "g.woke", "g.launched", "g.completing", "l.settled", "e.exit",
          "s.reply_built", "s.exit", "s.serialized", "c.parsed", "c.reply", "c.end")


def stamp(stage: str, request_id: str | None = None) -> None:
    STAMPS.append((stage, time.perf_counter_ns(), request_id))


def wrap(owner, name: str, before: str | None = None, after: str | None = None, rid=None,
         skip_none: bool = False) -> None:
    """Stamp around ``owner.name`` (sync or async); ``rid(args)`` tags the entry stamp;
    ``skip_none``: no exit stamp when it returns None (an idle ``next_batch``)."""
    fn = getattr(owner, name)

    def enter(args):
        if before:
            stamp(before, rid(args) if rid else None)

    if asyncio.iscoroutinefunction(fn):
        async def wrapped(*args, **kwargs):
            enter(args)
            out = await fn(*args, **kwargs)
            after and stamp(after)
            return out
    else:
        def wrapped(*args, **kwargs):
            enter(args)
            out = fn(*args, **kwargs)
            after and not (skip_none and out is None) and stamp(after)
            return out
    setattr(owner, name, wrapped)


def stamped_codec(parse, serialize, parsed: str, serialized: str, rid=None):
    """(parse, serialize) that stamp when a message was parsed / serialized."""
    def stamped_parse(raw):
        message = parse(raw)
        stamp(parsed, rid(message) if rid else None)
        return message

    def stamped_serialize(message):
        raw = serialize(message)
        stamp(serialized)
        return raw
    return stamped_parse, stamped_serialize


def instrument_server(engine) -> None:
    import grpc
    from rewardserve_client.v1 import reward_service_pb2 as pb

    from rewardserve.engine import async_engine
    from rewardserve.service import convert, rpc, servicer

    handler = grpc.unary_unary_rpc_method_handler

    def stamped_handler(behavior, request_deserializer=None, response_serializer=None):
        if request_deserializer == pb.EncodeRequest.FromString:
            request_deserializer, response_serializer = stamped_codec(
                request_deserializer, response_serializer, "s.parsed", "s.serialized", lambda m: m.request_id)
        return handler(behavior, request_deserializer=request_deserializer, response_serializer=response_serializer)
    grpc.unary_unary_rpc_method_handler = stamped_handler  # the generated add_*_to_server looks it up

    wrap(servicer.RewardServicer, "Encode", "s.enter", "s.exit", rid=lambda a: a[1].request_id)
    wrap(rpc, "_start_header", after="s.header_started")
    wrap(convert, "encode_call", after="s.converted")
    wrap(engine, "encode", "e.enter", "e.exit")
    wrap(engine.core, "prepare", after="e.prepared")
    wrap(engine.scheduler, "submit", after="e.submitted")
    wrap(engine.scheduler, "next_batch", after="g.woke", skip_none=True)
    wrap(engine.core.runner, "launch", after="g.launched")
    wrap(engine.scheduler, "complete", "g.completing")
    wrap(async_engine, "_settle", "l.settled")
    wrap(servicer, "_encode_body", after="s.reply_built")


def instrument_client(client) -> None:
    from rewardserve_client import _requests, _results
    from rewardserve_client.v1 import reward_service_pb2 as pb

    wrap(_requests, "encode_request", after="c.built")
    wrap(_results, "to_encode_response", "c.reply")
    parse, serialize = stamped_codec(pb.EncodeResponse.FromString, pb.EncodeRequest.SerializeToString,
                                     "c.parsed", "c.serialized")
    client._stub.Encode = client._channel.unary_unary(  # private, but only here: the codec is stamped
        "/rewardserve.v1.RewardService/Encode", request_serializer=serialize, response_deserializer=parse)
