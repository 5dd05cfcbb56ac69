"""Parsing /proc/PID/stat and summing process trees."""

import math
import os

import pytest

from bench import procstat
from bench.procstat import ProcStat, parse_stat, tree

# A real line's shape; the command name holds spaces and a ')'.
LINE = (
    "4242 (python3 (x) y) S 4000 4242 4000 0 -1 4194560 12345 0 0 0 "
    "150 35 2 1 20 0 3 0 100 123456789 20480 18446744073709551615 1 1 0 0 0 0 0 "
    "16781312 16386 0 0 0 17 1 0 0 0 0 0"
)


def test_parse_stat_fields() -> None:
    st = parse_stat(LINE)
    assert st.pid == 4242
    assert st.comm == "python3 (x) y"
    assert st.ppid == 4000
    assert st.utime == 150
    assert st.stime == 35
    assert st.rss_pages == 20480


def _st(pid: int, ppid: int, ticks: int = 0, pages: int = 0) -> ProcStat:
    return ProcStat(pid, f"p{pid}", ppid, ticks, ticks, pages)


def test_tree_takes_descendants_only() -> None:
    stats = {s.pid: s for s in [_st(1, 0), _st(10, 1), _st(11, 10), _st(12, 10), _st(20, 1)]}
    assert [s.pid for s in tree([10], stats)] == [10, 11, 12]
    assert [s.pid for s in tree([10, 20], stats)] == [10, 11, 12, 20]
    assert tree([99], stats) == []


def test_cpu_and_rss_sums() -> None:
    procs = [_st(1, 0, ticks=procstat.CLK_TCK, pages=2), _st(2, 1, ticks=0, pages=3)]
    assert procstat.cpu_seconds(procs) == 2.0  # utime + stime of the first
    assert procstat.rss_bytes(procs) == 5 * procstat.PAGE_SIZE


def test_sample_of_this_process() -> None:
    s = procstat.sample([os.getpid()])
    assert s.processes >= 1
    assert s.rss > 1 << 20
    assert s.cpu_s > 0


PROC_STAT = (
    "cpu  1000 50 300 8000 100 10 20 5 40 0\n"
    "cpu0 500 25 150 4000 50 5 10 3 20 0\n"
    "cpu1 500 25 150 4000 50 5 10 2 20 0\n"
    "intr 12345 0 0\n"
    "ctxt 999\n"
)


def test_parse_machine_cpu_takes_the_aggregate_line() -> None:
    cpu = procstat.parse_machine_cpu(PROC_STAT)
    # busy: user nice system irq softirq steal; idle: idle iowait; guest is inside user.
    assert cpu.busy == 1000 + 50 + 300 + 10 + 20 + 5
    assert cpu.total == cpu.busy + 8000 + 100


def test_parse_machine_cpu_short_line_and_missing_line() -> None:
    assert procstat.parse_machine_cpu("cpu 10 0 5 85\n") == procstat.MachineCpu(15, 100)
    with pytest.raises(ValueError):
        procstat.parse_machine_cpu("intr 1\n")


def test_busy_fraction() -> None:
    before = procstat.MachineCpu(busy=100, total=1000)
    after = procstat.MachineCpu(busy=250, total=1200)
    assert procstat.busy_fraction(before, after) == 0.75
    assert math.isnan(procstat.busy_fraction(after, after))


def test_machine_cpu_reads_this_box() -> None:
    cpu = procstat.machine_cpu()
    assert 0 <= cpu.busy <= cpu.total
