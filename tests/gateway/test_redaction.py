"""Redacting personal data from requests, restoring it in answers (gateway/redaction.py)."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from gateway.redaction import (
    Redaction,
    RedactionProfile,
    Redactor,
    StreamRestorer,
    parse_profile,
    restore_json_answer,
    restore_text,
)

DEFAULT = Redactor(RedactionProfile())


def chat(text: str) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}]}


def redact_text(text: str, redactor: Redactor = DEFAULT) -> tuple[str, dict[str, str]]:
    """The redacted user message and the mapping; the text itself when nothing was found."""
    result = redactor.redact(chat(text))
    if result is None:
        return text, {}
    return result.payload["messages"][0]["content"], result.mapping


def test_email_is_replaced() -> None:
    text, mapping = redact_text("write to john.doe+news@mail.example.co.uk today")
    assert text == "write to [EMAIL_1] today"
    assert mapping == {"[EMAIL_1]": "john.doe+news@mail.example.co.uk"}


@pytest.mark.parametrize(
    "phone",
    [
        "+1 415-555-0100",
        "(415) 555-0100",
        "+44 20 7946 0958",
        "415.555.0100",
        "415-555-0100",
        "1-415-555-0100",
        "+14155550100",
        "020 7946 0958",
        "+33 1 23 45 67 89",
        "06 12 34 56 78",
    ],
)
def test_phone_forms_are_replaced(phone: str) -> None:
    text, mapping = redact_text(f"call me on {phone}, thanks")
    assert text == "call me on [PHONE_1], thanks"
    assert mapping == {"[PHONE_1]": phone}


@pytest.mark.parametrize(
    "text",
    [
        "in 2024 we sold 1500 units",
        "it costs $1,234.56 or 99.99 EUR",
        "order 12345 shipped, order 67890 pending",
        "on 2024-01-15 and 01.02.2024 and 12-31-1999",
        "open 08.30-09.45 and 14.00-18.30 daily",
        "host 192.168.100.200 runs v1.22.333",
        "pick 1 2 3 4 5 6 7 8 9",
        "x = n+1000000",
        "pi is 3.14159265358979",
    ],
)
def test_numbers_that_are_not_phones_stay(text: str) -> None:
    assert DEFAULT.redact(chat(text)) is None


@pytest.mark.parametrize(
    "card",
    ["4111 1111 1111 1111", "4111-1111-1111-1111", "4111111111111111", "3782 822463 10005"],
)
def test_luhn_valid_cards_are_replaced(card: str) -> None:
    text, mapping = redact_text(f"pay with {card} please")
    assert text == "pay with [CARD_1] please"
    assert mapping == {"[CARD_1]": card}


def test_cards_failing_luhn_stay_and_are_not_phones() -> None:
    assert DEFAULT.redact(chat("ids 4111111111111112 and 4111 1111 1111 1112")) is None


def test_card_is_found_next_to_other_numbers() -> None:
    text, mapping = redact_text("card 4111111111111111 12/28, ref 7 5500 0000 0000 0004")
    assert text == "card [CARD_1] 12/28, ref 7 [CARD_2]"
    assert mapping["[CARD_2]"] == "5500 0000 0000 0004"


def test_phone_written_just_before_a_card_is_not_lost() -> None:
    text, mapping = redact_text("+1 415 555 0100 4111 1111 1111 1111")
    assert text == "[PHONE_1] [CARD_1]"
    assert mapping == {"[PHONE_1]": "+1 415 555 0100", "[CARD_1]": "4111 1111 1111 1111"}


@pytest.mark.parametrize(
    "key",
    [
        "sk-proj-Abc123def456GHI789jkl012",
        "sk-ant-api03-AbCdEfGhIjKlMnOp1234",
        "lpk_0123456789ab_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefg",
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        "xoxb-1234567890-abcdefghij",
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "dGhpcyBpcyBhIHNlY3JldCB0b2tlbiAxMjM0NTY3OA==",
    ],
)
def test_keys_are_replaced(key: str) -> None:
    text, mapping = redact_text(f"use {key} for it")
    assert text == "use [KEY_1] for it"
    assert mapping == {"[KEY_1]": key}


def test_bearer_token_is_replaced_and_the_word_stays() -> None:
    text, mapping = redact_text("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc123")
    assert text == "Authorization: Bearer [KEY_1]"
    assert mapping == {"[KEY_1]": "eyJhbGciOiJIUzI1NiJ9.e30.abc123"}


def test_words_paths_and_identifiers_are_not_keys() -> None:
    text = (
        "Bearer authentication; see src/components/Button123/index/file.tsx and "
        "get_user_profile_by_identifier_version_2 and supercalifragilisticexpialidocious "
        "and 12345678901234567890123456789012345"
    )
    assert DEFAULT.redact(chat(text)) is None


def test_custom_patterns_are_replaced() -> None:
    profile = parse_profile({"patterns": "EMP-[0-9]{6};PROJ-[A-Z]+", "emails": "false"})
    text, mapping = redact_text("EMP-123456 on PROJ-ATLAS mails a@b.io", Redactor(profile))
    assert text == "[REDACTED_1] on [REDACTED_2] mails a@b.io"
    assert mapping == {"[REDACTED_1]": "EMP-123456", "[REDACTED_2]": "PROJ-ATLAS"}


def test_parse_profile_reads_flags_and_patterns() -> None:
    profile = parse_profile(
        {"emails": "TRUE", "phones": "false", "patterns": " EMP-[0-9]{6} ;; ", "restore": "yes"}
    )
    assert profile == RedactionProfile(
        emails=True, phones=False, cards=True, keys=True, patterns=("EMP-[0-9]{6}",), restore=True
    )
    assert parse_profile({}) == RedactionProfile()


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ({"email": "true"}, "'email'"),
        ({"phones": "maybe"}, "'phones'"),
        ({"patterns": "EMP-[0-9"}, "'patterns'"),
        ({"patterns": r"(a)\1"}, "'patterns'"),
        ({"patterns": "secret(?=x)"}, "'patterns'"),
        ({"patterns": "ok;x*"}, "'patterns'"),
    ],
)
def test_parse_profile_refuses_bad_settings(spec: dict[str, str], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        parse_profile(spec)


def test_same_value_same_placeholder_and_numbering_per_kind() -> None:
    text, mapping = redact_text("a@x.io, b@x.io, a@x.io, (415) 555-0100, a@x.io")
    assert text == "[EMAIL_1], [EMAIL_2], [EMAIL_1], [PHONE_1], [EMAIL_1]"
    assert mapping == {"[EMAIL_1]": "a@x.io", "[EMAIL_2]": "b@x.io", "[PHONE_1]": "(415) 555-0100"}


def test_same_value_across_messages_gets_one_placeholder() -> None:
    payload = {
        "messages": [
            {"role": "system", "content": "the user is a@x.io"},
            {"role": "user", "content": "I am a@x.io"},
        ]
    }
    result = DEFAULT.redact(payload)
    assert result is not None
    assert [m["content"] for m in result.payload["messages"]] == [
        "the user is [EMAIL_1]",
        "I am [EMAIL_1]",
    ]


def test_placeholders_skip_text_already_in_the_prompt() -> None:
    payload = {
        "messages": [
            {"role": "system", "content": "Template: [EMAIL_1] and [EMAIL_2]"},
            {"role": "user", "content": "mine is me@x.io"},
        ]
    }
    result = DEFAULT.redact(payload)
    assert result is not None
    assert result.payload["messages"][1]["content"] == "mine is [EMAIL_3]"
    assert result.mapping == {"[EMAIL_3]": "me@x.io"}
    # The literal placeholders in the prompt are not restored into anything.
    restored = restore_text("[EMAIL_1] [EMAIL_3]", result.mapping)
    assert restored == "[EMAIL_1] me@x.io"


def test_nothing_found_returns_none() -> None:
    assert DEFAULT.redact(chat("hello, how are you in 2024?")) is None
    assert DEFAULT.redact({"model": "m"}) is None
    assert Redactor(RedactionProfile(False, False, False, False)).redact(chat("a@x.io")) is None


def test_disabled_kinds_are_left() -> None:
    redactor = Redactor(RedactionProfile(emails=False, cards=False))
    text, mapping = redact_text("a@x.io 4111111111111111 (415) 555-0100", redactor)
    assert text == "a@x.io 4111111111111111 [PHONE_1]"
    assert list(mapping) == ["[PHONE_1]"]


def test_input_payload_is_not_mutated() -> None:
    payload: dict[str, Any] = {
        "model": "m",
        "temperature": 0.5,
        "messages": [
            {"role": "system", "content": "no data here"},
            {"role": "user", "content": [{"type": "text", "text": "mail a@x.io"}]},
        ],
    }
    before = copy.deepcopy(payload)
    result = DEFAULT.redact(payload)
    assert result is not None
    assert payload == before
    assert result.payload is not payload
    assert result.payload["model"] == "m" and result.payload["temperature"] == 0.5
    # Untouched branches are shared, not copied.
    assert result.payload["messages"][0] is payload["messages"][0]


def test_parts_lists_and_tool_call_arguments() -> None:
    image = {"type": "image_url", "image_url": {"url": "https://x.io/a@b.com.png"}}
    arguments = orjson.dumps({"to": "a@x.io", "n": 3, "cc": ["b@x.io"]}).decode()
    payload = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "to a@x.io"}, image]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "function": {"name": "send", "arguments": arguments}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sent to b@x.io"},
        ]
    }
    result = DEFAULT.redact(payload)
    assert result is not None
    user, assistant, tool = result.payload["messages"]
    assert user["content"] == [{"type": "text", "text": "to [EMAIL_1]"}, image]
    call = assistant["tool_calls"][0]
    assert orjson.loads(call["function"]["arguments"]) == {
        "to": "[EMAIL_1]",
        "n": 3,
        "cc": ["[EMAIL_2]"],
    }
    assert call["function"]["name"] == "send" and call["id"] == "c1"
    assert tool["content"] == "sent to [EMAIL_2]"


def test_tool_arguments_that_are_not_json_are_redacted_as_text() -> None:
    payload = {
        "messages": [
            {"role": "assistant", "tool_calls": [{"function": {"arguments": "{to: a@x.io"}}]}
        ]
    }
    result = DEFAULT.redact(payload)
    assert result is not None
    arguments = result.payload["messages"][0]["tool_calls"][0]["function"]["arguments"]
    assert arguments == "{to: [EMAIL_1]"


def test_anthropic_system_tool_results_and_tool_inputs() -> None:
    payload = {
        "model": "claude",
        "system": [{"type": "text", "text": "Operator: op@x.io"}],
        "messages": [
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "t1", "name": "f", "input": {"who": {"e": "a@x.io"}}}
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "found b@x.io"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "t2",
                        "content": [{"type": "text", "text": "and c@x.io"}],
                    },
                ],
            },
        ],
    }
    result = DEFAULT.redact(payload)
    assert result is not None
    assert result.payload["system"] == [{"type": "text", "text": "Operator: [EMAIL_1]"}]
    use = result.payload["messages"][0]["content"][0]
    assert use["input"] == {"who": {"e": "[EMAIL_2]"}} and use["name"] == "f"
    first, second = result.payload["messages"][1]["content"]
    assert first["content"] == "found [EMAIL_3]"
    assert second["content"] == [{"type": "text", "text": "and [EMAIL_4]"}]
    assert DEFAULT.redact({"system": "Operator: op@x.io"}) == Redaction(
        payload={"system": "Operator: [EMAIL_1]"}, mapping={"[EMAIL_1]": "op@x.io"}
    )


def test_deeply_nested_tool_input_is_refused() -> None:
    deep: Any = "a@x.io"
    for _ in range(100):
        deep = {"k": deep}
    payload = {
        "messages": [{"role": "assistant", "content": [{"type": "tool_use", "input": deep}]}]
    }
    with pytest.raises(ValueError, match="nested deeper"):
        DEFAULT.redact(payload)


def test_completions_prompt_and_embeddings_input() -> None:
    result = DEFAULT.redact({"prompt": ["hi a@x.io", "plain", [1, 2, 3]], "max_tokens": 5})
    assert result is not None
    assert result.payload == {"prompt": ["hi [EMAIL_1]", "plain", [1, 2, 3]], "max_tokens": 5}
    result = DEFAULT.redact({"input": "embed a@x.io"})
    assert result is not None and result.payload == {"input": "embed [EMAIL_1]"}
    assert DEFAULT.redact({"input": [[101, 4111111111111111]], "prompt": [5, 6]}) is None


def test_restore_text_round_trip() -> None:
    original = "Mail a@x.io or call (415) 555-0100 with sk-proj-Abc123def456GHI789jkl012."
    redacted, mapping = redact_text(original)
    assert "a@x.io" not in redacted
    assert restore_text(redacted, mapping) == original
    assert restore_text("[EMAIL_9] and [NAME_1] stay", mapping) == "[EMAIL_9] and [NAME_1] stay"


def test_restore_openai_json_answer() -> None:
    mapping = {"[EMAIL_1]": "a@x.io", "[REDACTED_1]": 'say "hi"'}
    answer = {
        "id": "c",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Sure, [EMAIL_1].",
                    "tool_calls": [
                        {
                            "function": {
                                "name": "f",
                                "arguments": '{"to": "[EMAIL_1]", "m": "[REDACTED_1]"}',
                            }
                        }
                    ],
                },
            },
            {"index": 1, "text": "done for [EMAIL_1]"},
        ],
        "usage": {"total_tokens": 7},
    }
    restored = orjson.loads(restore_json_answer(orjson.dumps(answer), mapping))
    message = restored["choices"][0]["message"]
    assert message["content"] == "Sure, a@x.io."
    # The original with quotes in it is escaped inside the JSON arguments.
    arguments = orjson.loads(message["tool_calls"][0]["function"]["arguments"])
    assert arguments == {"to": "a@x.io", "m": 'say "hi"'}
    assert restored["choices"][1]["text"] == "done for a@x.io"
    assert restored["usage"] == {"total_tokens": 7}


def test_restore_anthropic_json_answer() -> None:
    mapping = {"[EMAIL_1]": "a@x.io", "[PHONE_1]": "(415) 555-0100"}
    answer = {
        "type": "message",
        "content": [
            {"type": "text", "text": "Calling [PHONE_1]"},
            {
                "type": "tool_use",
                "name": "f",
                "input": {"to": ["[EMAIL_1]"], "n": {"k": "[EMAIL_1]"}},
            },
        ],
    }
    restored = orjson.loads(restore_json_answer(orjson.dumps(answer), mapping))
    assert restored["content"][0]["text"] == "Calling (415) 555-0100"
    assert restored["content"][1]["input"] == {"to": ["a@x.io"], "n": {"k": "a@x.io"}}


def test_restore_json_answer_returns_the_same_bytes_when_nothing_changes() -> None:
    mapping = {"[EMAIL_1]": "a@x.io"}
    body = b'{"choices": [{"message": {"content": "no [placeholder] here"}}]}'
    assert restore_json_answer(body, mapping) is body
    assert restore_json_answer(b"not json [EMAIL_1]", mapping) == b"not json [EMAIL_1]"
    unlisted = b'{"id": "[EMAIL_1]", "choices": []}'
    assert restore_json_answer(unlisted, mapping) is unlisted


MAPPING = {"[EMAIL_1]": "a@x.io", "[PHONE_12]": "(415) 555-0100"}
STREAMED = "Mail [EMAIL_1] now, [PHONE_12] later; [EMAIL_2] and [ stay [EMAIL_1]"
RESTORED = "Mail a@x.io now, (415) 555-0100 later; [EMAIL_2] and [ stay a@x.io"


def test_stream_restorer_across_every_chunk_boundary() -> None:
    for cut in range(len(STREAMED) + 1):
        restorer = StreamRestorer(MAPPING)
        out = restorer.feed(STREAMED[:cut]) + restorer.feed(STREAMED[cut:]) + restorer.flush()
        assert out == RESTORED, cut


def test_stream_restorer_one_character_at_a_time() -> None:
    restorer = StreamRestorer(MAPPING)
    emitted = [restorer.feed(ch) for ch in STREAMED]
    assert "".join(emitted) + restorer.flush() == RESTORED


def test_stream_restorer_holds_back_less_than_a_placeholder() -> None:
    restorer = StreamRestorer(MAPPING)
    text = "x [EMAIL_ [PHONE_1 [PHONE_12 [EMAIL_2 y"  # prefixes, never a whole placeholder
    out = ""
    for i, ch in enumerate(text):
        out += restorer.feed(ch)
        assert text.startswith(out)
        assert i + 1 - len(out) < len("[PHONE_12]")
    assert out == text


def test_stream_restorer_emits_a_held_prefix_once_it_cannot_be_a_placeholder() -> None:
    restorer = StreamRestorer(MAPPING)
    assert restorer.feed("Mail [EMA") == "Mail "
    assert restorer.feed("X] now") == "[EMAX] now"
    assert restorer.feed("end [EM") == "end "
    assert restorer.flush() == "[EM"
    assert StreamRestorer({}).feed("[EMA") == "[EMA"


def test_one_megabyte_prompt() -> None:
    line = "Contact user{}@example.com or +1 415-555-{:04d} about order 12345 in 2024. "
    text = "".join(line.format(i, i) for i in range(10_000))
    text += "filler text without data " * ((1_000_000 - len(text)) // 25 + 1)
    assert len(text) >= 1_000_000
    result = DEFAULT.redact(chat(text))
    assert result is not None
    kinds = [placeholder.split("_")[0] for placeholder in result.mapping]
    assert kinds.count("[EMAIL") == 10_000
    assert kinds.count("[PHONE") == 10_000
    content = result.payload["messages"][0]["content"]
    assert content.count("[EMAIL_") == 10_000 and "@example.com" not in content
