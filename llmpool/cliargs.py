"""Command-line flags whose defaults come from environment variables, alike in every command."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, NoReturn, TypeVar

T = TypeVar("T")

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_LEVEL_VAR = "LLMPOOL_LOG_LEVEL"
LOG_FORMAT_VAR = "LLMPOOL_LOG_FORMAT"
# Accepted for compatibility with the controller's and agent's first releases.
LOG_JSON_VAR = "LLMPOOL_LOG_JSON"

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def parse_bool(value: str) -> bool:
    """'1', 'true', 'yes', 'on' (any case) -> True; '0', 'false', 'no', 'off' -> False."""
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("expected one of 1/true/yes/on or 0/false/no/off")


def lookup(env: Mapping[str, str], names: Sequence[str]) -> tuple[str, str] | None:
    """(name, value) of the first variable in `names` that is set and not empty, else None."""
    for name in names:
        value = env.get(name, "")
        if value != "":
            return name, value
    return None


def env_help(text: str, names: str | Sequence[str], shown: str) -> str:
    """`text [env NAME; default: X]` (`shown` is "default: X" or "required"), the same in every
    command's --help; several names are joined with "or", first one wins."""
    joined = " or ".join(_names(names))
    return f"{text} [env {joined}; {shown}]".replace("%", "%%")


def bad_env(
    parser: argparse.ArgumentParser, name: str, value: str, flag: str, why: str
) -> NoReturn:
    """Exits 2 with `prog: error: NAME='value' is not a valid value for --flag: why`."""
    parser.exit(
        2, f"{parser.prog}: error: {name}={value!r} is not a valid value for {flag}: {why}\n"
    )


def env_option(
    parser: argparse.ArgumentParser,
    flag: str,
    env: Mapping[str, str],
    names: str | Sequence[str],
    default: Any,
    help: str,
    *,
    type: Callable[[str], Any] = str,
    choices: Iterable[Any] | None = None,
    shown: str | None = None,
    required: bool = False,
    metavar: str | None = None,
) -> None:
    """Adds `flag`, whose default is the first set variable of `names`, else `default`.

    The variable's value goes through `type` (and `choices`) now, so a bad one exits 2 with a
    message that names the variable; the flag, when given, wins. `shown` replaces `default` in
    the help where the default is computed (a hostname, a CPU count). With `required`, the flag
    may be left out only when a variable is set.
    """
    allowed = None if choices is None else tuple(choices)
    found = lookup(env, _names(names))
    value = default
    if found is not None:
        name, raw = found
        try:
            value = type(raw)
        except (ValueError, TypeError) as exc:
            bad_env(parser, name, raw, flag, str(exc) or "cannot be parsed")
        if allowed is not None and value not in allowed:
            bad_env(parser, name, raw, flag, "choose from " + ", ".join(map(str, allowed)))
    if shown is None:
        shown = (
            "required" if required else f"default: {'none' if default in (None, '') else default}"
        )
    else:
        shown = f"default: {shown}"
    parser.add_argument(
        flag,
        type=type,
        default=value,
        choices=allowed,
        required=required and found is None,
        metavar=metavar,
        help=env_help(help, names, shown),
    )


def add_logging_options(
    parser: argparse.ArgumentParser, env: Mapping[str, str], *, command_prefix: str = ""
) -> None:
    """--log-level (LLMPOOL_LOG_LEVEL) and --log-json (LLMPOOL_LOG_FORMAT=json or text).

    LLMPOOL_LOG_JSON=1/0 is read when LLMPOOL_LOG_FORMAT is unset. A `command_prefix` such as
    "LLMPOOL_SIM_" keeps a command's own PREFIXLOG_LEVEL and PREFIXLOG_JSON working; they win
    over the common variables.
    """
    level_names = [f"{command_prefix}LOG_LEVEL"] if command_prefix else []
    env_option(
        parser,
        "--log-level",
        env,
        [*level_names, LOG_LEVEL_VAR],
        "info",
        "least severe level logged",
        type=str.lower,
        choices=LOG_LEVELS,
    )
    json_names = [f"{command_prefix}LOG_JSON"] if command_prefix else []
    found = lookup(env, [*json_names, LOG_FORMAT_VAR, LOG_JSON_VAR])
    json_lines = False
    if found is not None:
        name, raw = found
        if name == LOG_FORMAT_VAR:
            fmt = raw.strip().lower()
            if fmt not in ("json", "text"):
                bad_env(parser, name, raw, "--log-json", "choose from json, text")
            json_lines = fmt == "json"
        else:
            try:
                json_lines = parse_bool(raw)
            except ValueError as exc:
                bad_env(parser, name, raw, "--log-json", str(exc))
    shown = " or ".join(
        [*(f"{n}=1" for n in json_names), f"{LOG_FORMAT_VAR}=json", f"{LOG_JSON_VAR}=1"]
    )
    parser.add_argument(
        "--log-json",
        action="store_true",
        default=json_lines,
        help=f"one JSON object per log line [env {shown}; default: off]",
    )
    parser.add_argument(
        "--no-log-json",
        dest="log_json",
        action="store_false",
        default=json_lines,
        help="text log lines, whatever the environment says",
    )


async def run_until_signal(
    main: Callable[[asyncio.Event], Awaitable[T]],
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
) -> T:
    """Runs `main(stop)` with `stop` set by SIGTERM or SIGINT; main decides how to wind down."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        return await main(stop)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def _names(names: str | Sequence[str]) -> list[str]:
    return [names] if isinstance(names, str) else list(names)
