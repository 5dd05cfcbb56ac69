"""Authentication and RBAC for every RPC: a server interceptor over controller.rbac's table.

An unauthenticated call gets UNAUTHENTICATED; a call the caller's role may not make gets
PERMISSION_DENIED and an audit event. The check runs inside the handler because only the
handler's context carries the peer's certificate.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from .audit import AuditLog
from .auth import Authenticator, AuthError, Caller
from .grpc_wrap import rewrap
from .metrics import ControllerMetrics
from .rbac import RPC_ROLES

log = logging.getLogger(__name__)

Ctx = grpc.aio.ServicerContext[Any, Any]


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, auth: Authenticator, audit: AuditLog, metrics: ControllerMetrics) -> None:
        self._auth = auth
        self._audit = audit
        self._refused = metrics.rpc_refused

    async def _admit(self, method: str, context: Ctx) -> None:
        try:
            caller = self._auth.caller(context)
        except AuthError as exc:
            self._refused.labels("unauthenticated").inc()
            # Who, as far as the connection says: a token was wrong, the certificate was not.
            who = Caller(self._auth.peer(context), "none", "unauthenticated")
            await self._audit.record(
                who, method.rsplit("/", 1)[-1], method, "unauthenticated", detail=str(exc)
            )
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
            return
        if caller.anonymous or caller.role in RPC_ROLES.get(method, frozenset()):
            return
        self._refused.labels("permission_denied").inc()
        await self._deny(caller, method, context)

    async def _deny(self, caller: Caller, method: str, context: Ctx) -> None:
        roles = sorted(RPC_ROLES.get(method, frozenset()))
        need = " or ".join(roles) if roles else "a role that no one has (not in the RBAC table)"
        await self._audit.record(
            caller, method.rsplit("/", 1)[-1], method, "denied", detail=f"needs {need}"
        )
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"{caller.identity} ({caller.role}) may not call {method}: it needs {need}",
        )

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        admit = self._admit

        def unary(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def handle(request: Any, context: Ctx) -> Any:
                await admit(method, context)
                return await behavior(request, context)

            return handle

        def stream(
            behavior: Callable[..., AsyncIterator[Any]],
        ) -> Callable[..., AsyncIterator[Any]]:
            async def handle(request: Any, context: Ctx) -> AsyncIterator[Any]:
                await admit(method, context)
                async for item in behavior(request, context):
                    yield item

            return handle

        return rewrap(handler, unary, stream)  # type: ignore[no-any-return]
