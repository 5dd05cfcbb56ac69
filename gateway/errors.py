"""OpenAI-shaped gateway errors and the one place that turns exceptions into error responses."""

from __future__ import annotations

import logging

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from llmpool.errors import InvalidArgumentError, NotFoundError, UnavailableError

log = logging.getLogger(__name__)


class GatewayError(Exception):
    """An error the client sees as {"error": {"message", "type", "param", "code"}}."""

    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}


class BadRequestError(GatewayError):
    status = 400
    type = "invalid_request_error"


class AuthenticationError(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"
    # How long the answer waits: repeated failures from one address are slowed (gateway/keys.py).
    delay_s = 0.0


class ModelNotFoundError(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class PathNotFoundError(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowedError(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLargeError(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UnsupportedMediaTypeError(GatewayError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class NoHealthyMemberError(GatewayError):
    status = 503
    type = "service_unavailable"
    code = "no_healthy_backend"


class NotReadyError(GatewayError):
    status = 503
    type = "service_unavailable"
    code = "not_ready"


class RateLimitedError(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limited"


class QuotaExceededError(GatewayError):
    """A key or tenant past its budget: 429 as OpenAI sends it for an exhausted quota."""

    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


class ShuttingDownError(GatewayError):
    status = 503
    type = "service_unavailable"
    code = "shutting_down"


class UpstreamError(GatewayError):
    status = 502
    type = "upstream_error"
    code = "upstream_failed"


def error_body(exc: GatewayError) -> bytes:
    return orjson.dumps(
        {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}
    )


# The Messages API's error types by status, for Anthropic clients (/v1/messages).
ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def anthropic_error_body(status: int, message: str) -> bytes:
    kind = ANTHROPIC_ERROR_TYPES.get(status, "api_error")
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message[:2000]}})


def sse_error_event(exc: GatewayError) -> bytes:
    """A stream's in-band error, as OpenAI sends it."""
    return b"data: " + error_body(exc) + b"\n\n"


def anthropic_error_event(exc: GatewayError) -> bytes:
    """A stream's in-band error, as the Messages API sends it."""
    return b"event: error\ndata: " + anthropic_error_body(exc.status, exc.message) + b"\n\n"


def anthropic_error_response(exc: GatewayError) -> Response:
    return Response(
        anthropic_error_body(exc.status, exc.message),
        status_code=exc.status,
        headers=exc.headers,
        media_type="application/json",
    )


def error_response(exc: GatewayError) -> Response:
    return Response(
        error_body(exc),
        status_code=exc.status,
        headers=exc.headers,
        media_type="application/json",
    )


def to_gateway_error(exc: Exception) -> GatewayError:
    """Maps any exception to the error the client sees; the single mapping for the gateway."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, HTTPException):
        if exc.status_code == 404:
            return PathNotFoundError("Unknown path; the OpenAI API is served under /v1.")
        if exc.status_code == 405:
            allow = (exc.headers or {}).get("Allow") or (exc.headers or {}).get("allow", "")
            err = MethodNotAllowedError(f"Method not allowed here; allowed: {allow or 'none'}.")
            if allow:
                err.headers["Allow"] = allow
            return err
        generic = GatewayError(str(exc.detail))
        generic.status = exc.status_code
        generic.type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return generic
    if isinstance(exc, NotFoundError):
        return ModelNotFoundError(str(exc))
    if isinstance(exc, InvalidArgumentError):
        return BadRequestError(str(exc))
    if isinstance(exc, UnavailableError):
        return NoHealthyMemberError(str(exc), headers={"Retry-After": "1"})
    return GatewayError("Internal error in the gateway; see its logs.", code="internal_error")


async def handle_exception(request: Request, exc: Exception) -> Response:
    """Starlette exception handler: every error leaves as OpenAI-shaped JSON."""
    err = to_gateway_error(exc)
    if err.status >= 500 and not isinstance(exc, GatewayError):
        log.error("unhandled error", exc_info=exc, extra={"path": request.url.path})
    return error_response(err)
