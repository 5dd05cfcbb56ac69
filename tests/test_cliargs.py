"""Flags with environment defaults (llmpool.cliargs) and every command's use of them."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import Callable, Mapping

import pytest

from agent.cli import build_parser as agent_parser
from controller.cli import build_parser as controller_parser
from gateway.settings import build_parser as gateway_parser
from llmpool.cliargs import add_logging_options, env_option, parse_bool, run_until_signal
from llmpool.sim.cli import build_parser as sim_parser
from llmpool.up import parse_args as up_parse_args


def parser_with(env: Mapping[str, str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="t")
    env_option(p, "--count", env, "LLMPOOL_T_COUNT", 3, "how many", type=int)
    env_option(p, "--name", env, ["LLMPOOL_T_NAME", "LLMPOOL_NAME"], "x", "a name")
    add_logging_options(p, env)
    return p


def test_default_without_env() -> None:
    args = parser_with({}).parse_args([])
    assert (args.count, args.name, args.log_level, args.log_json) == (3, "x", "info", False)


def test_env_gives_the_default_and_the_flag_wins() -> None:
    env = {"LLMPOOL_T_COUNT": "7", "LLMPOOL_NAME": "common"}
    assert parser_with(env).parse_args([]).count == 7
    assert parser_with(env).parse_args(["--count", "9"]).count == 9
    assert parser_with(env).parse_args([]).name == "common"
    # The first variable listed wins over the later ones.
    assert parser_with({**env, "LLMPOOL_T_NAME": "own"}).parse_args([]).name == "own"
    # An empty variable counts as unset.
    assert parser_with({"LLMPOOL_T_COUNT": ""}).parse_args([]).count == 3


def test_help_names_the_variable_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parser_with({}).parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "how many [env LLMPOOL_T_COUNT; default: 3]" in out
    assert "[env LLMPOOL_T_NAME or LLMPOOL_NAME; default: x]" in out
    assert "[env LLMPOOL_LOG_LEVEL; default: info]" in out


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"LLMPOOL_T_COUNT": "many"}, "LLMPOOL_T_COUNT='many'"),
        ({"LLMPOOL_LOG_LEVEL": "loud"}, "LLMPOOL_LOG_LEVEL='loud'"),
        ({"LLMPOOL_LOG_FORMAT": "xml"}, "LLMPOOL_LOG_FORMAT='xml'"),
        ({"LLMPOOL_LOG_JSON": "maybe"}, "LLMPOOL_LOG_JSON='maybe'"),
    ],
)
def test_bad_env_value_exits_2_naming_the_variable(
    env: dict[str, str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        parser_with(env)
    assert info.value.code == 2
    assert needle in capsys.readouterr().err


@pytest.mark.parametrize(
    ("env", "argv", "level", "json_lines"),
    [
        ({"LLMPOOL_LOG_LEVEL": "DEBUG"}, [], "debug", False),
        ({"LLMPOOL_LOG_LEVEL": "debug"}, ["--log-level", "ERROR"], "error", False),
        ({"LLMPOOL_LOG_FORMAT": "json"}, [], "info", True),
        ({"LLMPOOL_LOG_FORMAT": "TEXT", "LLMPOOL_LOG_JSON": "1"}, [], "info", False),
        ({"LLMPOOL_LOG_JSON": "true"}, [], "info", True),
        ({"LLMPOOL_LOG_JSON": "0"}, ["--log-json"], "info", True),
        ({"LLMPOOL_LOG_FORMAT": "json"}, ["--no-log-json"], "info", False),
    ],
)
def test_logging_options(
    env: dict[str, str], argv: list[str], level: str, json_lines: bool
) -> None:
    args = parser_with(env).parse_args(argv)
    assert (args.log_level, args.log_json) == (level, json_lines)


def test_a_commands_own_logging_variables_win() -> None:
    def parse(env: dict[str, str]) -> argparse.Namespace:
        p = argparse.ArgumentParser()
        add_logging_options(p, env, command_prefix="LLMPOOL_SIM_")
        return p.parse_args([])

    args = parse({"LLMPOOL_SIM_LOG_LEVEL": "warning", "LLMPOOL_LOG_LEVEL": "debug"})
    assert args.log_level == "warning"
    assert parse({"LLMPOOL_LOG_LEVEL": "debug"}).log_level == "debug"
    assert parse({"LLMPOOL_SIM_LOG_JSON": "0", "LLMPOOL_LOG_FORMAT": "json"}).log_json is False
    assert parse({"LLMPOOL_LOG_FORMAT": "json"}).log_json is True


def test_parse_bool() -> None:
    assert [parse_bool(v) for v in ("1", "True", "yes", "on", "0", "false", "NO", "off")] == [
        *[True] * 4,
        *[False] * 4,
    ]
    with pytest.raises(ValueError):
        parse_bool("2")


Build = Callable[[Mapping[str, str]], argparse.ArgumentParser]


@pytest.mark.parametrize(
    "build",
    [controller_parser, agent_parser, gateway_parser, sim_parser],
    ids=["controller", "agent", "gateway", "sim"],
)
def test_every_command_reads_the_common_logging_variables(build: Build) -> None:
    env = {"LLMPOOL_LOG_LEVEL": "Warning", "LLMPOOL_LOG_FORMAT": "json"}
    args = build(env).parse_args(["--port", "0"] if build is sim_parser else [])
    assert (args.log_level, args.log_json) == ("warning", True)


def test_up_reads_the_same_variables() -> None:
    s = up_parse_args([], {"LLMPOOL_LOG_JSON": "1", "LLMPOOL_GATEWAY_LISTEN": "0.0.0.0:9000"})
    assert (s.log_json, s.log_level, s.gateway_listen, s.config) == (
        True,
        "info",
        "0.0.0.0:9000",
        None,
    )


def test_defaults_of_the_commands_are_unchanged() -> None:
    c = controller_parser({}).parse_args([])
    assert (c.listen, c.data_dir, c.config, c.lease_s) == ("127.0.0.1:50051", "./data", "", 5.0)
    assert c.metrics_listen == "127.0.0.1:9101" and c.report_interval_s == 1.0
    a = agent_parser({}).parse_args([])
    assert (a.controller, a.port_range, a.metrics_listen) == (
        "127.0.0.1:50051",
        "20000-29999",
        "127.0.0.1:9102",
    )
    assert (a.report_interval_s, a.log_lines, a.cpu_slots) == (1.0, 1000, os.cpu_count() or 1)
    u = up_parse_args([], {})
    assert (u.controller_listen, u.data_dir.as_posix(), u.controller_metrics_listen) == (
        "127.0.0.1:50051",
        "data",
        "127.0.0.1:9101",
    )


def test_sim_port_may_come_from_the_environment(capsys: pytest.CaptureFixture[str]) -> None:
    assert sim_parser({"LLMPOOL_SIM_PORT": "8123"}).parse_args([]).port == 8123
    with pytest.raises(SystemExit) as info:
        sim_parser({}).parse_args([])
    assert info.value.code == 2 and "--port" in capsys.readouterr().err


async def test_run_until_signal_sets_stop_and_removes_its_handlers() -> None:
    async def main(stop: asyncio.Event) -> str:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(stop.wait(), 5)
        return "stopped"

    assert await run_until_signal(main) == "stopped"
    loop = asyncio.get_running_loop()
    assert not loop.remove_signal_handler(signal.SIGTERM)
