"""Runs wrk with a Lua script that POSTs a chat request and prints its results as JSON."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

MARK = "WRKJSON "

_SCRIPT = """
wrk.method = "POST"
wrk.body = [[%(body)s]]
wrk.headers["Content-Type"] = "application/json"
%(headers)s
local limit = 0
local count = 0

function init(args)
  if args[1] ~= nil then limit = tonumber(args[1]) end
end
%(response)s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%(mark)s{"requests":%%d,"duration_us":%%d,"connect":%%d,"read":%%d,"write":%%d,' ..
    '"status":%%d,"timeout":%%d,"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,"p999_us":%%d,' ..
    '"max_us":%%d,"mean_us":%%f}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
"""

_LIMITED_RESPONSE = """
function response(status, headers, body)
  count = count + 1
  if limit > 0 and count == limit then
    io.write("LIMIT_REACHED\\n")
    io.flush()
    wrk.thread:stop()
  end
end
"""


def script(body: str, limited: bool, headers: Mapping[str, str] | None = None) -> str:
    """The Lua script; with limited, each thread stops after the count given as its argument."""
    if "]]" in body or any("]]" in k + v for k, v in (headers or {}).items()):
        raise ValueError("body and headers must not contain ']]'")
    extra = "".join(f"wrk.headers[ [[{k}]] ] = [[{v}]]\n" for k, v in (headers or {}).items())
    return _SCRIPT % {
        "body": body,
        "response": _LIMITED_RESPONSE if limited else "",
        "mark": MARK,
        "headers": extra,
    }


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    errors: int  # connect + read + write + timeout + non-2xx/3xx
    non_2xx: int
    p50_s: float
    p90_s: float
    p99_s: float
    p999_s: float
    max_s: float
    mean_s: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0


def parse(output: str) -> WrkResult:
    """The WrkResult from wrk's stdout (the JSON line our done() prints)."""
    for line in output.splitlines():
        if line.startswith(MARK):
            d = json.loads(line[len(MARK) :])
            errors = d["connect"] + d["read"] + d["write"] + d["timeout"] + d["status"]
            return WrkResult(
                requests=d["requests"],
                duration_s=d["duration_us"] / 1e6,
                errors=errors,
                non_2xx=d["status"],
                p50_s=d["p50_us"] / 1e6,
                p90_s=d["p90_us"] / 1e6,
                p99_s=d["p99_us"] / 1e6,
                p999_s=d["p999_us"] / 1e6,
                max_s=d["max_us"] / 1e6,
                mean_s=d["mean_us"] / 1e6,
            )
    raise ValueError(f"no {MARK.strip()} line in wrk output: {output[-500:]!r}")


def binary() -> str | None:
    return shutil.which("wrk")


async def run(
    url: str,
    body: str,
    workdir: Path,
    connections: int,
    duration_s: float,
    threads: int = 1,
    limit: int = 0,
    timeout_s: float = 30.0,
    headers: Mapping[str, str] | None = None,
) -> WrkResult:
    """Runs wrk against url for duration_s (or until each thread has seen limit responses,
    when limit > 0, with duration_s as the bound)."""
    exe = binary()
    if exe is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    lua = workdir / ("wrk-limited.lua" if limit else "wrk.lua")
    lua.write_text(script(body, limited=limit > 0, headers=headers))
    argv = [
        exe,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={timeout_s:g}s",
        "-s",
        str(lua),
        url,
    ]
    if limit:
        argv += ["--", str(max(1, limit // threads))]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out = await asyncio.wait_for(
            _collect(proc, stop_after=threads if limit else 0), timeout=duration_s + timeout_s + 30
        )
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return parse(out)


async def _collect(proc: asyncio.subprocess.Process, stop_after: int) -> str:
    """Reads wrk's output; once stop_after threads reached their limit, SIGINT ends wrk's
    sleep so that it reports at once (wrk otherwise waits out its whole duration)."""
    assert proc.stdout is not None
    lines: list[str] = []
    reached = 0
    while True:
        raw = await proc.stdout.readline()
        if not raw:
            break
        line = raw.decode(errors="replace")
        lines.append(line)
        if stop_after and line.strip() == "LIMIT_REACHED":
            reached += 1
            if reached == stop_after:
                proc.send_signal(signal.SIGINT)
    await proc.wait()
    return "".join(lines)
