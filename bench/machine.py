"""The machine a run happened on: CPU model, cores, memory, Python, date, git commit."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path


def cpu_model(cpuinfo: str) -> str:
    """The first 'model name' of /proc/cpuinfo text, or 'unknown'."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return "unknown"


def cpu_ticks(stat: str) -> tuple[int, int]:
    """(steal, total) clock ticks of all CPUs from /proc/stat text ((0, 0) if absent). Steal is
    time the VM's host ran something else while this machine had work: timings taken under
    much of it are noisy."""
    for line in stat.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            ticks = [int(f) for f in fields[1:]]
            # user nice system idle iowait irq softirq steal [guest guest_nice: inside user]
            steal = ticks[7] if len(ticks) > 7 else 0
            return steal, sum(ticks[:8])
    return 0, 0


def read_cpu_ticks() -> tuple[int, int]:
    path = Path("/proc/stat")
    return cpu_ticks(path.read_text()) if path.exists() else (0, 0)


def steal_share(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    """The share of CPU time stolen between two read_cpu_ticks() (None: nothing to tell)."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else None


def mem_total_bytes(meminfo: str) -> int:
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out + (" (with uncommitted changes)" if dirty else "")


def describe(root: Path) -> list[tuple[str, str]]:
    """(label, value) pairs for the report header."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    return [
        ("CPU", cpu_model(cpuinfo)),
        ("cores", str(os.cpu_count() or 0)),
        ("memory", f"{mem_total_bytes(meminfo) / 2**30:.1f} GiB"),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("Python", platform.python_version()),
        ("date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("git commit", git_commit(root)),
    ]
