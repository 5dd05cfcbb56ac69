"""`llm-pool agent`: flags (each also an environment variable) and the process's signal handling."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from collections.abc import Mapping

from agent.allow import parse_entries
from agent.app import AgentOptions, run_agent
from agent.attach_spec import ATTACH_VAR, parse_attach_all
from agent.gpus import parse_gpus
from agent.ports import parse_port_range
from llmpool.addr import split_host_port
from llmpool.cliargs import add_logging_options, env_help, env_option, run_until_signal
from llmpool.errors import LLMPoolError
from llmpool.logs import setup_logging
from llmpool.tls import add_tls_options, tls_from_args

LABELS_VAR = "LLMPOOL_AGENT_LABELS"
ALLOW_VAR = "LLMPOOL_AGENT_ALLOW_ENGINES"


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


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llm-pool agent",
        description="Supervises model servers on this host and reports them to the controller.",
    )
    env_option(
        p,
        "--controller",
        env,
        "LLMPOOL_CONTROLLER_ADDR",
        "127.0.0.1:50051",
        "controller gRPC address host:port",
    )
    env_option(
        p,
        "--agent-id",
        env,
        "LLMPOOL_AGENT_ID",
        socket.gethostname(),
        "this agent's id",
        shown="hostname",
    )
    p.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="K=V",
        help=env_help(
            "label for placement, repeatable; added to those of the variable, e.g. zone=a,rack=3",
            LABELS_VAR,
            "default: none",
        ),
    )
    p.add_argument(
        "--allow-engine",
        action="append",
        default=[],
        metavar="COMMAND",
        help=env_help(
            "let templates run this command: an argv prefix such as '/opt/vllm/bin/vllm serve' "
            "or '{python} -m my_server' (repeatable; the built-in engines' commands are always "
            "allowed, shells never); added to those of the variable (';' between entries)",
            ALLOW_VAR,
            "default: the built-in engines only",
        ),
    )
    p.add_argument(
        "--attach",
        action="append",
        default=[],
        metavar="SPEC",
        help=env_help(
            "watch an engine this agent did not start, repeatable: "
            "pool=NAME,url=http://HOST:PORT[,engine=openai][,model=NAME][,id=ID]"
            "[,health=/PATH][,metrics=/PATH]; added to those of the variable (';' between specs)",
            ATTACH_VAR,
            "default: none",
        ),
    )
    env_option(
        p,
        "--engine-host",
        env,
        "LLMPOOL_AGENT_ENGINE_HOST",
        "127.0.0.1",
        "address engines bind, {host} in templates",
    )
    env_option(
        p,
        "--advertise-host",
        env,
        "LLMPOOL_AGENT_ADVERTISE_HOST",
        "",
        "host in the replica URLs reported to the controller",
        shown="engine host, or hostname if wildcard",
    )
    env_option(
        p,
        "--port-range",
        env,
        "LLMPOOL_AGENT_PORT_RANGE",
        "20000-29999",
        "ports engines may get, LOW-HIGH",
    )
    env_option(
        p,
        "--cpu-slots",
        env,
        "LLMPOOL_AGENT_CPU_SLOTS",
        os.cpu_count() or 1,
        "CPU slots offered for placement",
        type=int,
        shown="number of CPUs",
    )
    env_option(
        p,
        "--gpus",
        env,
        "LLMPOOL_AGENT_GPUS",
        "auto",
        "GPUs offered for placement: auto (all NVML finds), none, or indices such as 0,1",
    )
    env_option(
        p,
        "--metrics-listen",
        env,
        "LLMPOOL_AGENT_METRICS_LISTEN",
        "127.0.0.1:9102",
        "host:port of /metrics, port 0 for any",
    )
    env_option(
        p,
        "--report-interval-s",
        env,
        "LLMPOOL_AGENT_REPORT_INTERVAL_S",
        1.0,
        "seconds between reports; the controller's Welcome may override",
        type=float,
    )
    env_option(
        p,
        "--log-lines",
        env,
        "LLMPOOL_AGENT_LOG_LINES",
        1000,
        "output lines kept per replica",
        type=int,
    )
    add_tls_options(p, env, role="agent", what="the controller connection")
    add_logging_options(p, env)
    return p


def options_from_args(args: argparse.Namespace, env: Mapping[str, str]) -> AgentOptions:
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
    try:
        gpus = parse_gpus(args.gpus)
    except ValueError as exc:
        raise ValueError(f"--gpus: {exc}") from None
    labels = parse_labels([env.get(LABELS_VAR, ""), *args.label])
    listed = [e for e in env.get(ALLOW_VAR, "").split(";") if e.strip()] + args.allow_engine
    try:
        allow = parse_entries(listed)
    except ValueError as exc:
        raise ValueError(f"--allow-engine: {exc}") from None
    attach = parse_attach_all(args.attach, args.agent_id, env.get(ATTACH_VAR, ""))
    if args.report_interval_s <= 0:
        raise ValueError("--report-interval-s must be > 0")
    if args.log_lines < 1:
        raise ValueError("--log-lines must be >= 1")
    if args.cpu_slots < 0:
        raise ValueError("--cpu-slots must be >= 0")
    try:
        tls = tls_from_args(args, role="agent", address=args.controller)
    except ValueError as exc:
        raise ValueError(f"--controller: {exc}") from None
    return AgentOptions(
        tls=tls,
        allow_engines=allow,
        controller=args.controller,
        agent_id=args.agent_id,
        hostname=hostname,
        labels=labels,
        engine_host=args.engine_host,
        advertise_host=args.advertise_host or _advertise_host(args.engine_host, hostname),
        port_low=low,
        port_high=high,
        cpu_slots=args.cpu_slots,
        gpus=gpus,
        metrics_host=metrics_host,
        metrics_port=metrics_port,
        report_interval_s=args.report_interval_s,
        log_lines=args.log_lines,
        attach=attach,
    )


def main(argv: list[str]) -> int:
    env = os.environ
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
        asyncio.run(run_until_signal(lambda stop: run_agent(options, stop)))
    except LLMPoolError as exc:
        print(f"llm-pool agent: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # Typically the metrics port is taken.
        print(f"llm-pool agent: {exc}", file=sys.stderr)
        return 1
    return 0
