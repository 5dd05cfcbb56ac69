"""CPU time and resident memory of process trees, read from /proc (Linux)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/PID/stat the benchmark uses (times in clock ticks, RSS in pages)."""

    pid: int
    comm: str
    ppid: int
    utime: int
    stime: int
    rss_pages: int


def parse_stat(text: str) -> ProcStat:
    """Parses one /proc/PID/stat line. The command name may hold spaces and parentheses,
    so the fields after it are found from the last ')'."""
    open_paren = text.index("(")
    close_paren = text.rindex(")")
    pid = int(text[:open_paren].strip())
    comm = text[open_paren + 1 : close_paren]
    rest = text[close_paren + 2 :].split()
    # rest[0] is field 3 (state); utime is field 14, stime 15, rss 24 (1-based).
    return ProcStat(
        pid=pid,
        comm=comm,
        ppid=int(rest[1]),
        utime=int(rest[11]),
        stime=int(rest[12]),
        rss_pages=int(rest[21]),
    )


def read_all(proc: Path = Path("/proc")) -> dict[int, ProcStat]:
    """Every process's stat that can still be read (processes come and go while we read)."""
    stats: dict[int, ProcStat] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stats[int(entry.name)] = parse_stat((entry / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue
    return stats


def tree(roots: list[int], stats: dict[int, ProcStat]) -> list[ProcStat]:
    """The roots and all their descendants present in stats."""
    children: dict[int, list[int]] = {}
    for st in stats.values():
        children.setdefault(st.ppid, []).append(st.pid)
    seen: set[int] = set()
    todo = [pid for pid in roots if pid in stats]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(children.get(pid, []))
    return [stats[pid] for pid in sorted(seen)]


def cpu_seconds(procs: list[ProcStat]) -> float:
    return sum(p.utime + p.stime for p in procs) / CLK_TCK


def rss_bytes(procs: list[ProcStat]) -> int:
    return sum(p.rss_pages for p in procs) * PAGE_SIZE


@dataclass(frozen=True)
class Sample:
    cpu_s: float
    rss: int
    processes: int


def sample(roots: list[int]) -> Sample:
    """CPU seconds (user + system) and summed RSS of the trees under roots, now."""
    procs = tree(roots, read_all())
    return Sample(cpu_seconds(procs), rss_bytes(procs), len(procs))


@dataclass(frozen=True)
class MachineCpu:
    """All cores' time from the "cpu" line of /proc/stat, in clock ticks: busy and total."""

    busy: int
    total: int


def parse_machine_cpu(text: str) -> MachineCpu:
    """Parses /proc/stat's aggregate "cpu" line: user nice system idle iowait irq softirq
    steal guest guest_nice. Idle is idle + iowait; guest time is already inside user and
    nice, so it is not counted twice."""
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            values = [int(v) for v in fields[1:]]
            values += [0] * (10 - len(values))
            user, nice, system, idle, iowait, irq, softirq, steal = values[:8]
            idle_all = idle + iowait
            busy = user + nice + system + irq + softirq + steal
            return MachineCpu(busy=busy, total=busy + idle_all)
    raise ValueError("no aggregate cpu line in /proc/stat")


def busy_fraction(before: MachineCpu, after: MachineCpu) -> float:
    """Share of all cores' time spent busy between two readings (nan if no time passed)."""
    total = after.total - before.total
    if total <= 0:
        return float("nan")
    return (after.busy - before.busy) / total


def machine_cpu(path: Path = Path("/proc/stat")) -> MachineCpu:
    return parse_machine_cpu(path.read_text())
