"""Runs the gateway app on uvicorn (uvloop + httptools) with graceful shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
from collections.abc import Generator

import uvicorn

from gateway.app import create_app
from gateway.asgi import GatewayASGI
from gateway.connections import ConnectionLimits, bounded_protocol, raise_open_files_limit
from gateway.listen import LISTEN_BACKLOG, announce, bind_socket
from gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

# Idle client connections stay open this long: longer than the usual load balancer idle
# timeout (60 s), so the balancer closes first and never sends on a connection we just closed.
KEEP_ALIVE_S = 65


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        with super().capture_signals():
            yield
            # uvicorn re-raises the caught signal after shutdown; a graceful stop should exit 0.
            self._captured_signals.clear()


def uvicorn_config(settings: GatewaySettings, app: GatewayASGI) -> uvicorn.Config:
    limits = ConnectionLimits(
        max_header_bytes=settings.max_header_bytes,
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        max_connections=settings.max_connections,
    )
    return uvicorn.Config(
        app,
        loop="none",
        http=bounded_protocol(limits),
        ws="none",
        lifespan="on",
        log_config=None,
        access_log=False,
        # Nothing in front of us sets X-Forwarded-*; skip uvicorn's per-request middleware.
        proxy_headers=False,
        server_header=False,
        timeout_keep_alive=KEEP_ALIVE_S,
        backlog=LISTEN_BACKLOG,
        timeout_graceful_shutdown=max(1, int(settings.graceful_timeout_s)),
        ssl_certfile=settings.https_cert or None,
        ssl_keyfile=settings.https_key or None,
    )


async def serve(
    settings: GatewaySettings,
    app: GatewayASGI | None = None,
    *,
    sock: socket.socket | None = None,
) -> None:
    """Serves until SIGTERM/SIGINT, then lets in-flight requests finish (bounded).

    With `sock` (a worker of several) the socket is the parent's, which also announced it."""
    # Each connection is a file: the usual soft limit (1024) would refuse them long before
    # max_connections.
    raise_open_files_limit(settings.max_connections + 1024)
    own = sock is None
    if sock is None:
        sock = bind_socket(settings.listen_host, settings.listen_port)
        announce(settings, sock)
    server = _Server(uvicorn_config(settings, app or create_app(settings)))
    # Everything built so far lives as long as the process: keep it out of every GC pass.
    gc.freeze()
    try:
        await server.serve(sockets=[sock])
    finally:
        if own:
            sock.close()


def run_loop(settings: GatewaySettings, sock: socket.socket | None = None) -> None:
    try:
        import uvloop
    except ImportError:  # Windows: uvloop does not exist there
        asyncio.run(serve(settings, sock=sock))
    else:
        uvloop.run(serve(settings, sock=sock))


def run(settings: GatewaySettings) -> int:
    """Serves in this process; `--workers N` > 1 goes through gateway.workers instead."""
    run_loop(settings)
    return 0
