"""Wrapping a gRPC method handler's behaviour, for server interceptors (auth, error mapping)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import grpc

Wrap = Callable[[Callable[..., Any]], Callable[..., Any]]


def rewrap(handler: grpc.RpcMethodHandler[Any, Any], unary: Wrap, stream: Wrap) -> Any:
    """`handler` with its behaviour wrapped: `stream` for async-generator behaviours (responses
    yielded), `unary` for the rest (a response returned, or written through context.write();
    grpc tells the two kinds apart by the function, so a wrapper must be of the same kind)."""
    h: Any = handler
    kw = {
        "request_deserializer": h.request_deserializer,
        "response_serializer": h.response_serializer,
    }

    def either(behavior: Callable[..., Any]) -> Callable[..., Any]:
        return stream(behavior) if inspect.isasyncgenfunction(behavior) else unary(behavior)

    if h.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary(h.unary_unary), **kw)
    if h.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary(h.stream_unary), **kw)
    if h.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(either(h.unary_stream), **kw)
    return grpc.stream_stream_rpc_method_handler(either(h.stream_stream), **kw)
