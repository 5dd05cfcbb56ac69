"""Runs the gateway app on uvicorn (uvloop + httptools) with graceful shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator

import uvicorn
from fastapi import FastAPI

from gateway.app import create_app
from gateway.settings import GatewaySettings

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        with super().capture_signals():
            yield
            # uvicorn re-raises the caught signal after shutdown; a graceful stop should exit 0.
            self._captured_signals.clear()


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


async def serve(settings: GatewaySettings, app: FastAPI | None = None) -> None:
    """Serves until SIGTERM/SIGINT, then lets in-flight requests finish (bounded)."""
    sock = bind_socket(settings.listen_host, settings.listen_port)
    config = uvicorn.Config(
        app or create_app(settings),
        loop="none",
        http="httptools",
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=max(1, int(settings.graceful_timeout_s)),
        server_header=False,
    )
    server = _Server(config)
    host, port = sock.getsockname()[:2]
    log.info(
        "gateway listening",
        extra={
            "address": f"{host}:{port}",
            "controller": settings.controller,
            "gateway_id": settings.gateway_id,
        },
    )
    try:
        await server.serve(sockets=[sock])
    finally:
        sock.close()


def run(settings: GatewaySettings) -> int:
    try:
        import uvloop
    except ImportError:  # Windows: uvloop does not exist there
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))
    return 0
