"""Misbehaving members for the chaos suite: one HTTP server whose behaviour a test switches
(answer, hang, 429 with Retry-After, 500), recording when each request arrived."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeMember:
    """key: when set, a request without `Authorization: Bearer <key>` gets the provider's 401
    (as a keyed remote API would); every request's headers are kept."""

    def __init__(self, key: str | None = None) -> None:
        self.key = key
        self.headers: list[dict[str, str]] = []
        self.mode = "ok"
        self.reply = "fake"
        # echo: answer with the last message's content (what arrived, redacted or not).
        self.echo = False
        self.bodies: list[Any] = []
        self.retry_after_s = 5
        self.arrivals: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        member = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                mode = member.mode
                with member._lock:
                    member.arrivals.append((time.monotonic(), mode))
                    member.headers.append({k.lower(): v for k, v in self.headers.items()})
                    member.bodies.append(body)
                if member.key and self.headers.get("authorization") != f"Bearer {member.key}":
                    self._answer(401, {"error": {"message": "Incorrect API key provided"}})
                    return
                if mode == "hang":
                    # Accepts and never answers (until the suite ends).
                    member._release.wait(120)
                    return
                if mode == "429":
                    self._answer(429, {"error": {"message": "slow down"}},
                                 {"Retry-After": str(member.retry_after_s)})  # fmt: skip
                    return
                if mode == "500":
                    self._answer(500, {"error": {"message": "broken"}})
                    return
                reply = member.reply
                if member.echo and body.get("messages"):
                    reply = str(body["messages"][-1].get("content", ""))
                if body.get("stream"):
                    self._stream(body, reply)
                    return
                self._answer(200, {
                    "id": "fake", "object": "chat.completion", "created": 1,
                    "model": body.get("model", ""),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": reply}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                })  # fmt: skip

            def _answer(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, body: Any, reply: str) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("connection", "close")
                self.end_headers()
                # The reply in pieces of 3 characters, as tokens come.
                pieces = [reply[i : i + 3] for i in range(0, len(reply), 3)] or [""]
                deltas = [({"content": p}, None) for p in pieces] + [({}, "stop")]
                for delta, finish in deltas:
                    chunk = {
                        "id": "fake", "object": "chat.completion.chunk", "created": 1,
                        "model": body.get("model", ""),
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                    }  # fmt: skip
                    self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                self.wfile.write(b"data: [DONE]\n\n")
                self.close_connection = True

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def arrived(self, since: float, mode: str | None = None) -> list[float]:
        with self._lock:
            return [t for t, m in self.arrivals if t >= since and (mode is None or m == mode)]

    def close(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
