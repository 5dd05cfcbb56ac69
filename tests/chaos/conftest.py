"""The chaos suite's fixtures: the e2e ones (real processes, mutual TLS), and a table of figures
printed at the end of the run."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import cluster_of, ports, spawn  # noqa: F401 - fixtures

_ROWS: list[dict[str, Any]] = []


@pytest.fixture()
def chaos_table() -> list[dict[str, Any]]:
    return _ROWS


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _ROWS:
        return
    columns: list[str] = []
    for row in _ROWS:
        columns += [c for c in row if c not in columns]
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in _ROWS)) for c in columns}
    terminalreporter.section("chaos suite figures")
    terminalreporter.write_line(" | ".join(c.ljust(widths[c]) for c in columns))
    terminalreporter.write_line("-+-".join("-" * widths[c] for c in columns))
    for row in _ROWS:
        terminalreporter.write_line(
            " | ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns)
        )
