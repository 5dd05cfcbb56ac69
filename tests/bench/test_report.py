"""Rendering the benchmark's tables and parsing wrk's output."""

import math
from pathlib import Path

import pytest

from bench import report, results, wrk
from bench.machine import cpu_model, mem_total_bytes
from bench.results import SystemResult
from bench.run import write_report

WRK_OUT = """Running 2s test @ http://127.0.0.1:1/v1/chat/completions
WRKJSON {"requests":1000,"duration_us":2000000,"connect":0,"read":1,"write":0,"status":2,\
"timeout":0,"p50_us":500,"p90_us":900,"p99_us":2000,"p999_us":3000,"max_us":4000,\
"mean_us":600.5}
"""


def test_table_aligns_columns() -> None:
    text = report.table(["system", "rps"], [["a", "1"], ["longer name", "12,345"]])
    lines = text.splitlines()
    assert lines[0] == "| system      |    rps |"
    assert lines[1] == "|-------------|-------:|"
    assert lines[3] == "| longer name | 12,345 |"


def test_table_rejects_ragged_rows() -> None:
    with pytest.raises(ValueError):
        report.table(["a", "b"], [["1"]])


def test_formatters() -> None:
    assert report.ms(0.0012345, 3) == "1.234"
    assert report.us(0.000250) == "250"
    assert report.mib(3 * 2**20) == "3.0"
    assert report.num(12345.6) == "12,346"
    assert report.ms(math.nan) == "-"
    assert report.num(None) == "-"


def test_wrk_parse() -> None:
    r = wrk.parse(WRK_OUT)
    assert r.requests == 1000
    assert r.rps == 500.0
    assert r.errors == 3
    assert r.non_2xx == 2
    assert r.p99_s == pytest.approx(0.002)


def test_wrk_parse_without_result_line() -> None:
    with pytest.raises(ValueError):
        wrk.parse("wrk: connection refused\n")


def test_wrk_script_limits_only_when_asked() -> None:
    assert "LIMIT_REACHED" in wrk.script("{}", limited=True)
    assert "LIMIT_REACHED" not in wrk.script("{}", limited=False)


def test_tables_have_a_row_per_system_and_say_why_one_is_missing() -> None:
    floor = SystemResult("direct", concurrent=wrk.parse(WRK_OUT), single=wrk.parse(WRK_OUT))
    floor.cpu_per_request_s = 0.0001
    slow = SystemResult("other", concurrent=wrk.parse(WRK_OUT), single=wrk.parse(WRK_OUT))
    missing = SystemResult("two workers", skipped="n/a (no --workers yet)")
    rows = [floor, slow, missing]
    conc = results.concurrent_table(rows, 64)
    assert "| direct " in conc and "| other " in conc
    assert "n/a (no --workers yet)" in conc
    assert "0.100" in conc  # CPU seconds per 1,000 requests
    single = results.single_table(rows)
    assert "0.000" in single  # added over the floor
    for render in (results.sse_table, results.open_loop_table, results.memory_table):
        assert "n/a (no --workers yet)" in render(rows)


def test_machine_parsers() -> None:
    assert cpu_model("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n") == "AMD EPYC 7B13"
    assert cpu_model("") == "unknown"
    assert mem_total_bytes("MemTotal:       1024 kB\n") == 1024 * 1024


def test_gateway_report_keeps_the_sections_other_benchmarks_own(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    out.write_text(
        "# old gateway text\n\n<!-- bench-routing:begin -->\nrouting\n<!-- bench-routing:end -->\n"
    )
    write_report(out, "# new gateway text\n")
    assert out.read_text() == (
        "# new gateway text\n\n<!-- bench-routing:begin -->\nrouting\n<!-- bench-routing:end -->\n"
    )
    fresh = tmp_path / "fresh.md"
    write_report(fresh, "# only\n")
    assert fresh.read_text() == "# only\n"
