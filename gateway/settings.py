"""Gateway settings: flags, each with an environment variable, into one typed object."""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.policies import PolicyPluginError, PolicyRegistry
from gateway.upstream import DEFAULT_UPSTREAM_CLIENT, UPSTREAM_CLIENTS
from llmpool.addr import split_host_port
from llmpool.cliargs import add_logging_options, env_help, env_option
from llmpool.tls import TlsFiles, add_tls_options, is_loopback, tls_from_args

MIB = 1024 * 1024
POLICY_PLUGINS_VAR = "LLMPOOL_GATEWAY_POLICY_PLUGINS"


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    listen_host: str = "127.0.0.1"
    listen_port: int = 8000
    controller: str = "127.0.0.1:50051"
    gateway_id: str = ""
    max_body_bytes: int = 10 * MIB
    # A non-streaming upstream answer larger than this is a failed try (502), not buffered.
    max_upstream_body_bytes: int = 64 * MIB
    max_header_bytes: int = 64 * 1024
    header_timeout_s: float = 15.0
    body_timeout_s: float = 30.0
    max_connections: int = 10_000
    upstream_connect_timeout_s: float = 5.0
    upstream_timeout_s: float = 600.0
    upstream_max_connections: int = 1024
    upstream_client: str = DEFAULT_UPSTREAM_CLIENT
    workers: int = 1
    usage_interval_s: float = 1.0
    graceful_timeout_s: float = 30.0
    # On SIGTERM: seconds of "not ready" while still accepting, before the listener closes.
    drain_delay_s: float = 5.0
    # A file per credential (API keys of remote backends), re-read when it changes.
    secrets_dir: str = ""
    # This gateway's zone: pools with prefer_zone pick members here first.
    zone: str = ""
    # Requests held at once for pools with no member yet (scaled to zero); more get 503.
    max_held_requests: int = 1000
    # Client API keys: "keys" (required), "auto" (required once any exists; loopback only),
    # "none" (never; loopback only unless --insecure-allow-remote).
    auth: str = "auto"
    # Requests in flight per member past which requests queue fairly (0: pools' own or none).
    queue_per_member: int = 0
    log_level: str = "info"
    log_json: bool = False
    # MODULE:CLASS or NAME=MODULE:CLASS routing policies to load besides the entry points.
    policy_plugins: tuple[str, ...] = ()
    # Mutual TLS to the controller; None: plaintext (the CLI needs --insecure for it).
    controller_tls: TlsFiles | None = None
    # HTTPS for clients when both are set (PEM files); plain HTTP otherwise.
    https_cert: str = ""
    https_key: str = ""

    @property
    def listen(self) -> str:
        return f"{self.listen_host}:{self.listen_port}"


def default_gateway_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llm-pool gateway",
        description="OpenAI-compatible HTTP gateway; takes routing from the controller.",
    )
    env_option(p, "--listen", env, "LLMPOOL_GATEWAY_LISTEN", "127.0.0.1:8000", "HTTP host:port")
    env_option(
        p,
        "--controller",
        env,
        "LLMPOOL_CONTROLLER_ADDR",
        "127.0.0.1:50051",
        "controller gRPC host:port",
    )
    env_option(
        p,
        "--gateway-id",
        env,
        "LLMPOOL_GATEWAY_ID",
        "",
        "id reported to the controller",
        shown="hostname-pid",
    )
    env_option(
        p,
        "--max-body-bytes",
        env,
        "LLMPOOL_GATEWAY_MAX_BODY_BYTES",
        10 * MIB,
        "largest request body accepted",
        type=int,
        shown=f"{10 * MIB} (10 MiB)",
    )
    env_option(
        p,
        "--max-upstream-body-bytes",
        env,
        "LLMPOOL_GATEWAY_MAX_UPSTREAM_BODY_BYTES",
        64 * MIB,
        "largest non-streaming answer taken from a member; a larger one fails the try (502)",
        type=int,
        shown=f"{64 * MIB} (64 MiB)",
    )
    env_option(
        p,
        "--max-header-bytes",
        env,
        "LLMPOOL_GATEWAY_MAX_HEADER_BYTES",
        64 * 1024,
        "largest request line plus headers (431 beyond)",
        type=int,
    )
    env_option(
        p,
        "--header-timeout-s",
        env,
        "LLMPOOL_GATEWAY_HEADER_TIMEOUT_S",
        15.0,
        "a request's headers must arrive within this long of its first byte (idle connections "
        "that send nothing are closed after it too)",
        type=float,
    )
    env_option(
        p,
        "--body-timeout-s",
        env,
        "LLMPOOL_GATEWAY_BODY_TIMEOUT_S",
        30.0,
        "longest pause while a request body arrives",
        type=float,
    )
    env_option(
        p,
        "--max-connections",
        env,
        "LLMPOOL_GATEWAY_MAX_CONNECTIONS",
        10_000,
        "client connections open at once per process; more are closed at once",
        type=int,
    )
    env_option(
        p,
        "--upstream-connect-timeout-s",
        env,
        "LLMPOOL_GATEWAY_UPSTREAM_CONNECT_TIMEOUT_S",
        5.0,
        "connect timeout to a member",
        type=float,
    )
    env_option(
        p,
        "--upstream-timeout-s",
        env,
        "LLMPOOL_GATEWAY_UPSTREAM_TIMEOUT_S",
        600.0,
        "longest wait for upstream bytes",
        type=float,
    )
    env_option(
        p,
        "--upstream-max-connections",
        env,
        "LLMPOOL_GATEWAY_UPSTREAM_MAX_CONNECTIONS",
        1024,
        "upstream connection pool size",
        type=int,
    )
    env_option(
        p,
        "--upstream-client",
        env,
        "LLMPOOL_GATEWAY_UPSTREAM_CLIENT",
        DEFAULT_UPSTREAM_CLIENT,
        "HTTP client library for upstream requests (aiohttp is faster; httpx for comparison)",
        choices=UPSTREAM_CLIENTS,
    )
    env_option(
        p,
        "--workers",
        env,
        "LLMPOOL_GATEWAY_WORKERS",
        1,
        "worker processes serving the same listen socket",
        type=int,
    )
    env_option(
        p,
        "--usage-interval-s",
        env,
        "LLMPOOL_GATEWAY_USAGE_INTERVAL_S",
        1.0,
        "usage report period",
        type=float,
    )
    env_option(
        p,
        "--graceful-timeout-s",
        env,
        "LLMPOOL_GATEWAY_GRACEFUL_TIMEOUT_S",
        30.0,
        "how long in-flight requests may finish on shutdown",
        type=float,
    )
    env_option(
        p,
        "--drain-delay-s",
        env,
        "LLMPOOL_GATEWAY_DRAIN_DELAY_S",
        5.0,
        "on SIGTERM, /readyz answers 503 at once but new requests are still served this long, "
        "so load balancers move away before the listener closes (SIGINT skips it)",
        type=float,
    )
    env_option(
        p,
        "--zone",
        env,
        "LLMPOOL_GATEWAY_ZONE",
        "",
        "this gateway's zone (as agents' zone label and backends' zone): pools with prefer_zone "
        "send its requests to members in this zone first",
    )
    env_option(
        p,
        "--secrets-dir",
        env,
        "LLMPOOL_GATEWAY_SECRETS_DIR",
        "",
        "directory with a file per credential that backends name (the file's name is the "
        "credential's, its content the key), re-read when it changes; credentials are also "
        "read from LLMPOOL_CREDENTIAL_<NAME> variables",
    )
    env_option(
        p,
        "--max-held-requests",
        env,
        "LLMPOOL_GATEWAY_MAX_HELD_REQUESTS",
        1000,
        "requests held at once while a pool scaled to zero starts its first replica (each "
        "waits up to the pool's autoscale.cold_start_timeout_s); more are answered 503",
        type=int,
    )
    env_option(
        p,
        "--auth",
        env,
        "LLMPOOL_GATEWAY_AUTH",
        "auto",
        "client API keys: keys (every request needs one), auto (needed once any key exists; "
        "on a non-loopback address it means keys), none (never: refused on a non-loopback "
        "address without --insecure-allow-remote)",
        choices=("keys", "auto", "none"),
    )
    env_option(
        p,
        "--queue-per-member",
        env,
        "LLMPOOL_GATEWAY_QUEUE_PER_MEMBER",
        0,
        "requests in flight per healthy member of a pool past which more wait in a fair queue "
        "(higher-priority keys first, tenants in turn); 0: only pools that set "
        "max_in_flight_per_member queue",
        type=int,
    )
    p.add_argument(
        "--policy-plugin",
        action="append",
        default=None,
        metavar="[NAME=]MODULE:CLASS",
        help=env_help(
            "routing policy class to load (repeatable; the flags replace the variable's list)",
            POLICY_PLUGINS_VAR,
            "comma-separated; default: none",
        ),
    )
    env_option(
        p,
        "--https-cert",
        env,
        "LLMPOOL_GATEWAY_HTTPS_CERT",
        "",
        "PEM certificate (chain) to serve HTTPS with; needs --https-key",
    )
    env_option(p, "--https-key", env, "LLMPOOL_GATEWAY_HTTPS_KEY", "", "PEM private key for HTTPS")
    add_tls_options(p, env, role="gateway", what="the controller connection")
    add_logging_options(p, env)
    return p


def parse_settings(argv: list[str], env: Mapping[str, str] | None = None) -> GatewaySettings:
    """Flags override environment variables; bad values exit with argparse's usage message."""
    environ = os.environ if env is None else env
    parser = build_parser(environ)
    # Values from the environment went through each flag's type in build_parser: bad ones exit 2.
    args = parser.parse_args(argv)
    try:
        host, port = split_host_port(args.listen)
        split_host_port(args.controller)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        controller_tls = tls_from_args(args, role="gateway", address=args.controller)
    except ValueError as exc:
        parser.error(f"--controller: {exc}")
    if bool(args.https_cert) != bool(args.https_key):
        parser.error("--https-cert and --https-key go together")
    for path in (args.https_cert, args.https_key):
        if path and not os.path.isfile(path):
            parser.error(f"{path}: no such file (HTTPS certificate or key)")
    for flag in (
        "max_body_bytes",
        "max_upstream_body_bytes",
        "max_header_bytes",
        "max_connections",
    ):
        if getattr(args, flag) <= 0:
            parser.error(f"--{flag.replace('_', '-')} must be positive")
    for flag in (
        "header_timeout_s",
        "body_timeout_s",
        "upstream_connect_timeout_s",
        "upstream_timeout_s",
    ):
        value = getattr(args, flag)
        if not 0 < value < float("inf"):
            parser.error(f"--{flag.replace('_', '-')} must be a positive number")
    if len(args.zone) > 64:
        parser.error("--zone is longer than 64 characters")
    if args.secrets_dir and not os.path.isdir(args.secrets_dir):
        parser.error(f"--secrets-dir {args.secrets_dir}: no such directory")
    if args.max_held_requests < 0:
        parser.error("--max-held-requests must be 0 (hold none) or more")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.queue_per_member < 0:
        parser.error("--queue-per-member must be 0 (pools decide) or more")
    auth = args.auth
    if not is_loopback(host):
        if auth == "none" and not args.insecure_allow_remote:
            parser.error(
                f"--auth none on {host}, beyond loopback, lets anyone on the network use every "
                "pool; create API keys (CreateApiKey), or add --insecure-allow-remote"
            )
        if auth == "auto":
            auth = "keys"
    if args.usage_interval_s <= 0:
        parser.error("--usage-interval-s must be positive")
    plugins = tuple(
        args.policy_plugin
        if args.policy_plugin is not None
        else (s.strip() for s in environ.get(POLICY_PLUGINS_VAR, "").split(",") if s.strip())
    )
    try:
        # Load them now: a broken plugin stops start-up with its name, not the first request.
        PolicyRegistry.load(plugins)
    except PolicyPluginError as exc:
        parser.error(str(exc))
    return GatewaySettings(
        listen_host=host,
        listen_port=port,
        controller=args.controller,
        gateway_id=args.gateway_id or default_gateway_id(),
        max_body_bytes=args.max_body_bytes,
        max_upstream_body_bytes=args.max_upstream_body_bytes,
        max_header_bytes=args.max_header_bytes,
        header_timeout_s=args.header_timeout_s,
        body_timeout_s=args.body_timeout_s,
        max_connections=args.max_connections,
        upstream_connect_timeout_s=args.upstream_connect_timeout_s,
        upstream_timeout_s=args.upstream_timeout_s,
        upstream_max_connections=args.upstream_max_connections,
        upstream_client=args.upstream_client,
        workers=args.workers,
        usage_interval_s=args.usage_interval_s,
        graceful_timeout_s=args.graceful_timeout_s,
        drain_delay_s=args.drain_delay_s,
        max_held_requests=args.max_held_requests,
        auth=auth,
        queue_per_member=args.queue_per_member,
        secrets_dir=args.secrets_dir,
        zone=args.zone,
        log_level=args.log_level,
        log_json=args.log_json,
        policy_plugins=plugins,
        controller_tls=controller_tls,
        https_cert=args.https_cert,
        https_key=args.https_key,
    )
