"""Gateway settings: flags, each with an environment variable, into one typed object."""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from llmpool.addr import split_host_port

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    listen_host: str = "127.0.0.1"
    listen_port: int = 8000
    controller: str = "127.0.0.1:50051"
    gateway_id: str = ""
    max_body_bytes: int = 10 * MIB
    upstream_connect_timeout_s: float = 5.0
    upstream_timeout_s: float = 600.0
    upstream_max_connections: int = 1024
    usage_interval_s: float = 1.0
    graceful_timeout_s: float = 30.0
    log_level: str = "info"
    log_json: bool = False

    @property
    def listen(self) -> str:
        return f"{self.listen_host}:{self.listen_port}"


def default_gateway_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    def e(name: str, default: str) -> str:
        return env.get(name, default)

    p = argparse.ArgumentParser(
        prog="llm-pool gateway",
        description="OpenAI-compatible HTTP gateway; takes routing from the controller.",
    )
    p.add_argument(
        "--listen",
        default=e("LLMPOOL_GATEWAY_LISTEN", "127.0.0.1:8000"),
        help="HTTP host:port (env LLMPOOL_GATEWAY_LISTEN; default %(default)s)",
    )
    p.add_argument(
        "--controller",
        default=e("LLMPOOL_CONTROLLER_ADDR", "127.0.0.1:50051"),
        help="controller gRPC host:port (env LLMPOOL_CONTROLLER_ADDR; default %(default)s)",
    )
    p.add_argument(
        "--gateway-id",
        default=e("LLMPOOL_GATEWAY_ID", ""),
        help="id reported to the controller (env LLMPOOL_GATEWAY_ID; default hostname-pid)",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=e("LLMPOOL_GATEWAY_MAX_BODY_BYTES", str(10 * MIB)),
        help="largest request body accepted (env LLMPOOL_GATEWAY_MAX_BODY_BYTES; default 10 MiB)",
    )
    p.add_argument(
        "--upstream-connect-timeout-s",
        type=float,
        default=e("LLMPOOL_GATEWAY_UPSTREAM_CONNECT_TIMEOUT_S", "5"),
        help="connect timeout to a member (env LLMPOOL_GATEWAY_UPSTREAM_CONNECT_TIMEOUT_S; "
        "default %(default)s)",
    )
    p.add_argument(
        "--upstream-timeout-s",
        type=float,
        default=e("LLMPOOL_GATEWAY_UPSTREAM_TIMEOUT_S", "600"),
        help="longest wait for upstream bytes (env LLMPOOL_GATEWAY_UPSTREAM_TIMEOUT_S; "
        "default %(default)s)",
    )
    p.add_argument(
        "--upstream-max-connections",
        type=int,
        default=e("LLMPOOL_GATEWAY_UPSTREAM_MAX_CONNECTIONS", "1024"),
        help="upstream connection pool size (env LLMPOOL_GATEWAY_UPSTREAM_MAX_CONNECTIONS; "
        "default %(default)s)",
    )
    p.add_argument(
        "--usage-interval-s",
        type=float,
        default=e("LLMPOOL_GATEWAY_USAGE_INTERVAL_S", "1.0"),
        help="usage report period (env LLMPOOL_GATEWAY_USAGE_INTERVAL_S; default %(default)s)",
    )
    p.add_argument(
        "--graceful-timeout-s",
        type=float,
        default=e("LLMPOOL_GATEWAY_GRACEFUL_TIMEOUT_S", "30"),
        help="how long in-flight requests may finish on shutdown "
        "(env LLMPOOL_GATEWAY_GRACEFUL_TIMEOUT_S; default %(default)s)",
    )
    p.add_argument(
        "--log-level",
        default=e("LLMPOOL_LOG_LEVEL", "info").lower(),
        choices=["debug", "info", "warning", "error"],
        help="(env LLMPOOL_LOG_LEVEL; default %(default)s)",
    )
    p.add_argument(
        "--log-json",
        action="store_true",
        default=e("LLMPOOL_LOG_FORMAT", "").lower() == "json",
        help="JSON log lines (env LLMPOOL_LOG_FORMAT=json)",
    )
    return p


def parse_settings(argv: list[str], env: Mapping[str, str] | None = None) -> GatewaySettings:
    """Flags override environment variables; bad values exit with argparse's usage message."""
    environ = os.environ if env is None else env
    parser = build_parser(environ)
    # String defaults from the environment go through each flag's type, so bad values fail here.
    args = parser.parse_args(argv)
    try:
        host, port = split_host_port(args.listen)
        split_host_port(args.controller)
    except ValueError as exc:
        parser.error(str(exc))
    if args.max_body_bytes <= 0:
        parser.error("--max-body-bytes must be positive")
    if args.usage_interval_s <= 0:
        parser.error("--usage-interval-s must be positive")
    return GatewaySettings(
        listen_host=host,
        listen_port=port,
        controller=args.controller,
        gateway_id=args.gateway_id or default_gateway_id(),
        max_body_bytes=args.max_body_bytes,
        upstream_connect_timeout_s=args.upstream_connect_timeout_s,
        upstream_timeout_s=args.upstream_timeout_s,
        upstream_max_connections=args.upstream_max_connections,
        usage_interval_s=args.usage_interval_s,
        graceful_timeout_s=args.graceful_timeout_s,
        log_level=args.log_level,
        log_json=args.log_json,
    )
