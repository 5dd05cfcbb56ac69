"""`llm-pool up`: controller, one agent and a gateway as one process tree on this machine."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from llmpool.addr import split_host_port
from llmpool.certs import ensure_local_pki
from llmpool.cliargs import add_logging_options, env_option, run_until_signal
from llmpool.config import ConfigError, default_config_text, load_config
from llmpool.errors import FailedPreconditionError
from llmpool.logs import setup_logging
from llmpool.models import smollm2_gguf_path
from llmpool.tls import TlsFiles, aio_channel, is_loopback

log = logging.getLogger("llmpool.up")

# Stop order on shutdown: the gateway first so it drains client requests while replicas still
# serve; then the controller, so that it does not plan replacements for the replicas that the
# agent, last, stops.
STOP_ORDER = ("gateway", "controller", "agent")
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class UpSettings:
    gateway_listen: str
    controller_listen: str
    controller_metrics_listen: str
    agent_metrics_listen: str
    data_dir: Path
    config: Path | None
    log_level: str
    log_json: bool
    backend_allow: str = ""


def parse_args(argv: list[str], env: Mapping[str, str] | None = None) -> UpSettings:
    environ = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="llm-pool up",
        description="Run a controller, one agent and a gateway on this machine. With no --config, "
        "serves the embedded default: pool 'smollm2' (SmolLM2-135M on 2 llama.cpp replicas, "
        "when the llamacpp extra is installed) and pool 'sim-small' of 2 simulated replicas.",
    )
    env_option(
        parser,
        "--gateway-listen",
        environ,
        "LLMPOOL_GATEWAY_LISTEN",
        "127.0.0.1:8000",
        "gateway HTTP address",
    )
    env_option(
        parser,
        "--controller-listen",
        environ,
        "LLMPOOL_CONTROLLER_LISTEN",
        "127.0.0.1:50051",
        "controller gRPC address",
    )
    env_option(
        parser,
        "--controller-metrics-listen",
        environ,
        "LLMPOOL_CONTROLLER_METRICS_LISTEN",
        "127.0.0.1:9101",
        "controller /metrics address",
    )
    env_option(
        parser,
        "--agent-metrics-listen",
        environ,
        "LLMPOOL_AGENT_METRICS_LISTEN",
        "127.0.0.1:9102",
        "agent /metrics address",
    )
    env_option(
        parser,
        "--data-dir",
        environ,
        "LLMPOOL_DATA_DIR",
        "data",
        "controller state (SQLite) lives here",
    )
    env_option(
        parser,
        "--config",
        environ,
        "LLMPOOL_CONFIG",
        None,
        "YAML config that seeds the store on first start",
        shown="the embedded sim-small config",
    )
    env_option(
        parser,
        "--backend-allow",
        environ,
        "LLMPOOL_CONTROLLER_BACKEND_ALLOW",
        "",
        "comma-separated networks or host:port that backends added through the admin API may "
        "point at besides public addresses, e.g. 127.0.0.1:8080 for a server on this machine",
    )
    add_logging_options(parser, environ)
    args = parser.parse_args(argv)
    for flag in (
        "gateway_listen",
        "controller_listen",
        "controller_metrics_listen",
        "agent_metrics_listen",
    ):
        try:
            split_host_port(getattr(args, flag))
        except ValueError as exc:
            parser.error(f"--{flag.replace('_', '-')}: {exc}")
    return UpSettings(
        gateway_listen=args.gateway_listen,
        controller_listen=args.controller_listen,
        controller_metrics_listen=args.controller_metrics_listen,
        agent_metrics_listen=args.agent_metrics_listen,
        data_dir=Path(args.data_dir),
        config=Path(args.config) if args.config else None,
        log_level=args.log_level,
        log_json=args.log_json,
        backend_allow=args.backend_allow,
    )


UP_ROLES = ("controller", "agent", "gateway", "admin")


def tls_dir(s: UpSettings) -> Path:
    return s.data_dir / "tls"


def ensure_certificates(s: UpSettings) -> None:
    """The CA and the certificates of the three parts and of an admin (for grpcurl), made in
    the data dir on first start: the default is mutual TLS with nothing for the user to do."""
    host, _ = split_host_port(s.controller_listen)
    hosts = tuple(h for h in (host, socket.gethostname()) if h not in ("0.0.0.0", "::"))
    if ensure_local_pki(tls_dir(s), UP_ROLES, hosts):
        log.info(
            "made a CA and certificates for mutual TLS",
            extra={"dir": str(tls_dir(s)), "admin_cert": str(tls_dir(s) / "admin.crt")},
        )


def child_commands(s: UpSettings, config_path: Path) -> dict[str, list[str]]:
    """The argv of each child; explicit flags so that stray environment cannot split the tree."""
    cli = [sys.executable, "-m", "llmpool.cli"]
    logging_flags = ["--log-level", s.log_level, "--log-json" if s.log_json else "--no-log-json"]

    def tls(role: str) -> list[str]:
        files = TlsFiles.in_dir(tls_dir(s), role)
        return [
            "--tls-ca",
            str(files.ca),
            "--tls-cert",
            str(files.cert),
            "--tls-key",
            str(files.key),
        ]

    return {
        "controller": [
            *cli,
            "controller",
            "--listen",
            s.controller_listen,
            "--data-dir",
            str(s.data_dir),
            "--config",
            str(config_path),
            "--metrics-listen",
            s.controller_metrics_listen,
            "--backend-allow",
            s.backend_allow,
            *tls("controller"),
            *logging_flags,
        ],
        "agent": [
            *cli,
            "agent",
            "--controller",
            s.controller_listen,
            "--metrics-listen",
            s.agent_metrics_listen,
            *tls("agent"),
            *logging_flags,
        ],
        "gateway": [
            *cli,
            "gateway",
            "--listen",
            s.gateway_listen,
            "--controller",
            s.controller_listen,
            # One machine, no load balancer to move away: stop accepting at once.
            "--drain-delay-s",
            "0",
            *tls("gateway"),
            *logging_flags,
        ],
    }


def _keys_said(listen: str) -> str:
    """What the start-up line says of client API keys (the gateway's --auth auto)."""
    host, _ = split_host_port(listen)
    if is_loopback(host):
        return "off until the first is made (CreateApiKey); loopback only"
    return "required (CreateApiKey makes them)"


def child_env() -> dict[str, str]:
    """This environment without the switches to plaintext: `up` is always mutual TLS."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LLMPOOL_INSECURE")}


# Added to the embedded default when the `llamacpp` extra is installed: a real model.
SMOLLM2_POOL = """
  - name: smollm2
    policy: least_in_flight
    replicas: 2
    description: SmolLM2-135M-Instruct on llama.cpp (llama-cpp-python), a real model.
    template:
      engine: llamacpp
      ready_timeout_s: 180
      # 135M parameters: a replica shares the cores with the others; with one slot each, a
      # 2-core machine could not scale the pool to 3.
      cpu_slots: 0
"""


def default_config() -> tuple[str, str | None]:
    """The embedded config, with the SmolLM2 pool when llama.cpp and the model are installed;
    and, when they are not, why (for the log)."""
    text = default_config_text()
    if importlib.util.find_spec("llama_cpp") is None:
        return text, "llama-cpp-python is not installed"
    try:
        smollm2_gguf_path()
    except FailedPreconditionError as exc:
        return text, str(exc)
    return text.rstrip("\n") + "\n" + SMOLLM2_POOL, None


def resolve_config(s: UpSettings) -> Path:
    """The config to seed from: the user's (validated now, for a clear error) or the default."""
    if s.config is not None:
        load_config(s.config)
        return s.config.resolve()
    s.data_dir.mkdir(parents=True, exist_ok=True)
    path = (s.data_dir / "default-config.yaml").resolve()
    text, missing = default_config()
    if missing:
        log.warning(
            "no real model: serving only the simulated pool sim-small",
            extra={"why": missing, "fix": "pip install -e '.[llamacpp]' (make run does it)"},
        )
    path.write_text(text)
    return path


async def _wait_controller(address: str, tls: TlsFiles, wait_s: float) -> bool:
    async with aio_channel(address, tls.channel_credentials()) as channel:
        try:
            await asyncio.wait_for(channel.channel_ready(), wait_s)
            return True
        except TimeoutError:
            return False


async def _stop(name: str, proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
    except TimeoutError:
        log.warning("child did not stop in time; killing it", extra={"child": name})
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def run(s: UpSettings, stop: asyncio.Event) -> int:
    """Runs the three children until `stop` is set or one of them exits."""
    config_path = resolve_config(s)
    ensure_certificates(s)
    commands = child_commands(s, config_path)

    children: dict[str, asyncio.subprocess.Process] = {}
    exit_code = 0
    try:
        children["controller"] = await asyncio.create_subprocess_exec(
            *commands["controller"], env=child_env()
        )
        admin = TlsFiles.in_dir(tls_dir(s), "admin")
        if not await _wait_controller(s.controller_listen, admin, 20.0):
            log.error("controller did not come up", extra={"address": s.controller_listen})
            return 1
        for name in ("agent", "gateway"):
            children[name] = await asyncio.create_subprocess_exec(*commands[name], env=child_env())
        log.info(
            "llm-pool up",
            extra={
                "gateway": f"http://{s.gateway_listen}/v1",
                "controller": s.controller_listen,
                "data_dir": str(s.data_dir),
                "admin_cert": str(tls_dir(s) / "admin.crt"),
                "api_keys": _keys_said(s.gateway_listen),
            },
        )
        waits = {asyncio.ensure_future(p.wait()): n for n, p in children.items()}
        stop_wait = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait([stop_wait, *waits], return_when=asyncio.FIRST_COMPLETED)
        for fut in done:
            if fut is not stop_wait:
                name = waits[fut]
                log.error(
                    "child exited; stopping the rest", extra={"child": name, "code": fut.result()}
                )
                exit_code = 1
        stop_wait.cancel()
        for fut in waits:
            fut.cancel()
    finally:
        for name in STOP_ORDER:
            if name in children:
                await _stop(name, children[name])
    return exit_code


def main(argv: list[str]) -> int:
    settings = parse_args(argv)
    setup_logging("up", settings.log_level, settings.log_json)
    try:
        return asyncio.run(run_until_signal(lambda stop: run(settings, stop)))
    except ConfigError as exc:
        print(f"llm-pool up: {exc}", file=sys.stderr)
        return 2
