"""Runs the gateway app on uvicorn (uvloop + httptools) with graceful shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import time
from collections.abc import Generator
from types import FrameType

import uvicorn

from gateway.app import ServingState, create_app, parts_of
from gateway.asgi import GatewayASGI
from gateway.connections import (
    SHUTTING_DOWN,
    ConnectionLimits,
    bounded_protocol,
    cancel_request,
    raise_open_files_limit,
)
from gateway.listen import LISTEN_BACKLOG, announce, bind_socket
from gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

# Idle client connections stay open this long: longer than the usual load balancer idle
# timeout (60 s), so the balancer closes first and never sends on a connection we just closed.
KEEP_ALIVE_S = 65


# What is still open this long before the graceful timeout ends is ended by us, with an answer
# (503, or an error event in a stream), rather than cancelled by uvicorn with none.
END_MARGIN_S = 1.0


class _Server(uvicorn.Server):
    """uvicorn's server with the gateway's shutdown: on SIGTERM, not ready at once while still
    serving for drain_delay_s; then the listener closes and requests get the graceful timeout;
    what is left at its end is answered with an error, never cut."""

    def __init__(self, config: uvicorn.Config, serving: ServingState, drain_delay_s: float) -> None:
        super().__init__(config)
        self._serving = serving
        self._drain_delay_s = drain_delay_s
        self._drain_asked_at: float | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        with super().capture_signals():
            yield
            # uvicorn re-raises the caught signal after shutdown; a graceful stop should exit 0.
            self._captured_signals.clear()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: only flags here; the main loop's tick acts on them.
        if sig == signal.SIGTERM and self._drain_delay_s > 0 and self._drain_asked_at is None:
            self._drain_asked_at = time.monotonic()
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._drain_asked_at is not None:
            if not self._serving.draining:
                self._serving.draining = True
                log.info(
                    "draining: not ready, still serving",
                    extra={"drain_delay_s": self._drain_delay_s},
                )
            if time.monotonic() - self._drain_asked_at >= self._drain_delay_s:
                return True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._serving.draining = True
        ending = asyncio.get_running_loop().call_later(
            max(0.0, (self.config.timeout_graceful_shutdown or 0) - END_MARGIN_S), self._end_open
        )
        try:
            await super().shutdown(sockets)
        finally:
            ending.cancel()

    def _end_open(self) -> None:
        ended = sum(cancel_request(c, SHUTTING_DOWN) for c in list(self.server_state.connections))
        if ended:
            log.warning(
                "graceful timeout: ending open requests with an error", extra={"count": ended}
            )


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
    app = app or create_app(settings)
    server = _Server(uvicorn_config(settings, app), parts_of(app).serving, settings.drain_delay_s)
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
