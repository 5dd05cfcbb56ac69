"""The gateway's ASGI entry: the three /v1 POST routes are served here, the rest by FastAPI.

The hot path skips Starlette's routing, middleware stack and Request objects: one dict lookup
on the path, headers decoded once, the body read straight from `receive`. Other methods on those
paths get 405 here; every other path goes to the FastAPI app, which keeps the OpenAPI docs,
/v1/models, /healthz, /readyz and /metrics."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from gateway.accounting import Accounting
from gateway.connections import CANCEL_REASON, CLIENT_TASK, SHUTTING_DOWN
from gateway.errors import (
    AuthenticationError,
    GatewayError,
    MethodNotAllowedError,
    RateLimitedError,
    ShuttingDownError,
    anthropic_error_response,
    error_response,
    to_gateway_error,
)
from gateway.keys import Keyring, presented_key
from gateway.parsing import (
    ClientDisconnected,
    Endpoint,
    check_headers,
    header_map,
    parse_request,
    receive_body,
)
from gateway.relay import Relay
from gateway.signing import SignatureChecker, SignatureError, SignaturesFullError

log = logging.getLogger(__name__)


class GatewayASGI:
    """Dispatches POSTs to /v1/{chat/completions,completions,embeddings} to the relay."""

    def __init__(
        self,
        app: FastAPI,
        relay: Relay,
        accounting: Accounting,
        max_body_bytes: int,
        keys: Keyring | None = None,
        signatures: SignatureChecker | None = None,
    ) -> None:
        self._keys = keys
        self._signatures = signatures
        self.app = app
        # parts_of(app) and tests read app.state; it is the FastAPI app's.
        self.state = app.state
        self._relay = relay
        self._accounting = accounting
        self._max_body_bytes = max_body_bytes
        self._endpoints = {endpoint.value: endpoint for endpoint in Endpoint}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            endpoint = self._endpoints.get(path)
            deployment = None
            if endpoint is None and path.startswith("/openai/"):
                endpoint, deployment = azure_path(path)
            if endpoint is not None:
                if scope["method"] == "POST":
                    await self._handle(endpoint, scope, receive, send, deployment)
                else:
                    await error_response(_method_not_allowed())(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _handle(
        self,
        endpoint: Endpoint,
        scope: Scope,
        receive: Receive,
        send: Send,
        deployment: str | None = None,
    ) -> None:
        account = self._accounting.open()
        # The connection cancels this task if its client leaves (gateway/connections.py).
        task = scope[CLIENT_TASK] = asyncio.current_task()
        try:
            try:
                headers = header_map(scope["headers"])
                principal = (
                    self._keys.authenticate(headers, _address(scope))
                    if self._keys is not None and self._keys.required
                    else None
                )
                check_headers(headers, self._max_body_bytes)
                body = await receive_body(receive, self._max_body_bytes)
                if principal is not None and principal.require_signature:
                    self._check_signature(scope, headers, body)
                if deployment is not None:
                    body = with_model(body, deployment)
                parsed = parse_request(endpoint, body)
                response: Any = await self._relay.handle(parsed, headers, account, principal)
            except ClientDisconnected:
                return  # Nobody to answer.
            except asyncio.CancelledError:
                # The gateway is stopping and the graceful timeout is up: say so, in time.
                if scope.get(CANCEL_REASON) != SHUTTING_DOWN or task is None or task.uncancel():
                    raise
                stopping = ShuttingDownError(
                    "The gateway is shutting down; retry (another gateway will answer).",
                    headers={"Retry-After": "1"},
                )
                account.failed(stopping.status)
                response = error_response(stopping)
            except Exception as exc:
                err = to_gateway_error(exc)
                if not isinstance(exc, GatewayError):
                    log.error("unhandled error", exc_info=exc, extra={"path": scope["path"]})
                account.failed(err.status)
                if isinstance(err, AuthenticationError) and err.delay_s:
                    # Repeated failures from this address: answered late (gateway/keys.py).
                    await asyncio.sleep(err.delay_s)
                if endpoint is Endpoint.MESSAGES:
                    response = anthropic_error_response(err)
                else:
                    response = error_response(err)
            await response(scope, receive, send)
        except asyncio.CancelledError:
            # The client left: the upstream request was cancelled with us; nobody to answer.
            if not scope.get(CANCEL_REASON) or task is None or task.uncancel() > 0:
                raise
        finally:
            # A stream closes its account when it ends; anything else still open here was
            # left by the client, or cancelled.
            account.abandoned()

    def _check_signature(self, scope: Scope, headers: dict[str, str], body: bytes) -> None:
        assert self._keys is not None
        if self._signatures is None:
            return
        # The path as the client sent (and signed) it, before percent-decoding.
        raw = scope.get("raw_path") or scope["path"].encode()
        path = raw.decode("latin-1").partition("?")[0]
        try:
            self._signatures.check(presented_key(headers) or "", "POST", path, body, headers)
        except SignaturesFullError as exc:
            raise RateLimitedError(f"{exc.reason}.", headers={"Retry-After": "1"}) from None
        except SignatureError as exc:
            raise self._keys.failed_signature(_address(scope), exc.reason) from None


def _address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""


def _method_not_allowed() -> MethodNotAllowedError:
    return MethodNotAllowedError(
        "Method not allowed here; allowed: POST.", headers={"Allow": "POST"}
    )


# Azure OpenAI's paths, for AzureOpenAI clients pointed at the gateway: the v1 API
# (/openai/v1/chat/completions) and deployment URLs, whose deployment names the pool.
_AZURE_OPERATIONS = {
    "chat/completions": Endpoint.CHAT,
    "completions": Endpoint.COMPLETIONS,
    "embeddings": Endpoint.EMBEDDINGS,
}


def azure_path(path: str) -> tuple[Endpoint | None, str | None]:
    """(endpoint, deployment) for an Azure OpenAI path; (None, None) for any other."""
    rest = path.removeprefix("/openai/")
    if rest.startswith("v1/"):
        return _AZURE_OPERATIONS.get(rest[3:]), None
    if not rest.startswith("deployments/"):
        return None, None
    name, _, operation = rest[len("deployments/") :].partition("/")
    endpoint = _AZURE_OPERATIONS.get(operation)
    if endpoint is None or not name:
        return None, None
    # ASGI's path is already percent-decoded: the name is as the client meant it.
    return endpoint, name


def with_model(body: bytes, model: str) -> bytes:
    """body with its model set to the deployment the path named (left as is if not JSON: the
    parser then says what is wrong)."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not isinstance(payload, dict):
        return body
    return orjson.dumps({**payload, "model": model})
