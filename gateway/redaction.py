"""Redaction of personal data in request payloads bound for a remote provider, and restoration
of the placeholders in its answers.

Every regex runs on RE2, so matching is linear in the text whatever it holds; the module logs
nothing, so prompt text cannot leak into logs from here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from itertools import accumulate, pairwise
from typing import Any, Protocol, cast

import orjson

from llmpool.linear_regex import RegexError, compile_linear

Span = tuple[int, int]
TextFn = Callable[[str], str]
Find = Callable[[str], Iterator[Span]]

KINDS = ("EMAIL", "PHONE", "CARD", "KEY", "REDACTED")
# Payloads and tool inputs nest a few levels; deeper JSON is refused, not sent half-redacted.
MAX_DEPTH = 64

_FLAGS = ("emails", "phones", "cards", "keys", "restore")
_BOOLS = {"true": True, "yes": True, "on": True, "1": True}
_BOOLS |= {"false": False, "no": False, "off": False, "0": False}


@dataclass(frozen=True, slots=True)
class RedactionProfile:
    """What to redact; `patterns` are custom regexes, `restore` puts originals back in answers."""

    emails: bool = True
    phones: bool = True
    cards: bool = True
    keys: bool = True
    patterns: tuple[str, ...] = ()
    restore: bool = False


@dataclass(frozen=True, slots=True)
class Redaction:
    """The payload to send instead of the original, and placeholder -> original."""

    payload: dict[str, Any]
    mapping: dict[str, str]


class _Match(Protocol):
    def start(self, group: int = ...) -> int: ...
    def end(self, group: int = ...) -> int: ...
    def group(self) -> str: ...
    def span(self) -> Span: ...


class _Finder(Protocol):
    def search(self, text: str) -> object | None: ...
    def finditer(self, text: str) -> Iterator[_Match]: ...


def _compile(pattern: str) -> _Finder:
    # compile_linear promises only `search`; the RE2 object it returns also has `finditer`,
    # which (unlike `search(text, pos)`, which re-encodes the whole text per call) is linear.
    return cast(_Finder, compile_linear(pattern))


def parse_profile(spec: Mapping[str, str]) -> RedactionProfile:
    """A profile from flat settings: {"phones": "false", "patterns": "EMP-[0-9]{6};X-[A-Z]+"}."""
    unknown = sorted(set(spec) - {*_FLAGS, "patterns"})
    if unknown:
        known = ", ".join((*_FLAGS, "patterns"))
        raise ValueError(f"unknown redaction setting {unknown[0]!r} (known: {known})")
    patterns = tuple(p.strip() for p in spec.get("patterns", "").split(";") if p.strip())
    for pattern in patterns:
        _compile_custom(pattern)
    return RedactionProfile(
        emails=_flag(spec, "emails", True),
        phones=_flag(spec, "phones", True),
        cards=_flag(spec, "cards", True),
        keys=_flag(spec, "keys", True),
        patterns=patterns,
        restore=_flag(spec, "restore", False),
    )


def _flag(spec: Mapping[str, str], key: str, default: bool) -> bool:
    if key not in spec:
        return default
    value = _BOOLS.get(spec[key].strip().lower())
    if value is None:
        raise ValueError(f"redaction setting {key!r}: {spec[key]!r} is not true or false")
    return value


def _compile_custom(pattern: str) -> _Finder:
    try:
        finder = _compile(pattern)
    except RegexError as exc:
        raise ValueError(f"redaction setting 'patterns': {pattern!r}: {exc}") from None
    # A pattern matching "" would match between every two characters and redact nothing.
    if finder.search("") is not None:
        raise ValueError(f"redaction setting 'patterns': {pattern!r} matches the empty string")
    return finder


_PLACEHOLDER = _compile(r"\[(?:EMAIL|PHONE|CARD|KEY|REDACTED)_[0-9]+\]")
_EMAIL = _compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# Vendor key shapes; group 1 is the token after "Bearer" (the word itself stays readable).
_KEY = _compile(
    r"\b(?:sk-[A-Za-z0-9_-]{16,}|lpk_[A-Za-z0-9_-]{16,}|AKIA[0-9A-Z]{16}\b"
    r"|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|xox[abprs]-[A-Za-z0-9-]{10,})"
    r"|\b(?i:bearer)[ \t]+([A-Za-z0-9._~+/=-]{8,})"
)
# Unnamed tokens: runs of base64/hex characters, judged by _looks_random.
_TOKEN = _compile(r"[A-Za-z0-9+/_-]{32,}={0,2}")
# Runs of 13+ digits with single space or dash separators; _cards_in_run finds the cards.
_CARD_RUN = _compile(r"\b[0-9](?:[ -]?[0-9]){12,}\b")
# International (+...) forms, then national ones: (415) 555-0100, [1-]415-555-0100, and
# trunk-prefixed 020 7946 0958. Unseparated national numbers look like ids and are left.
_PHONE = _compile(
    r"\+[0-9]{1,3}(?:[ .-]?(?:\([0-9]{1,4}\)|[0-9]{1,6})){1,6}\b"
    r"|\([0-9]{2,4}\)[ .-]?[0-9]{3,4}[ .-]?[0-9]{3,4}\b"
    r"|\b(?:1[ .-])?[0-9]{3}[ .-][0-9]{3}[ .-][0-9]{4}\b"
    r"|\b0[0-9]{1,4}(?:[ .-][0-9]{2,8}){1,4}\b"
)
# The digit sum of each digit doubled, for Luhn; and what a phone match holds besides digits.
_DOUBLED = str.maketrans("0123456789", "0246813579")
_NON_DIGITS = str.maketrans("", "", "+() .-")


def _matches(finder: _Finder, text: str) -> Iterator[Span]:
    for m in finder.finditer(text):
        start, end = m.span()
        if end > start:
            yield start, end


def _key_spans(text: str) -> Iterator[Span]:
    for m in _KEY.finditer(text):
        if m.start(1) < 0:
            yield m.start(), m.end()
        elif any(ch.isdigit() for ch in text[m.start(1) : m.end(1)]):
            # "Bearer authentication" in prose is a word, not a token.
            yield m.start(1), m.end(1)


def _token_spans(text: str) -> Iterator[Span]:
    for m in _TOKEN.finditer(text):
        start, end = m.span()
        if _looks_random(text[start : start + 64]):
            yield start, end


def _looks_random(token: str) -> bool:
    """Secrets switch between upper, lower and digit all the time; paths, snake_case names and
    numbers hold one class for long runs. Separators are skipped, so `/` or `_` do not count."""
    classes = [0 if ch.islower() else 1 if ch.isupper() else 2 for ch in token if ch.isalnum()]
    if 2 not in classes or classes.count(2) == len(classes):
        return False
    changes = sum(a != b for a, b in pairwise(classes))
    return changes * 5 >= len(classes)


def _card_spans(text: str) -> Iterator[Span]:
    for m in _CARD_RUN.finditer(text):
        yield from _cards_in_run(text, *m.span())


def _cards_in_run(text: str, start: int, end: int) -> Iterator[Span]:
    groups = text[start:end].replace("-", " ").split(" ")
    sizes = [len(g) for g in groups]
    offsets = list(accumulate((size + 1 for size in sizes), initial=start))
    i = 0
    while i < len(groups):
        used = _card_at(groups, sizes, i)
        if used:
            yield offsets[i], offsets[i + used] - 1
        i += used or 1


def _card_at(groups: list[str], sizes: list[int], i: int) -> int:
    """How many groups from i make a card (0: none): a card layout whose digits pass Luhn."""
    if 13 <= sizes[i] <= 19:
        counts: tuple[int, ...] = (1,)
    elif sizes[i] == 4 and sizes[i + 1 : i + 4] == [4, 4, 4]:  # 4-4-4-4, or 4-4-4-4-1..3
        counts = (5, 4) if sizes[i + 4 : i + 5] in ([1], [2], [3]) else (4,)
    elif sizes[i : i + 2] == [4, 6] and sizes[i + 2 : i + 3] in ([4], [5]):  # Diners, Amex
        counts = (3,)
    else:
        return 0
    for n in counts:
        if _luhn("".join(groups[i : i + n])):
            return n
    return 0


def _luhn(digits: str) -> bool:
    # Summed as bytes (each digit is its code minus 48) to stay cheap on long digit tables.
    doubled = digits[-2::-2].translate(_DOUBLED)
    return (sum(digits[::-2].encode()) + sum(doubled.encode()) - 48 * len(digits)) % 10 == 0


def _phone_spans(text: str) -> Iterator[Span]:
    for m in _PHONE.finditer(text):
        span = _phone_span(text, *m.span())
        if span is not None:
            yield span


def _phone_span(text: str, start: int, end: int) -> Span | None:
    before, after = text[max(start - 2, 0) : start], text[end : end + 2]
    if text[start] == "+":
        glued = before[-1:].isalnum()  # `n+1000000` is arithmetic
    else:  # part of a longer dotted or dashed number: an IP, a version, a range
        glued = before[:1].isdigit() and before[1:] in (".", "-")
    if glued or (after[:1] in (".", "-") and after[1:].isdigit()):
        return None
    digits = len(text[start:end].translate(_NON_DIGITS))
    # An international form swallows trailing numbers; drop whole groups down to 15 digits.
    while digits > 15:
        cut = max(text.rfind(sep, start, end) for sep in " .-(")
        if cut <= start:
            return None
        digits -= len(text[cut:end].translate(_NON_DIGITS))
        end = start + len(text[start:cut].rstrip(" .-"))
    groups = text[start:end].replace(".", " ").replace("-", " ").split(" ")
    years = [g for g in groups if len(g) == 4 and g[:2] in ("19", "20")]
    # 01.02.2024 and 12-31-1999 are dates, 08.30-09.45 times (06 12 34 56 78 is French).
    date = len(groups) == 3 and len(years) == 1 and sum(map(len, groups)) <= 8
    time = max(map(len, groups)) <= 2 and len(groups) != 5
    return None if digits < 7 or date or time else (start, end)


class _Placeholders:
    """One request's placeholders: one per distinct value, numbered per kind, skipping numbers
    whose placeholder text the request already holds."""

    def __init__(self, taken: set[str]) -> None:
        self.mapping: dict[str, str] = {}
        self._by_value: dict[str, str] = {}
        self._counts = dict.fromkeys(KINDS, 0)
        self._taken = taken

    def for_value(self, kind: str, value: str) -> str:
        known = self._by_value.get(value)
        if known is not None:
            return known
        n = self._counts[kind] + 1
        while f"[{kind}_{n}]" in self._taken:
            n += 1
        self._counts[kind] = n
        placeholder = f"[{kind}_{n}]"
        self._by_value[value] = placeholder
        self.mapping[placeholder] = value
        return placeholder


class Redactor:
    """Compiled once from a profile; `redact` is then called per request."""

    def __init__(self, profile: RedactionProfile) -> None:
        self.profile = profile
        custom: list[tuple[str, Find]] = [
            ("REDACTED", partial(_matches, _compile_custom(p))) for p in profile.patterns
        ]
        # Earlier finders win (later ones see their hits masked): the operator's own patterns,
        # then the shapes least likely to be something else, so a card is never read as a phone.
        builtin: list[tuple[bool, str, Find]] = [
            (profile.keys, "KEY", _key_spans),
            (profile.emails, "EMAIL", partial(_matches, _EMAIL)),
            (profile.cards, "CARD", _card_spans),
            (profile.phones, "PHONE", _phone_spans),
            (profile.keys, "KEY", _token_spans),
        ]
        self._finders = custom + [(kind, find) for on, kind, find in builtin if on]

    def redact(self, payload: Mapping[str, Any]) -> Redaction | None:
        """None when nothing was found. Raises ValueError for JSON nested too deeply."""
        if not self._finders:
            return None
        taken: set[str] = set()
        _walk(payload, _REQUEST, partial(_collect_placeholders, taken))
        placeholders = _Placeholders(taken)
        new = _walk(payload, _REQUEST, partial(self._redact_text, placeholders))
        if not placeholders.mapping:
            return None
        return Redaction(payload=dict(new), mapping=placeholders.mapping)

    def _redact_text(self, placeholders: _Placeholders, text: str) -> str:
        hits: list[tuple[int, int, str]] = []
        seen = text
        for kind, find in self._finders:
            found = [(start, end, kind) for start, end in find(seen)]
            if found:
                hits += found
                seen = _masked(seen, found)
        if not hits:
            return text
        pieces: list[str] = []
        last = 0
        for start, end, kind in sorted(hits):
            pieces += (text[last:start], placeholders.for_value(kind, text[start:end]))
            last = end
        pieces.append(text[last:])
        return "".join(pieces)


def _masked(text: str, hits: list[tuple[int, int, str]]) -> str:
    """Text with the hits blanked out at the same offsets, so that later finders neither take
    them again nor run a match into them (a phone number written just before a card)."""
    pieces: list[str] = []
    last = 0
    for start, end, _ in hits:
        pieces += (text[last:start], "\0" * (end - start))
        last = end
    pieces.append(text[last:])
    return "".join(pieces)


def _collect_placeholders(taken: set[str], text: str) -> str:
    if "[" in text:
        taken.update(m.group() for m in _PLACEHOLDER.finditer(text))
    return text


def restore_text(text: str, mapping: Mapping[str, str]) -> str:
    """Puts originals back for the placeholders in mapping, in one pass."""
    if not mapping or "[" not in text:
        return text
    pieces: list[str] = []
    last = 0
    for m in _PLACEHOLDER.finditer(text):
        original = mapping.get(m.group())
        if original is not None:
            pieces += (text[last : m.start()], original)
            last = m.end()
    if not pieces:
        return text
    pieces.append(text[last:])
    return "".join(pieces)


def restore_json_answer(body: bytes, mapping: Mapping[str, str]) -> bytes:
    """Restores a non-streamed OpenAI or Anthropic answer; the same bytes when nothing changed."""
    if not mapping or b"[" not in body:
        return body
    try:
        doc = orjson.loads(body)
        if not isinstance(doc, dict):
            return body
        new = _walk(doc, _ANSWER, partial(restore_text, mapping=mapping))
    except ValueError:  # not JSON (orjson's error is a ValueError), or nested too deeply
        return body
    return body if new is doc else orjson.dumps(new)


class StreamRestorer:
    """Restores streamed text chunk by chunk, holding back a tail that may be the start of a
    placeholder split across chunks (never more than the longest placeholder)."""

    def __init__(self, mapping: Mapping[str, str]) -> None:
        self._mapping = mapping
        self._prefixes = frozenset(p[:i] for p in mapping for i in range(1, len(p)))
        self._longest = max(map(len, mapping), default=0)
        self._held = ""

    def feed(self, text: str) -> str:
        if not self._prefixes:
            return text
        buf = self._held + text
        # Placeholders hold no "[" after the first, so only the last one can open a held tail.
        cut = buf.rfind("[", max(0, len(buf) - self._longest + 1))
        if cut != -1 and buf[cut:] in self._prefixes:
            self._held, buf = buf[cut:], buf[:cut]
        else:
            self._held = ""
        return restore_text(buf, self._mapping)

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held


# Where text lies in a payload. A string found anywhere on these paths is text (content may be
# a string or a list of parts); JSON is a string of JSON (tool-call arguments), STRINGS every
# string in parsed JSON (tool inputs: earlier ones hold originals once answers were restored).
TEXT, JSON, STRINGS = "text", "json", "strings"
Shape = str | list[Any] | dict[str, Any]
_CONTENT: Shape = [{"text": TEXT, "input": STRINGS, "content": [{"text": TEXT}]}]
_MESSAGE: Shape = {"content": _CONTENT, "tool_calls": [{"function": {"arguments": JSON}}]}
_REQUEST: Shape = {"system": _CONTENT, "messages": [_MESSAGE], "prompt": [TEXT], "input": [TEXT]}
_ANSWER: Shape = {"choices": [{"message": _MESSAGE, "text": TEXT}], "content": _CONTENT}


def _walk(value: Any, shape: Shape, fn: TextFn, depth: int = 0) -> Any:
    """Applies fn to the text on the shape's paths. Returns value itself when nothing changed
    and a copy along the changed path otherwise: the caller's payload is never mutated."""
    if isinstance(value, str):
        return _map_json_text(value, fn) if shape == JSON else fn(value)
    if depth >= MAX_DEPTH and isinstance(value, dict | list):
        raise ValueError(f"JSON nested deeper than {MAX_DEPTH} levels")
    pairs: Iterator[tuple[Any, Any, Shape]]
    if isinstance(value, list) and (shape == STRINGS or isinstance(shape, list)):
        item = shape if shape == STRINGS else shape[0]
        pairs = ((i, v, item) for i, v in enumerate(value))
    elif isinstance(value, dict) and shape == STRINGS:
        pairs = ((k, v, STRINGS) for k, v in value.items())
    elif isinstance(value, dict) and isinstance(shape, dict):
        pairs = ((k, value[k], sub) for k, sub in shape.items() if k in value)
    else:
        return value
    changes = {k: n for k, v, sub in pairs if (n := _walk(v, sub, fn, depth + 1)) is not v}
    return _replaced(value, changes)


def _replaced(value: Any, changes: dict[Any, Any]) -> Any:
    if not changes:
        return value
    out = dict(value) if isinstance(value, dict) else list(value)
    for key, new in changes.items():
        out[key] = new
    return out


def _map_json_text(value: str, fn: TextFn) -> str:
    """Maps the string values of the JSON, so that no escape is cut and a restored original with
    quotes in it is escaped; text that is not JSON is mapped as text."""
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return fn(value)
    new = _walk(doc, STRINGS, fn)
    return value if new is doc else orjson.dumps(new).decode()
