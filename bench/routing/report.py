"""The "Routing" section of docs/benchmarks.md: rendered here, replaced in place on every rerun."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bench.routing.results import RunResult, targets, workload_table

BEGIN = "<!-- bench-routing:begin (make bench-routing rewrites this section) -->"
END = "<!-- bench-routing:end -->"


def replace_section(document: str, section: str, begin: str = BEGIN, end_mark: str = END) -> str:
    """The document with the text between the markers replaced by `section` (markers kept);
    appended at the end when the markers are not there. Everything else is left as it was."""
    block = f"{begin}\n{section.strip()}\n{end_mark}"
    start = document.find(begin)
    end = document.find(end_mark, start + len(begin)) if start >= 0 else -1
    if start >= 0 and end >= 0:
        return document[:start] + block + document[end + len(end_mark) :]
    base = document.rstrip("\n")
    return (base + "\n\n" if base else "") + block + "\n"


def write_section(path: Path, section: str, begin: str = BEGIN, end_mark: str = END) -> None:
    text = path.read_text() if path.exists() else ""
    path.write_text(replace_section(text, section, begin, end_mark))


def render(
    results: Sequence[RunResult],
    workloads: Sequence[tuple[str, str]],
    header_lines: Sequence[str],
) -> str:
    """The section: header (machine, settings), then a table and the targets per workload."""
    lines = ["## Routing", "", *header_lines, ""]
    for name, description in workloads:
        rows = [r for r in results if r.workload == name]
        if not rows:
            continue
        lines += [f"### Workload: {name}", "", description, "", workload_table(rows), ""]
        notes = sorted({f"- {r.system} @ {r.rate:g}/s: {r.note}" for r in rows if r.note})
        if notes:
            lines += [*notes, ""]
        checks = targets(name, rows)
        if checks:
            lines += ["Targets:", "", *(f"- {c}" for c in checks), ""]
    return "\n".join(lines)
