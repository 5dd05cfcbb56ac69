"""Markdown tables and number formatting for the benchmark report."""

from __future__ import annotations

import math
from collections.abc import Sequence


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table; the first column is left-aligned, the others right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row has {len(row)} cells, headers {len(headers)}: {row!r}")
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + "-" if i == 0 else "-" * (w + 1) + ":") for i, w in enumerate(widths)
        )
        + "|"
    )
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def _bad(value: float | None) -> bool:
    return value is None or math.isnan(value) or math.isinf(value)


def ms(seconds: float | None, digits: int = 2) -> str:
    """Seconds shown as milliseconds."""
    return "-" if seconds is None or _bad(seconds) else f"{seconds * 1000:.{digits}f}"


def us(seconds: float | None) -> str:
    """Seconds shown as whole microseconds."""
    return "-" if seconds is None or _bad(seconds) else f"{seconds * 1e6:.0f}"


def mib(n_bytes: float | None) -> str:
    return "-" if n_bytes is None or _bad(n_bytes) else f"{n_bytes / 2**20:.1f}"


def num(value: float | None, digits: int = 0) -> str:
    """A number with thousands separators."""
    return "-" if value is None or _bad(value) else f"{value:,.{digits}f}"
