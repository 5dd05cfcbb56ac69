"""The gateway's ASGI entry: the three /v1 POST routes are served here, the rest by FastAPI.

The hot path skips Starlette's routing, middleware stack and Request objects: one dict lookup
on the path, headers decoded once, the body read straight from `receive`. Every other path and
method (including GET on the /v1 POST paths, which FastAPI answers 405) goes to the FastAPI
app, which keeps the OpenAPI docs, /v1/models, /healthz, /readyz and /metrics."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from gateway.errors import GatewayError, error_response, to_gateway_error
from gateway.parsing import (
    ClientDisconnected,
    Endpoint,
    check_headers,
    header_map,
    parse_request,
    receive_body,
)
from gateway.relay import Relay
from llmpool.clock import Clock

log = logging.getLogger(__name__)


class GatewayASGI:
    """Dispatches POSTs to /v1/{chat/completions,completions,embeddings} to the relay."""

    def __init__(self, app: FastAPI, relay: Relay, max_body_bytes: int, clock: Clock) -> None:
        self.app = app
        # parts_of(app) and tests read app.state; it is the FastAPI app's.
        self.state = app.state
        self._relay = relay
        self._max_body_bytes = max_body_bytes
        self._clock = clock
        self._endpoints = {endpoint.value: endpoint for endpoint in Endpoint}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self._endpoints.get(scope["path"])
            if endpoint is not None:
                await self._handle(endpoint, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _handle(self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
        started = self._clock.monotonic()
        headers = header_map(scope["headers"])
        relay = self._relay
        try:
            try:
                check_headers(headers, self._max_body_bytes)
                body = await receive_body(receive, self._max_body_bytes)
                parsed = parse_request(endpoint, body)
            except GatewayError as exc:
                relay.count_rejected(exc.status)
                raise
            response: Any = await relay.handle(parsed, headers, started)
        except ClientDisconnected:
            return  # Nobody to answer.
        except Exception as exc:
            err = to_gateway_error(exc)
            if not isinstance(exc, GatewayError):
                log.error("unhandled error", exc_info=exc, extra={"path": scope["path"]})
            response = error_response(err)
        await response(scope, receive, send)
