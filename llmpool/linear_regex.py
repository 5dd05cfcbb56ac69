"""Regexes from users, compiled with RE2: matching takes time linear in the input, whatever the
pattern (Python's `re` backtracks: `^(a+)+$` on 29 bytes froze a gateway for seconds).

RE2 has no backreferences or lookaround; a pattern that needs them is refused with that reason.
"""

from __future__ import annotations

from typing import Protocol

import re2

# Longest pattern accepted, and the memory RE2 may use to compile one.
MAX_PATTERN_CHARS = 1000
_MAX_MEM = 8 * 1024 * 1024


class Pattern(Protocol):
    def search(self, text: str) -> object | None: ...


class RegexError(ValueError):
    """The pattern cannot be used; the message says why."""


def _options() -> re2.Options:
    options = re2.Options()
    options.max_mem = _MAX_MEM
    # Errors come back as exceptions with the reason; RE2's own stderr lines would be noise.
    options.log_errors = False
    return options


def compile_linear(pattern: str) -> Pattern:
    if len(pattern) > MAX_PATTERN_CHARS:
        raise RegexError(f"longer than {MAX_PATTERN_CHARS} characters")
    try:
        compiled: Pattern = re2.compile(pattern, _options())
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise RegexError(
            f"{reason} (patterns run on RE2, which matches in linear time: no backreferences "
            "or lookaround)"
        ) from None
    return compiled
