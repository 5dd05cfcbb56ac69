"""`llm-pool sim-engine` as a process: port 0 printed, env vars, SIGTERM drains then exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import httpx
import pytest

from llmpool.sim.cli import main


async def test_sigterm_finishes_in_flight_requests_then_exits_zero() -> None:
    env = {**os.environ, "LLMPOOL_SIM_MODEL": "env-model", "LLMPOOL_SIM_SPEEDUP": "2"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "llmpool.cli",
        "sim-engine",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        port = int(await asyncio.wait_for(proc.stdout.readline(), 20))
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(timeout=20) as http:
            models = (await http.get(f"{base}/v1/models")).json()
            assert models["data"][0]["id"] == "env-model"
            # 100 decode steps of ~5.7 ms at speedup 2: in flight for about 0.3 s.
            body = {"model": "env-model", "prompt": "hello", "max_tokens": 100}
            pending = asyncio.create_task(http.post(f"{base}/v1/completions", json=body))

            async def running() -> bool:
                text = (await http.get(f"{base}/metrics")).text
                return 'vllm:num_requests_running{model_name="env-model"} 1.0' in text

            deadline = asyncio.get_running_loop().time() + 10
            while not await running():
                assert asyncio.get_running_loop().time() < deadline, "request never ran"
                await asyncio.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            response = await pending
        assert response.status_code == 200
        assert response.json()["usage"]["completion_tokens"] == 100
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        log = (await proc.stderr.read()).decode()
        assert "sim-engine listening" in log and f"port={port}" in log and "model=env-model" in log
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_invalid_flags_are_refused_with_a_clear_message(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--port", "0", "--speedup", "0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "speedup must be > 0" in err


def test_bad_env_value_names_the_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMPOOL_SIM_KV_BLOCKS", "lots")
    with pytest.raises(SystemExit):
        main(["--port", "0"])
    assert "LLMPOOL_SIM_KV_BLOCKS='lots'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "env", "said"),
    [
        ([], {}, True),
        (["--cache-info", "false"], {}, False),
        ([], {"LLMPOOL_SIM_CACHE_INFO": "0"}, False),
    ],
)
def test_cache_info_is_said_unless_turned_off(
    argv: list[str], env: dict[str, str], said: bool
) -> None:
    from llmpool.sim.cli import build_parser, settings_from_args

    args = build_parser(env).parse_args(["--port", "0", *argv])
    assert settings_from_args(args).cache_info is said
