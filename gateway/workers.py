"""`--workers N`: one listen socket, N worker processes accepting on it, one parent watching.

The parent binds the socket (so the address is known and announced once), then starts each
worker as a fresh interpreter (`python -m gateway.workers`, never a fork: gRPC threads do not
survive one) that inherits the socket's file descriptor and runs the whole gateway: its own
event loop, upstream pool and controller link, reporting usage as `<gateway-id>-w<i>`.
SIGTERM or SIGINT to the parent is passed to every worker, which finishes its in-flight
requests; workers that outlive the grace period are killed. A worker that dies by itself stops
the others and the parent exits 1, for systemd or `llm-pool up` to restart it all. Workers ask
the kernel for SIGTERM if the parent dies, so even `kill -9` of the parent leaves no orphans."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from gateway.listen import announce, bind_socket
from gateway.settings import GatewaySettings
from llmpool.logs import setup_logging
from llmpool.tls import TlsFiles

log = logging.getLogger(__name__)

# Seconds past the graceful timeout before a worker that has not exited is killed.
KILL_AFTER_S = 5.0


def worker_settings(settings: GatewaySettings, index: int) -> GatewaySettings:
    """A worker's settings: its own gateway id, so the controller counts each one apart."""
    return dataclasses.replace(settings, gateway_id=f"{settings.gateway_id}-w{index}", workers=1)


def encode_settings(settings: GatewaySettings) -> str:
    """Settings as JSON for a worker's command line (decode_settings reverses it)."""
    return json.dumps(dataclasses.asdict(settings), default=str)


def decode_settings(text: str) -> GatewaySettings:
    data = json.loads(text)
    tls = data.pop("controller_tls", None)
    return GatewaySettings(
        **{**data, "policy_plugins": tuple(data.get("policy_plugins", ()))},
        controller_tls=TlsFiles(**{k: Path(v) for k, v in tls.items()}) if tls else None,
    )


def worker_command(settings: GatewaySettings, index: int, fd: int) -> list[str]:
    encoded = encode_settings(worker_settings(settings, index))
    return [
        sys.executable,
        "-m",
        "gateway.workers",
        "--fd",
        str(fd),
        "--parent",
        str(os.getpid()),
        "--settings",
        encoded,
    ]


def run_workers(settings: GatewaySettings) -> int:
    """The parent: binds, announces, starts the workers and waits for them or for a signal."""
    sock = bind_socket(settings.listen_host, settings.listen_port)
    announce(settings, sock)
    try:
        return asyncio.run(_supervise(settings, sock))
    finally:
        sock.close()


async def _supervise(settings: GatewaySettings, sock: socket.socket) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    fd = sock.fileno()
    procs: list[asyncio.subprocess.Process] = []
    try:
        for index in range(settings.workers):
            procs.append(
                await asyncio.create_subprocess_exec(
                    *worker_command(settings, index, fd), pass_fds=(fd,)
                )
            )
        log.debug("gateway workers started", extra={"pids": [p.pid for p in procs]})
        exits = [asyncio.ensure_future(p.wait()) for p in procs]
        stopping = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait([stopping, *exits], return_when=asyncio.FIRST_COMPLETED)
        code = 0
        if stopping not in done:
            dead = [p for p in procs if p.returncode is not None]
            log.error(
                "gateway worker exited, stopping the others",
                extra={"pid": dead[0].pid, "returncode": dead[0].returncode},
            )
            code = 1
        stopping.cancel()
    finally:
        await _stop_all(procs, settings.drain_delay_s + settings.graceful_timeout_s + KILL_AFTER_S)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return code


async def _stop_all(procs: list[asyncio.subprocess.Process], timeout_s: float) -> None:
    for proc in procs:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    waits = [asyncio.ensure_future(p.wait()) for p in procs]
    _, pending = await asyncio.wait(waits, timeout=timeout_s) if waits else (set(), set())
    if pending:
        for proc in procs:
            if proc.returncode is None:
                log.warning(
                    "gateway worker did not stop in time, killing it", extra={"pid": proc.pid}
                )
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        await asyncio.gather(*waits)


def _die_with_parent(parent_pid: int) -> None:
    """Linux: SIGTERM to this worker when the parent dies (then check it has not already)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:
        sys.exit(0)


def worker_main(argv: list[str]) -> int:
    """A worker: `python -m gateway.workers --fd N --parent PID --settings JSON`."""
    p = argparse.ArgumentParser(prog="gateway worker")
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--parent", type=int, required=True)
    p.add_argument("--settings", required=True)
    args = p.parse_args(argv)
    _die_with_parent(args.parent)
    settings = decode_settings(args.settings)
    setup_logging("gateway", settings.log_level, settings.log_json)
    sock = socket.socket(fileno=args.fd)
    sock.setblocking(False)
    # Imported here: the parent never loads the app, gRPC or the HTTP clients.
    from gateway.server import run_loop

    run_loop(settings, sock)
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
