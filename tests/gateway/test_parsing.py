"""Request parsing, body limits and the single exception-to-error mapping."""

from __future__ import annotations

import orjson
import pytest
from starlette.exceptions import HTTPException

from gateway.errors import (
    BadRequestError,
    GatewayError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
    error_body,
    to_gateway_error,
)
from gateway.parsing import Endpoint, check_headers, parse_request
from llmpool.errors import InvalidArgumentError, NotFoundError, UnavailableError


def test_parse_keeps_original_bytes() -> None:
    body = b'{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true,"zzz":1}'
    req = parse_request(Endpoint.CHAT, body)
    assert (req.model, req.stream) == ("m", True)
    assert req.body_for(None) is body and req.body_for("m") is body
    rewritten = orjson.loads(req.body_for("other"))
    assert rewritten["model"] == "other" and rewritten["zzz"] == 1 and rewritten["stream"] is True


def test_embeddings_never_stream_and_null_stream_is_false() -> None:
    assert not parse_request(Endpoint.EMBEDDINGS, b'{"model":"m","input":"x","stream":true}').stream
    assert not parse_request(
        Endpoint.COMPLETIONS, b'{"model":"m","prompt":["a"],"stream":null}'
    ).stream


@pytest.mark.parametrize(
    ("endpoint", "body", "param"),
    [
        (Endpoint.CHAT, b"nope", None),
        (Endpoint.CHAT, b'"str"', None),
        (Endpoint.CHAT, b'{"model":"","messages":[1]}', "model"),
        (Endpoint.CHAT, b'{"model":"m","messages":[]}', "messages"),
        (Endpoint.COMPLETIONS, b'{"model":"m","prompt":null}', "prompt"),
        (Endpoint.EMBEDDINGS, b'{"model":"m"}', "input"),
        (Endpoint.CHAT, b'{"model":"m","messages":[1],"stream":1}', "stream"),
    ],
)
def test_parse_errors_name_the_param(endpoint: Endpoint, body: bytes, param: str | None) -> None:
    with pytest.raises(BadRequestError) as info:
        parse_request(endpoint, body)
    assert info.value.status == 400 and info.value.param == param


def test_check_headers() -> None:
    check_headers({"content-type": "application/json; charset=utf-8", "content-length": "10"}, 10)
    with pytest.raises(UnsupportedMediaTypeError):
        check_headers({"content-type": "text/plain"}, 10)
    with pytest.raises(UnsupportedMediaTypeError):
        check_headers({}, 10)
    with pytest.raises(PayloadTooLargeError):
        check_headers({"content-type": "application/json", "content-length": "11"}, 10)
    with pytest.raises(BadRequestError):
        check_headers({"content-type": "application/json", "content-length": "ten"}, 10)


def test_error_mapping() -> None:
    assert to_gateway_error(HTTPException(404)).status == 404
    mapped = to_gateway_error(HTTPException(405, headers={"Allow": "POST"}))
    assert mapped.status == 405 and mapped.headers["Allow"] == "POST"
    assert to_gateway_error(NotFoundError("x")).status == 404
    assert to_gateway_error(InvalidArgumentError("x")).status == 400
    unavailable = to_gateway_error(UnavailableError("x"))
    assert unavailable.status == 503 and unavailable.headers["Retry-After"] == "1"
    internal = to_gateway_error(RuntimeError("secret detail"))
    assert internal.status == 500 and "secret" not in internal.message
    doc = orjson.loads(error_body(BadRequestError("bad", param="model")))
    assert doc == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": "model", "code": None}
    }
    assert isinstance(mapped, GatewayError)
