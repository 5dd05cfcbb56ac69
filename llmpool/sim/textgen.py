"""Deterministic output: words seeded by the prompt, tool-call arguments from a JSON schema."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

_VOCABULARY = (
    "the of and to in is that for it as with on be by this are from at or an was which not but "
    "model token batch cache prefix block engine route pool queue latency replica gateway agent "
    "controller request stream health load decode prefill memory server answer simple fast value"
).split()


def prompt_seed(prompt: str) -> int:
    """A stable seed from the prompt text (same prompt, same answer)."""
    return int.from_bytes(hashlib.blake2b(prompt.encode(), digest_size=8).digest(), "little")


def output_token(seed: int, index: int) -> str:
    """The text of generated token `index`: one vocabulary word with a leading space."""
    mixed = (seed ^ (index * 0x9E3779B97F4A7C15)) & 0xFFFFFFFFFFFFFFFF
    mixed = (mixed * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    mixed ^= mixed >> 31
    return " " + _VOCABULARY[mixed % len(_VOCABULARY)]


def _sample_value(schema: Any) -> Any:
    kind = schema.get("type") if isinstance(schema, dict) else None
    if kind == "string":
        enum = schema.get("enum")
        return enum[0] if isinstance(enum, list) and enum else "sim"
    if kind == "integer":
        return 1
    if kind == "number":
        return 1.0
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    if kind == "object":
        return {}
    return None


def tool_arguments(parameters: Any) -> str:
    """Compact JSON arguments with one plain value per required property of the schema."""
    if not isinstance(parameters, dict):
        return "{}"
    props = parameters.get("properties")
    required = parameters.get("required")
    if not isinstance(props, dict) or not isinstance(required, list):
        return "{}"
    args = {name: _sample_value(props.get(name)) for name in required if isinstance(name, str)}
    return orjson.dumps(args).decode()
