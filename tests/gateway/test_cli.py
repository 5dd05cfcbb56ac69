"""`llm-pool gateway` as a real process: flags and env, the listening line, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.settings import MIB, parse_settings
from llmpool.certs import issue
from llmpool.tls import TlsFiles
from tests.support import make_pki


def test_settings_from_env_and_flags() -> None:
    env = {
        "LLMPOOL_GATEWAY_LISTEN": "0.0.0.0:9000",
        "LLMPOOL_GATEWAY_MAX_BODY_BYTES": "123",
        "LLMPOOL_LOG_FORMAT": "json",
        "LLMPOOL_GATEWAY_ID": "g1",
        "LLMPOOL_LOG_LEVEL": "DEBUG",
    }
    s = parse_settings([], env)
    assert (s.listen_host, s.listen_port, s.max_body_bytes, s.log_json, s.gateway_id) == (
        "0.0.0.0",
        9000,
        123,
        True,
        "g1",
    )
    assert s.log_level == "debug"
    s = parse_settings(
        ["--listen", ":8100", "--controller", "c:1", "--usage-interval-s", "0.5"], env
    )
    assert (s.listen_host, s.listen_port, s.controller, s.usage_interval_s) == (
        "127.0.0.1",
        8100,
        "c:1",
        0.5,
    )
    d = parse_settings([], {})
    assert d.listen == "127.0.0.1:8000" and d.controller == "127.0.0.1:50051"
    assert d.max_body_bytes == 10 * MIB and d.gateway_id.endswith(f"-{os.getpid()}")


@pytest.mark.parametrize("argv", [["--listen", "nope"], ["--max-body-bytes", "0"]])
def test_bad_flags_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_settings(argv, {})
    assert info.value.code == 2


def test_keys_are_required_beyond_loopback(capsys: pytest.CaptureFixture[str]) -> None:
    # Loopback: keys once any exists (auto); any other address: always.
    assert parse_settings([], {}).auth == "auto"
    assert parse_settings(["--listen", "0.0.0.0:8000"], {}).auth == "keys"
    assert parse_settings(["--listen", "10.1.2.3:8000", "--auth", "auto"], {}).auth == "keys"
    assert parse_settings(["--auth", "none"], {}).auth == "none"
    # No keys beyond loopback: refused at start, unless told it is insecure.
    with pytest.raises(SystemExit) as info:
        parse_settings(["--listen", "0.0.0.0:8000", "--auth", "none"], {})
    assert info.value.code == 2
    assert "--insecure-allow-remote" in capsys.readouterr().err
    told = ["--listen", "0.0.0.0:8000", "--auth", "none", "--insecure-allow-remote"]
    assert parse_settings(told, {}).auth == "none"


def test_bad_env_exits_2() -> None:
    with pytest.raises(SystemExit):
        parse_settings([], {"LLMPOOL_GATEWAY_USAGE_INTERVAL_S": "soon"})


async def test_process_serves_and_stops_on_sigterm(kit: Any) -> None:
    port = kit.free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "llmpool.cli",
        "gateway",
        "--listen",
        f"127.0.0.1:{port}",
        "--controller",
        f"127.0.0.1:{kit.free_port()}",
        "--log-json",
        "--insecure",
        "--drain-delay-s",
        "0",
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        deadline = time.monotonic() + 20
        while True:
            line = await asyncio.wait_for(
                proc.stderr.readline(), max(0.1, deadline - time.monotonic())
            )
            assert line, "gateway exited before listening"
            if b"gateway listening" in line:
                assert f"127.0.0.1:{port}".encode() in line
                break
        async with httpx.AsyncClient(trust_env=False) as http:

            async def healthy() -> bool:
                return (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200

            await kit.wait_until(healthy, 10, "healthz")
            assert (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 503
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_https_with_a_certificate_and_mutual_tls_to_the_controller(
    kit: Any, tmp_path: Path
) -> None:
    """The gateway serves HTTPS with --https-cert/--https-key and, by default, reaches the
    controller over mutual TLS (here: a controller that speaks mTLS with the same CA)."""
    from controller.server import ControllerServer, ControllerSettings

    pki = make_pki(tmp_path / "pki")
    issue(pki, "gateway", "gw-https", ("127.0.0.1",), out=tmp_path / "web")
    controller = ControllerServer(
        ControllerSettings(
            listen="127.0.0.1:0",
            metrics_listen="127.0.0.1:0",
            data_dir=tmp_path / "data",
            tls=TlsFiles.in_dir(pki, "controller"),
        )
    )
    await controller.start()
    port = kit.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMPOOL_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmpool.cli", "gateway",
        "--listen", f"127.0.0.1:{port}", "--controller", f"127.0.0.1:{controller.port}",
        "--tls-dir", str(pki),
        "--https-cert", str(tmp_path / "web" / "gw-https.crt"),
        "--https-key", str(tmp_path / "web" / "gw-https.key"), "--drain-delay-s", "0",
        stderr=asyncio.subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        async with httpx.AsyncClient(verify=ctx, trust_env=False) as http:

            async def ready() -> bool:
                # Ready means a routing snapshot came over mutual TLS.
                return (await http.get(f"https://127.0.0.1:{port}/readyz")).status_code == 200

            await kit.wait_until(ready, 20, "ready over HTTPS")
        async with httpx.AsyncClient(trust_env=False) as plain:
            with pytest.raises(httpx.HTTPError):
                await plain.get(f"http://127.0.0.1:{port}/healthz")
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 15)
        await controller.stop()
