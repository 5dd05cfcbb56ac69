"""`llm-pool controller`: flags (each also an environment variable), logging, signals, serve()."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path

from llmpool.config import ConfigError
from llmpool.logs import setup_logging

from .server import ControllerSettings, serve

log = logging.getLogger(__name__)


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _env_bool(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes", "on")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llm-pool controller",
        description="The llm-pool control plane: desired state, routing snapshots, admin gRPC API.",
    )
    p.add_argument(
        "--listen",
        default=_env("LLMPOOL_CONTROLLER_LISTEN", "127.0.0.1:50051"),
        help="gRPC host:port for agents, gateways and admin [LLMPOOL_CONTROLLER_LISTEN]",
    )
    p.add_argument(
        "--data-dir",
        default=_env("LLMPOOL_DATA_DIR", "./data"),
        help="directory of the SQLite store [LLMPOOL_DATA_DIR]",
    )
    p.add_argument(
        "--config",
        default=_env("LLMPOOL_CONFIG", ""),
        help="YAML config that seeds the store on first start only [LLMPOOL_CONFIG]",
    )
    p.add_argument(
        "--metrics-listen",
        default=_env("LLMPOOL_CONTROLLER_METRICS_LISTEN", "127.0.0.1:9101"),
        help="host:port of /metrics; port 0 picks a free one [LLMPOOL_CONTROLLER_METRICS_LISTEN]",
    )
    p.add_argument(
        "--lease-s",
        type=float,
        default=_env("LLMPOOL_LEASE_S", "5"),
        help="an agent silent this long has its replicas marked unhealthy [LLMPOOL_LEASE_S]",
    )
    p.add_argument(
        "--report-interval-s",
        type=float,
        default=_env("LLMPOOL_REPORT_INTERVAL_S", "1"),
        help="how often agents report, sent to them on connect [LLMPOOL_REPORT_INTERVAL_S]",
    )
    p.add_argument(
        "--log-level",
        default=_env("LLMPOOL_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
        help="[LLMPOOL_LOG_LEVEL]",
    )
    p.add_argument(
        "--log-json",
        action="store_true",
        default=_env_bool("LLMPOOL_LOG_JSON") or _env("LLMPOOL_LOG_FORMAT", "") == "json",
        help="one JSON object per log line [LLMPOOL_LOG_JSON=1 or LLMPOOL_LOG_FORMAT=json]",
    )
    return p


def settings_from_args(args: argparse.Namespace) -> ControllerSettings:
    return ControllerSettings(
        listen=args.listen,
        data_dir=Path(args.data_dir),
        config_path=Path(args.config) if args.config else None,
        metrics_listen=args.metrics_listen,
        lease_s=args.lease_s,
        report_interval_s=args.report_interval_s,
    )


async def _run(settings: ControllerSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(settings, stop)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    setup_logging("controller", args.log_level, args.log_json)
    if args.lease_s <= 0 or args.report_interval_s <= 0:
        log.error("--lease-s and --report-interval-s must be > 0")
        return 2
    try:
        asyncio.run(_run(settings_from_args(args)))
    except ConfigError as exc:
        log.error("bad config", extra={"error": str(exc)})
        return 2
    except OSError as exc:
        log.error("cannot start the controller", extra={"error": str(exc)})
        return 1
    return 0
