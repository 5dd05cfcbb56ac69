"""`llm-pool agent`: flags (each also an environment variable) and the process's signal handling."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys

from agent.app import AgentOptions, run_agent
from agent.ports import parse_port_range
from llmpool.addr import split_host_port
from llmpool.logs import setup_logging


def parse_labels(items: list[str]) -> dict[str, str]:
    """['zone=a', 'rack=3,row=2'] -> {'zone': 'a', 'rack': '3', 'row': '2'}; ValueError if bad."""
    labels: dict[str, str] = {}
    for item in items:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            key, sep, value = part.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"label {part!r} is not key=value")
            labels[key.strip()] = value.strip()
    return labels


def _advertise_host(engine_host: str, hostname: str) -> str:
    # Engines bound to every interface are reached from other hosts by this host's name.
    return hostname if engine_host in ("0.0.0.0", "::", "") else engine_host


def build_parser(env: dict[str, str]) -> argparse.ArgumentParser:
    def e(name: str, default: str) -> str:
        return env.get(name, default)

    p = argparse.ArgumentParser(
        prog="llm-pool agent",
        description="Supervises model servers on this host and reports them to the controller.",
    )
    p.add_argument(
        "--controller",
        default=e("LLMPOOL_CONTROLLER_ADDR", "127.0.0.1:50051"),
        help="controller gRPC address host:port (env LLMPOOL_CONTROLLER_ADDR)",
    )
    p.add_argument(
        "--agent-id",
        default=e("LLMPOOL_AGENT_ID", socket.gethostname()),
        help="this agent's id (env LLMPOOL_AGENT_ID; default: hostname)",
    )
    p.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="K=V",
        help="label for placement, repeatable (env LLMPOOL_AGENT_LABELS='zone=a,rack=3')",
    )
    p.add_argument(
        "--engine-host",
        default=e("LLMPOOL_AGENT_ENGINE_HOST", "127.0.0.1"),
        help="address engines bind, {host} in templates (env LLMPOOL_AGENT_ENGINE_HOST)",
    )
    p.add_argument(
        "--advertise-host",
        default=e("LLMPOOL_AGENT_ADVERTISE_HOST", ""),
        help="host in the replica URLs reported to the controller (env "
        "LLMPOOL_AGENT_ADVERTISE_HOST; default: engine host, or hostname if wildcard)",
    )
    p.add_argument(
        "--port-range",
        default=e("LLMPOOL_AGENT_PORT_RANGE", "20000-29999"),
        help="ports engines may get, LOW-HIGH (env LLMPOOL_AGENT_PORT_RANGE)",
    )
    p.add_argument(
        "--cpu-slots",
        type=int,
        default=int(e("LLMPOOL_AGENT_CPU_SLOTS", str(os.cpu_count() or 1))),
        help="CPU slots offered for placement (env LLMPOOL_AGENT_CPU_SLOTS; default: CPUs)",
    )
    p.add_argument(
        "--metrics-listen",
        default=e("LLMPOOL_AGENT_METRICS_LISTEN", "127.0.0.1:9102"),
        help="host:port of /metrics, port 0 for any (env LLMPOOL_AGENT_METRICS_LISTEN)",
    )
    p.add_argument(
        "--report-interval-s",
        type=float,
        default=float(e("LLMPOOL_AGENT_REPORT_INTERVAL_S", "1.0")),
        help="seconds between reports; the controller's Welcome may override "
        "(env LLMPOOL_AGENT_REPORT_INTERVAL_S)",
    )
    p.add_argument(
        "--log-lines",
        type=int,
        default=int(e("LLMPOOL_AGENT_LOG_LINES", "1000")),
        help="output lines kept per replica (env LLMPOOL_AGENT_LOG_LINES)",
    )
    p.add_argument(
        "--log-level",
        default=e("LLMPOOL_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
        help="env LLMPOOL_LOG_LEVEL",
    )
    p.add_argument(
        "--log-json",
        action="store_true",
        default=e("LLMPOOL_LOG_JSON", "").lower() in ("1", "true", "yes"),
        help="one JSON object per log line (env LLMPOOL_LOG_JSON=1)",
    )
    return p


def options_from_args(args: argparse.Namespace, env: dict[str, str]) -> AgentOptions:
    """ValueError with the flag's name when a value cannot be used."""
    hostname = socket.gethostname()
    try:
        low, high = parse_port_range(args.port_range)
    except ValueError as exc:
        raise ValueError(f"--port-range: {exc}") from None
    try:
        metrics_host, metrics_port = split_host_port(args.metrics_listen)
    except ValueError as exc:
        raise ValueError(f"--metrics-listen: {exc}") from None
    try:
        split_host_port(args.controller)
    except ValueError as exc:
        raise ValueError(f"--controller: {exc}") from None
    labels = parse_labels([env.get("LLMPOOL_AGENT_LABELS", ""), *args.label])
    if args.report_interval_s <= 0:
        raise ValueError("--report-interval-s must be > 0")
    if args.log_lines < 1:
        raise ValueError("--log-lines must be >= 1")
    if args.cpu_slots < 0:
        raise ValueError("--cpu-slots must be >= 0")
    return AgentOptions(
        controller=args.controller,
        agent_id=args.agent_id,
        hostname=hostname,
        labels=labels,
        engine_host=args.engine_host,
        advertise_host=args.advertise_host or _advertise_host(args.engine_host, hostname),
        port_low=low,
        port_high=high,
        cpu_slots=args.cpu_slots,
        metrics_host=metrics_host,
        metrics_port=metrics_port,
        report_interval_s=args.report_interval_s,
        log_lines=args.log_lines,
    )


async def _serve(options: AgentOptions) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await run_agent(options, stop)


def main(argv: list[str]) -> int:
    env = dict(os.environ)
    try:
        args = build_parser(env).parse_args(argv)
        options = options_from_args(args, env)
    except ValueError as exc:
        print(f"llm-pool agent: {exc}", file=sys.stderr)
        return 2
    setup_logging("agent", args.log_level, args.log_json)
    # One line per probe (several a second) would bury everything else.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        asyncio.run(_serve(options))
    except OSError as exc:
        # Typically the metrics port is taken.
        print(f"llm-pool agent: {exc}", file=sys.stderr)
        return 1
    return 0
