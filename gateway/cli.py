"""`llm-pool gateway`: parse flags and environment, set up logging, serve."""

from __future__ import annotations

import sys

from gateway.settings import parse_settings
from llmpool.errors import LLMPoolError
from llmpool.logs import setup_logging


def main(argv: list[str]) -> int:
    settings = parse_settings(argv)
    setup_logging("gateway", settings.log_level, settings.log_json)
    if settings.controller_tls is not None:
        try:
            # Checked once here so that a missing file stops start-up with a clear message.
            settings.controller_tls.read()
        except LLMPoolError as exc:
            print(f"llm-pool gateway: {exc}", file=sys.stderr)
            return 2
    if settings.workers > 1:
        from gateway.workers import run_workers

        return run_workers(settings)
    from gateway.server import run

    return run(settings)
