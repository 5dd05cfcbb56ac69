"""Requests that ask for unbounded work are refused with a 400 that names the field; rule
regexes match in linear time."""

from __future__ import annotations

import orjson
import pytest

from gateway.errors import BadRequestError
from gateway.parsing import MAX_INPUT_TOKENS, MAX_INPUTS, Endpoint, parse_request
from llmpool.linear_regex import RegexError, compile_linear
from llmpool.rule_checks import RouteGraphError, check_regex


def parse(endpoint: Endpoint, payload: dict[str, object]) -> object:
    return parse_request(endpoint, orjson.dumps(payload))


@pytest.mark.parametrize(
    ("endpoint", "payload", "param"),
    [
        (Endpoint.EMBEDDINGS, {"model": "e", "input": ["x"] * (MAX_INPUTS + 1)}, "input"),
        (Endpoint.EMBEDDINGS, {"model": "e", "input": [[1] * 200_000, [2] * 200_000]}, "input"),
        (Endpoint.EMBEDDINGS, {"model": "e", "input": []}, "input"),
        (Endpoint.COMPLETIONS, {"model": "m", "prompt": [1] * (MAX_INPUT_TOKENS + 1)}, "prompt"),
        (Endpoint.COMPLETIONS, {"model": "m", "prompt": ["p"] * (MAX_INPUTS + 1)}, "prompt"),
        (Endpoint.CHAT, {"model": "m", "messages": [{"role": "user"}], "n": 100_000}, "n"),
        (Endpoint.CHAT, {"model": "m", "messages": [{"role": "user"}], "n": 1.5}, "n"),
        (Endpoint.CHAT, {"model": "m", "messages": [{"role": "user"}], "n": True}, "n"),
        (Endpoint.CHAT, {"model": "m" * 300, "messages": [{"role": "user"}]}, "model"),
    ],
)
def test_unbounded_asks_are_400_naming_the_field(
    endpoint: Endpoint, payload: dict[str, object], param: str
) -> None:
    with pytest.raises(BadRequestError) as info:
        parse(endpoint, payload)
    assert info.value.param == param


def test_the_largest_allowed_asks_pass() -> None:
    parse(Endpoint.EMBEDDINGS, {"model": "e", "input": ["x"] * MAX_INPUTS})
    parse(Endpoint.EMBEDDINGS, {"model": "e", "input": [[1, 2, 3]] * 10})
    parse(Endpoint.CHAT, {"model": "m", "messages": [{"role": "user"}], "n": 128})


def test_catastrophic_patterns_match_in_linear_time() -> None:
    # Python's re takes longer than the universe's age on this; RE2 answers at once.
    pattern = compile_linear(r"^(a+)+$")
    assert pattern.search("a" * 100_000 + "b") is None
    assert pattern.search("aaaa") is not None


def test_patterns_that_need_backtracking_are_refused_with_why() -> None:
    for bad in (r"(a)\1", r"(?=x)y", r"x{1,100000}"):
        with pytest.raises(RegexError):
            compile_linear(bad)
    with pytest.raises(RouteGraphError, match="linear time"):
        check_regex("rules[0].prompt_regex", r"(\w+)\s\1")
