"""`llm-pool controller`: flags (each also an environment variable), logging, signals, serve()."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from llmpool.cliargs import add_logging_options, env_option, run_until_signal
from llmpool.config import ConfigError
from llmpool.errors import LLMPoolError
from llmpool.logs import setup_logging
from llmpool.tls import add_tls_options, tls_from_args

from .backend_urls import parse_allow
from .server import ControllerSettings, serve

log = logging.getLogger(__name__)


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llm-pool controller",
        description="The llm-pool control plane: desired state, routing snapshots, admin gRPC API.",
    )
    env_option(
        p,
        "--listen",
        env,
        "LLMPOOL_CONTROLLER_LISTEN",
        "127.0.0.1:50051",
        "gRPC host:port for agents, gateways and admin",
    )
    env_option(p, "--data-dir", env, "LLMPOOL_DATA_DIR", "./data", "directory of the SQLite store")
    env_option(
        p,
        "--config",
        env,
        "LLMPOOL_CONFIG",
        "",
        "YAML config that seeds the store on first start only",
    )
    env_option(
        p,
        "--metrics-listen",
        env,
        "LLMPOOL_CONTROLLER_METRICS_LISTEN",
        "127.0.0.1:9101",
        "host:port of /metrics; port 0 picks a free one",
    )
    env_option(
        p,
        "--lease-s",
        env,
        "LLMPOOL_LEASE_S",
        5.0,
        "an agent silent this long has its replicas marked unhealthy",
        type=float,
    )
    env_option(
        p,
        "--restart-grace-s",
        env,
        "LLMPOOL_RESTART_GRACE_S",
        -1.0,
        "after a restart, seconds the agents that ran replicas get to come back before those "
        "replicas are replaced; routing stays as gateways had it meanwhile (negative: 3 leases)",
        type=float,
    )
    env_option(
        p,
        "--report-interval-s",
        env,
        "LLMPOOL_REPORT_INTERVAL_S",
        1.0,
        "how often agents report, sent to them on connect",
        type=float,
    )
    env_option(
        p,
        "--drain-s",
        env,
        "LLMPOOL_CONTROLLER_DRAIN_S",
        10.0,
        "most seconds a replica being removed gets to finish its requests; it stops as soon as "
        "the gateways report nothing in flight on it",
        type=float,
    )
    env_option(
        p,
        "--extra-policies",
        env,
        "LLMPOOL_CONTROLLER_EXTRA_POLICIES",
        "",
        "comma-separated routing policy names that only gateways load (--policy-plugin); "
        "pools may use them, their params unchecked",
    )
    env_option(
        p,
        "--backend-allow",
        env,
        "LLMPOOL_CONTROLLER_BACKEND_ALLOW",
        "",
        "comma-separated networks, hosts, *.domains (each optionally :PORT) that backends added "
        "through the admin API may point at besides public addresses: loopback, link-local "
        "and private ranges need an entry, e.g. 10.0.0.0/8,127.0.0.1:8080",
    )
    env_option(
        p,
        "--backend-schemes",
        env,
        "LLMPOOL_CONTROLLER_BACKEND_SCHEMES",
        "http,https",
        "comma-separated URL schemes backends may use",
    )
    add_tls_options(p, env, role="controller", what="the gRPC listener")
    add_logging_options(p, env)
    return p


def settings_from_args(args: argparse.Namespace) -> ControllerSettings:
    return ControllerSettings(
        listen=args.listen,
        data_dir=Path(args.data_dir),
        config_path=Path(args.config) if args.config else None,
        metrics_listen=args.metrics_listen,
        lease_s=args.lease_s,
        report_interval_s=args.report_interval_s,
        drain_s=args.drain_s,
        restart_grace_s=None if args.restart_grace_s < 0 else args.restart_grace_s,
        extra_policies=tuple(n.strip() for n in args.extra_policies.split(",") if n.strip()),
        tls=tls_from_args(args, role="controller", address=args.listen),
        backend_allow=parse_allow(args.backend_allow.split(",")),
        backend_schemes=_schemes(args.backend_schemes),
    )


def _schemes(text: str) -> tuple[str, ...]:
    schemes = tuple(s.strip().lower() for s in text.split(",") if s.strip())
    unknown = [s for s in schemes if s not in ("http", "https")]
    if unknown or not schemes:
        raise ValueError(f"--backend-schemes {text!r}: choose among http, https")
    return schemes


def main(argv: list[str]) -> int:
    args = build_parser(os.environ).parse_args(argv)
    setup_logging("controller", args.log_level, args.log_json)
    if args.lease_s <= 0 or args.report_interval_s <= 0:
        log.error("--lease-s and --report-interval-s must be > 0")
        return 2
    if args.drain_s < 0:
        log.error("--drain-s must be >= 0")
        return 2
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        log.error("bad flags", extra={"error": str(exc)})
        return 2
    try:
        asyncio.run(run_until_signal(lambda stop: serve(settings, stop)))
    except ConfigError as exc:
        log.error("bad config", extra={"error": str(exc)})
        return 2
    except LLMPoolError as exc:
        log.error("cannot start the controller", extra={"error": str(exc)})
        return 2
    except OSError as exc:
        log.error("cannot start the controller", extra={"error": str(exc)})
        return 1
    return 0
