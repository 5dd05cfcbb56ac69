"""The gateway's listen socket: bound once (by the only process, or by the workers' parent)."""

from __future__ import annotations

import logging
import socket

from gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

# Pending connections the kernel holds while workers are busy (capped by net.core.somaxconn).
LISTEN_BACKLOG = 4096


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock


def announce(settings: GatewaySettings, sock: socket.socket) -> None:
    """The one "gateway listening" line, with the address actually bound."""
    host, port = sock.getsockname()[:2]
    log.info(
        "gateway listening",
        extra={
            "address": f"{host}:{port}",
            "controller": settings.controller,
            "gateway_id": settings.gateway_id,
            "workers": settings.workers,
            "scheme": "https" if settings.https_cert else "http",
            "controller_tls": "mutual" if settings.controller_tls is not None else "off",
        },
    )
