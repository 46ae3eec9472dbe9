"""Run a step before a gRPC method's behaviour, whatever the method's kind (interceptor plumbing).

grpc.aio interceptors see only the method name and metadata; checks that need the call's
context (peer certificate, abort) wrap the handler's behaviour instead. ``prelude(context)``
runs first in the call's own task (so context variables it sets are the call's) and may abort.
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable

import grpc

Prelude = Callable[[grpc.aio.ServicerContext], Awaitable[None]]


def wrap_handler(handler: grpc.RpcMethodHandler, prelude: Prelude) -> grpc.RpcMethodHandler:
    """``handler`` with ``prelude`` awaited before its behaviour."""
    kw = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(_single(handler.unary_unary, prelude), **kw)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(_single(handler.stream_unary, prelude), **kw)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(_streamed(handler.unary_stream, prelude), **kw)
    return grpc.stream_stream_rpc_method_handler(_streamed(handler.stream_stream, prelude), **kw)


def _single(behavior: Callable[..., Any], prelude: Prelude) -> Callable[..., Awaitable[Any]]:
    async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await prelude(context)
        return await behavior(request, context)
    return run


def _streamed(behavior: Callable[..., Any], prelude: Prelude) -> Callable[..., Any]:
    async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await prelude(context)
        replies = behavior(request, context)
        if hasattr(replies, "__aiter__"):
            async for reply in replies:
                yield reply
        else:  # a behaviour that writes with context.write() and returns None (or awaits)
            await replies
    return run
