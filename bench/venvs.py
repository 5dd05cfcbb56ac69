"""Own virtual environments for the peers we compare against, cached under bench/.venvs."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

VENVS = Path(__file__).resolve().parent / ".venvs"

# Pinned so that reruns compare the same peers; override with the environment variables.
LITELLM_SPEC = os.environ.get("BENCH_LITELLM_SPEC", "litellm[proxy]==1.108.7")
VLLM_ROUTER_SPEC = os.environ.get("BENCH_VLLM_ROUTER_SPEC", "vllm-router==0.1.17")


async def _run(argv: list[str], log: Path) -> None:
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=out, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL
        )
        rc = await asyncio.wait_for(proc.wait(), timeout=900)
    if rc != 0:
        tail = _tail(log)
        raise RuntimeError(f"{' '.join(argv)} failed with exit code {rc}:\n{tail}")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:]


async def ensure(name: str, spec: str, python: str = "python3.11") -> Path:
    """The venv bench/.venvs/<name> with spec installed; made (python -m venv + pip) only when
    it is missing or was made for another spec. Returns its bin directory."""
    root = VENVS / name
    stamp = root / ".bench-installed"
    if stamp.exists() and stamp.read_text().strip() == spec:
        return root / "bin"
    if root.exists():
        shutil.rmtree(root)
    VENVS.mkdir(parents=True, exist_ok=True)
    log = VENVS / f"{name}-install.log"
    log.write_text("")
    print(f"  installing {spec} into {root} (once; cached for later runs)", flush=True)
    await _run([python, "-m", "venv", str(root)], log)
    pip = str(root / "bin" / "pip")
    await _run([pip, "install", "--quiet", "--disable-pip-version-check", spec], log)
    stamp.write_text(spec + "\n")
    return root / "bin"
