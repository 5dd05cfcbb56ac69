"""Optional per-API-key request signing: a client proves that it holds its key, that the
request was not altered on the way, and that it is fresh, and the gateway refuses replays.

Scheme (v1). Besides `Authorization: Bearer <key>`, the client sends

    x-llmpool-timestamp: <unix seconds, an integer: ASCII digits only, at most 12>
    x-llmpool-signature: v1=<64 lowercase hex digits>

where the hex digits are HMAC-SHA256, keyed with the API key itself (the exact bearer
string, UTF-8), over the message

    METHOD + "\\n" + PATH + "\\n" + TIMESTAMP + "\\n" + hex(sha256(BODY))

METHOD is upper case; PATH is the request path as the client sent it (percent-encoding
untouched), without the query string; TIMESTAMP is the header's value exactly as sent;
hex(sha256(BODY)) is the lowercase hex SHA-256 of the raw body bytes (of b"" when empty).

The gateway refuses a request (401, with a short reason) when a header is missing or
malformed, when the timestamp is more than the window (300 s by default) from its clock in
either direction, when the signature does not match, or when the same signature was already
accepted within the window (a replay). To retry, sign again with a fresh timestamp.

Accepted signatures are remembered until their timestamp leaves the window, up to a bound.
When the bound is reached, new signed requests are refused ("retry") until old ones expire,
rather than forgetting some early: forgetting a signature still inside the window would let
it be replayed.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Protocol

TIMESTAMP_HEADER = "x-llmpool-timestamp"
SIGNATURE_HEADER = "x-llmpool-signature"
_VERSION = "v1="
_SIGNATURE = re.compile(r"v1=([0-9a-fA-F]{64})")
_MAX_TIMESTAMP_CHARS = 12  # unix seconds until the year 33658: bounded parsing work


class WallClock(Protocol):
    def wall(self) -> float: ...


class SignatureError(ValueError):
    """A signed request refused; `reason` is short and safe to show the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SignaturesFullError(SignatureError):
    """The replay memory is full: the request may be fine, so the client should retry later
    (a 429 or 503, not a 401)."""


def _message(method: str, path: str, timestamp: str, body: bytes) -> bytes:
    path = path.partition("?")[0]  # a query string never counts, whoever passes one
    body_hash = hashlib.sha256(body).hexdigest()
    return f"{method.upper()}\n{path}\n{timestamp}\n{body_hash}".encode()


def _digest(secret: str, message: bytes) -> bytes:
    return hmac.new(secret.encode(), message, hashlib.sha256).digest()


def sign(secret: str, method: str, path: str, body: bytes, timestamp: int) -> dict[str, str]:
    """The two signing headers for a request (for clients, tests and docs)."""
    stamp = str(timestamp)
    digest = _digest(secret, _message(method, path, stamp, body))
    return {TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: _VERSION + digest.hex()}


class SignatureChecker:
    """Checks signed requests against a window of `window_s` seconds around the clock's wall
    time and refuses replays, remembering at most `max_remembered` accepted signatures."""

    def __init__(
        self, clock: WallClock, window_s: float = 300.0, max_remembered: int = 100_000
    ) -> None:
        if not window_s > 0:
            raise ValueError("window_s must be positive")
        if max_remembered < 1:
            raise ValueError("max_remembered must be at least 1")
        self._clock = clock
        self._window_s = window_s
        self._max = max_remembered
        # Accepted (timestamp, digest) in order of arrival, and the same digests for lookup.
        self._order: collections.deque[tuple[int, bytes]] = collections.deque()
        self._seen: set[bytes] = set()
        # The latest wall time seen: the window's past edge never moves back, so a clock
        # stepped backwards cannot readmit a signature already forgotten.
        self._latest = float("-inf")

    @property
    def remembered(self) -> int:
        """Accepted signatures held against replays (some may be expired, not yet dropped)."""
        return len(self._seen)

    def check(
        self, secret: str, method: str, path: str, body: bytes, headers: Mapping[str, str]
    ) -> None:
        """Returns when the request is signed, fresh and new; raises SignatureError otherwise.
        `headers` maps lower-case names to values."""
        stamp = headers.get(TIMESTAMP_HEADER)
        signature = headers.get(SIGNATURE_HEADER)
        if signature is None:
            raise SignatureError(f"missing {SIGNATURE_HEADER}")
        if stamp is None:
            raise SignatureError(f"missing {TIMESTAMP_HEADER}")
        # isascii: str.isdigit() also accepts digits such as "²" that int() rejects.
        if not (0 < len(stamp) <= _MAX_TIMESTAMP_CHARS and stamp.isascii() and stamp.isdigit()):
            raise SignatureError("malformed timestamp")
        found = _SIGNATURE.fullmatch(signature)  # fullmatch: no trailing newline slips by
        if found is None:
            raise SignatureError("malformed signature")
        timestamp = int(stamp)
        now = self._clock.wall()
        self._latest = max(self._latest, now)
        if timestamp < self._latest - self._window_s or timestamp > now + self._window_s:
            raise SignatureError(f"timestamp outside the {self._window_s:g} s window")
        # Upper-case hex decodes to the same digest, so it is one signature for replays too.
        given = bytes.fromhex(found.group(1))
        expected = _digest(secret, _message(method, path, stamp, body))
        if not hmac.compare_digest(given, expected):
            raise SignatureError("bad signature")
        self._forget_expired()
        if given in self._seen:
            raise SignatureError("replayed request")
        if len(self._seen) >= self._max:
            raise SignaturesFullError("too many signed requests in the window; retry")
        self._order.append((timestamp, given))
        self._seen.add(given)

    def _forget_expired(self) -> None:
        """Drops signatures whose timestamp has left the window: the window check refuses
        them now, so remembering them protects nothing. Amortised O(1) per check.
        The deque is in arrival order, so an entry behind a future-dated one waits for it
        (at most 2 windows after arrival); it still counts towards the bound meanwhile."""
        oldest = self._latest - self._window_s
        order, seen = self._order, self._seen
        while order and order[0][0] < oldest:
            seen.discard(order.popleft()[1])
