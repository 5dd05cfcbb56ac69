"""The one place domain errors become gRPC status codes: a server interceptor."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from llmpool.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    LLMPoolError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
)

from .grpc_wrap import rewrap

log = logging.getLogger(__name__)

_CODES: dict[type[LLMPoolError], grpc.StatusCode] = {
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    AlreadyExistsError: grpc.StatusCode.ALREADY_EXISTS,
    InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    FailedPreconditionError: grpc.StatusCode.FAILED_PRECONDITION,
    UnavailableError: grpc.StatusCode.UNAVAILABLE,
    PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
}


def status_code(exc: LLMPoolError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        code = _CODES.get(cls)  # type: ignore[call-overload]
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: LLMPoolError) -> None:
    code = status_code(exc)
    log.info("request refused", extra={"code": code.name, "reason": str(exc)})
    await context.abort(code, str(exc))


def _wrap_unary(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await behavior(request, context)
        except LLMPoolError as exc:
            await _abort(context, exc)

    return handler


def _wrap_stream(behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    async def handler(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        try:
            async for item in behavior(request, context):
                yield item
        except LLMPoolError as exc:
            await _abort(context, exc)

    return handler


class ErrorInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Maps llmpool.errors raised by any handler to a status with the error's message."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        # Health and reflection are grpc's own handlers (some write via context): left as they are.
        if handler is None or not handler_call_details.method.startswith("/llmpool.v1."):
            return handler
        return rewrap(handler, _wrap_unary, _wrap_stream)  # type: ignore[no-any-return]
