"""Spawning engine processes in their own process group, and ending the whole group."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import signal
import sys
from collections.abc import Mapping

from agent.log_ring import LogRing

# Lines longer than the default 64 KiB StreamReader limit (some engines print huge configs).
_READ_LIMIT = 1 << 20

# Runs in the child before the engine: asks Linux to SIGKILL it when the agent dies (even by
# kill -9), then execs the engine in the same process. A preexec_fn would run Python in a
# child forked from a process with gRPC threads, which can crash; a fresh interpreter cannot.
_DEATHSIG_SHIM = (
    "import ctypes,os,signal,sys\n"
    "ctypes.CDLL(None).prctl(1,signal.SIGKILL,0,0,0)\n"
    "if os.getppid()!=int(sys.argv[1]):sys.exit(1)\n"
    "try:os.execvp(sys.argv[2],sys.argv[2:])\n"
    "except OSError as e:print(f'cannot exec {sys.argv[2]}: {e}',flush=True);sys.exit(127)\n"
)


def resolve_executable(name: str, path: str | None = None) -> str:
    """The program argv[0] names; FileNotFoundError (checked before spawning) when none."""
    found = shutil.which(name, path=path)
    if found is None:
        raise FileNotFoundError(errno.ENOENT, f"{name!r} is not an executable file on PATH", name)
    return found


def wrap_argv(argv: tuple[str, ...], python: str = sys.executable) -> tuple[str, ...]:
    """argv behind the parent-death shim on Linux; unchanged elsewhere."""
    if not sys.platform.startswith("linux"):
        return argv
    return (python, "-S", "-c", _DEATHSIG_SHIM, str(os.getpid()), *argv)


async def spawn(argv: tuple[str, ...], extra_env: Mapping[str, str]) -> asyncio.subprocess.Process:
    """Starts argv with stdout and stderr merged into one pipe, as leader of a new process group."""
    env = {**os.environ, **extra_env}
    program = resolve_executable(argv[0], env.get("PATH"))
    return await asyncio.create_subprocess_exec(
        *wrap_argv((program, *argv[1:])),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        start_new_session=True,
        limit=_READ_LIMIT,
    )


async def pump_lines(proc: asyncio.subprocess.Process, ring: LogRing) -> None:
    """Copies the process output into ring line by line until EOF (it must be read, or the
    engine blocks once the pipe buffer is full)."""
    stream = proc.stdout
    if stream is None:
        return
    while True:
        try:
            raw = await stream.readline()
        except ValueError:
            # Longer than the read limit: asyncio has dropped it; say so rather than guess.
            ring.append(f"[a line longer than {_READ_LIMIT} bytes was dropped]")
            continue
        if not raw:
            return
        ring.append(raw.decode(errors="replace").rstrip("\r\n"))


def signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Sends sig to the process group; False when no member is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


async def terminate_group(proc: asyncio.subprocess.Process, timeout_s: float) -> int | None:
    """SIGTERM to the process group, wait up to timeout_s for the leader, then SIGKILL the group.
    Returns the leader's exit code."""
    pgid = proc.pid
    if proc.returncode is None:
        signal_group(pgid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await proc.wait()
    # Children of the engine (workers) may outlive its leader: the group goes in any case.
    signal_group(pgid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        await proc.wait()
    return proc.returncode
