"""`llm-pool gateway`: parse flags and environment, set up logging, serve."""

from __future__ import annotations

from gateway.settings import parse_settings
from llmpool.logs import setup_logging


def main(argv: list[str]) -> int:
    settings = parse_settings(argv)
    setup_logging("gateway", settings.log_level, settings.log_json)
    if settings.workers > 1:
        from gateway.workers import run_workers

        return run_workers(settings)
    from gateway.server import run

    return run(settings)
