"""Hot-path responses: raw ASGI headers built directly, without Starlette's header handling."""

from __future__ import annotations

from starlette.responses import Response


class RawResponse(Response):
    """A complete body with a status and a content type, plus optional extra headers.

    Starlette's Response.__init__ normalises and re-encodes headers on every request; this one
    writes the ASGI header list once. Sending is Starlette's own Response.__call__."""

    def __init__(
        self,
        body: bytes,
        status: int,
        content_type: bytes,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.body = body
        self.status_code = status
        self.background = None
        headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
        ]
        if extra:
            headers.extend(extra)
        self.raw_headers = headers
