"""Every /v1 error is OpenAI-shaped JSON with the right status, and the gateway keeps serving."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from gateway.app import parts_of

CHAT_URL = "/v1/chat/completions"


@pytest.fixture
async def gw(kit: Any, engines: Any, controller: Any, gateway_factory: Any) -> Any:
    e1 = await engines("e1")
    controller.full = kit.snapshot(1, [kit.route("m1", [kit.member("a", e1.url)])])
    server = await gateway_factory(f"127.0.0.1:{controller.port}", max_body_bytes=1000)
    await kit.wait_until(lambda: parts_of(server.app).table.received, what="first snapshot")
    return server


def assert_error(
    resp: httpx.Response, status: int, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    err: dict[str, Any] = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if code is not None:
        assert err["code"] == code
    assert err["param"] == param
    return err


JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        (CHAT_URL, b"{not json", 400, None),
        (CHAT_URL, b"[1, 2]", 400, None),
        (CHAT_URL, b'{"messages": [{"role": "user", "content": "x"}]}', 400, "model"),
        (CHAT_URL, b'{"model": 5, "messages": []}', 400, "model"),
        (CHAT_URL, b'{"model": "m1"}', 400, "messages"),
        (CHAT_URL, b'{"model": "m1", "messages": "hi"}', 400, "messages"),
        (
            CHAT_URL,
            b'{"model": "m1", "messages": [{"role":"user"}], "stream": "yes"}',
            400,
            "stream",
        ),
        ("/v1/completions", b'{"model": "m1"}', 400, "prompt"),
        ("/v1/completions", b'{"model": "m1", "prompt": 3}', 400, "prompt"),
        ("/v1/embeddings", b'{"model": "m1", "input": {"a": 1}}', 400, "input"),
    ],
)
async def test_bad_requests(
    gw: Any, http: httpx.AsyncClient, path: str, body: bytes, status: int, param: str | None
) -> None:
    resp = await http.post(gw.url + path, content=body, headers=JSON)
    assert_error(resp, status, param=param)


async def test_unknown_model_404(gw: Any, http: httpx.AsyncClient, kit: Any) -> None:
    resp = await http.post(
        gw.url + CHAT_URL, json={"model": "nope", "messages": [{"role": "user"}]}
    )
    err = assert_error(resp, 404, "model_not_found", param="model")
    assert "nope" in err["message"]
    page = (await http.get(gw.url + "/metrics")).text
    # Unknown names never become label values.
    assert 'model="nope"' not in page
    assert (
        kit.metric(
            page, "llmpool_gateway_requests_total", model="unknown", backend="none", status="404"
        )
        == 1
    )


async def test_body_limits_413(gw: Any, http: httpx.AsyncClient) -> None:
    big = b'{"model": "m1", "messages": [{"role": "user", "content": "' + b"x" * 2000 + b'"}]}'
    resp = await http.post(gw.url + CHAT_URL, content=big, headers=JSON)
    assert_error(resp, 413, "request_too_large")

    async def chunked() -> Any:  # No Content-Length: the limit is counted while reading.
        for i in range(0, len(big), 100):
            yield big[i : i + 100]

    resp = await http.post(gw.url + CHAT_URL, content=chunked(), headers=JSON)
    assert "content-length" not in resp.request.headers
    assert_error(resp, 413, "request_too_large")


async def test_wrong_content_type_415(gw: Any, http: httpx.AsyncClient) -> None:
    resp = await http.post(
        gw.url + CHAT_URL,
        content=b"model=m1",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert_error(resp, 415, "unsupported_media_type")
    ok = await http.post(
        gw.url + CHAT_URL,
        content=b'{"model":"m1","messages":[{"role":"user"}]}',
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert ok.status_code == 200


async def test_unknown_path_404_and_wrong_method_405(gw: Any, http: httpx.AsyncClient) -> None:
    assert_error(await http.post(gw.url + "/v1/nope", json={}), 404, "not_found")
    resp = await http.get(gw.url + CHAT_URL)
    assert_error(resp, 405, "method_not_allowed")
    assert "POST" in resp.headers["allow"]
    # Nothing above broke the process.
    assert (await http.get(gw.url + "/healthz")).status_code == 200
