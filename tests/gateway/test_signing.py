"""Request signing: the wire format, tampering, the time window, replays and the bound."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from gateway.signing import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureChecker,
    SignatureError,
    SignaturesFullError,
    sign,
)

SECRET = "sk-test-0123456789"
PATH = "/v1/chat/completions"
BODY = b'{"model":"m","messages":[]}'
NOW = 1_700_000_000


class WallClock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def wall(self) -> float:
        return self.now


def refused(
    checker: SignatureChecker,
    headers: dict[str, str],
    *,
    secret: str = SECRET,
    method: str = "POST",
    path: str = PATH,
    body: bytes = BODY,
) -> str:
    """The reason `checker` refuses the request."""
    with pytest.raises(SignatureError) as caught:
        checker.check(secret, method, path, body, headers)
    return caught.value.reason


def test_known_answer_vector_pins_the_wire_format() -> None:
    body_hash = hashlib.sha256(BODY).hexdigest()
    message = f"POST\n{PATH}\n{NOW}\n{body_hash}".encode()
    expected = hmac.new(SECRET.encode(), message, hashlib.sha256).hexdigest()
    # The same value from `openssl dgst -sha256 -hmac`, so the test pins it on its own too.
    assert expected == "5876360bfeae324feb52bf2e85dee3aca1a395331f53f9e4b1945ae16b20c209"
    headers = sign(SECRET, "post", PATH, BODY, NOW)  # the method is upper-cased
    assert headers == {TIMESTAMP_HEADER: str(NOW), SIGNATURE_HEADER: "v1=" + expected}


def test_a_good_signature_passes_and_sign_output_verifies() -> None:
    checker = SignatureChecker(WallClock())
    checker.check(SECRET, "POST", PATH, BODY, sign(SECRET, "POST", PATH, BODY, NOW))
    checker.check(SECRET, "GET", "/v1/models", b"", sign(SECRET, "GET", "/v1/models", b"", NOW))
    assert checker.remembered == 2
    # A query string is not signed: the client may sign either form of the path.
    headers = sign(SECRET, "POST", PATH + "?a=1", b"x", NOW)
    checker.check(SECRET, "POST", PATH, b"x", headers)


def test_tampering_with_any_signed_part_is_a_bad_signature() -> None:
    checker = SignatureChecker(WallClock())
    headers = sign(SECRET, "POST", PATH, BODY, NOW)
    assert refused(checker, headers, body=BODY + b" ") == "bad signature"
    assert refused(checker, headers, path="/v1/completions") == "bad signature"
    assert refused(checker, headers, method="PUT") == "bad signature"
    assert refused(checker, headers, secret=SECRET + "x") == "bad signature"
    moved = {**headers, TIMESTAMP_HEADER: str(NOW + 1)}
    assert refused(checker, moved) == "bad signature"
    flipped = headers[SIGNATURE_HEADER][:-1] + (
        "0" if headers[SIGNATURE_HEADER][-1] != "0" else "1"
    )
    with pytest.raises(SignatureError) as caught:
        checker.check(SECRET, "POST", PATH, BODY, {**headers, SIGNATURE_HEADER: flipped})
    # The reason shown to the client carries neither the key nor a signature.
    assert SECRET not in str(caught.value) and flipped[3:] not in str(caught.value)
    assert checker.remembered == 0
    checker.check(SECRET, "POST", PATH, BODY, headers)  # the untouched request still passes


def test_old_and_future_timestamps_are_outside_the_window() -> None:
    checker = SignatureChecker(WallClock(), window_s=300.0)
    for stamp in (NOW - 301, NOW + 301, 0):
        headers = sign(SECRET, "POST", PATH, BODY, stamp)
        assert refused(checker, headers) == "timestamp outside the 300 s window", stamp
    for stamp in (NOW - 300, NOW + 300):  # the edges are inside
        checker.check(SECRET, "POST", PATH, BODY, sign(SECRET, "POST", PATH, BODY, stamp))


def test_a_replay_is_refused_but_the_same_body_with_a_new_timestamp_passes() -> None:
    clock = WallClock()
    checker = SignatureChecker(clock)
    headers = sign(SECRET, "POST", PATH, BODY, NOW)
    checker.check(SECRET, "POST", PATH, BODY, headers)
    clock.now += 100
    assert refused(checker, headers) == "replayed request"
    checker.check(SECRET, "POST", PATH, BODY, sign(SECRET, "POST", PATH, BODY, NOW + 1))
    # Upper-case hex is the same signature, not a way around the replay check.
    upper = {**headers, SIGNATURE_HEADER: "v1=" + headers[SIGNATURE_HEADER][3:].upper()}
    assert refused(checker, upper) == "replayed request"
    assert checker.remembered == 2


def test_expired_signatures_are_forgotten_and_their_replays_are_too_old() -> None:
    clock = WallClock()
    checker = SignatureChecker(clock, window_s=60.0)
    old = sign(SECRET, "POST", PATH, BODY, NOW)
    checker.check(SECRET, "POST", PATH, BODY, old)
    assert checker.remembered == 1
    clock.now += 61
    fresh = sign(SECRET, "POST", PATH, BODY, NOW + 61)
    checker.check(SECRET, "POST", PATH, BODY, fresh)  # an accepted request prunes the old one
    assert checker.remembered == 1
    assert refused(checker, old) == "timestamp outside the 60 s window"
    assert refused(checker, fresh) == "replayed request"


def test_a_clock_stepped_back_does_not_readmit_a_forgotten_signature() -> None:
    clock = WallClock()
    checker = SignatureChecker(clock, window_s=60.0)
    old = sign(SECRET, "POST", PATH, BODY, NOW)
    checker.check(SECRET, "POST", PATH, BODY, old)
    clock.now += 61
    checker.check(SECRET, "POST", PATH, b"", sign(SECRET, "POST", PATH, b"", NOW + 61))
    assert checker.remembered == 1  # `old` is forgotten
    clock.now -= 30  # `old` would be inside the window by this clock
    assert refused(checker, old) == "timestamp outside the 60 s window"


ZEROS = "v1=" + "0" * 64


@pytest.mark.parametrize(
    ("stamp", "signature", "reason"),
    [
        (str(NOW), None, "missing x-llmpool-signature"),
        (None, ZEROS, "missing x-llmpool-timestamp"),
        ("", ZEROS, "malformed timestamp"),
        ("-1", ZEROS, "malformed timestamp"),
        ("17e8", ZEROS, "malformed timestamp"),
        (" 1700000000", ZEROS, "malformed timestamp"),
        ("1" * 13, ZEROS, "malformed timestamp"),
        ("17000000\u00b2", ZEROS, "malformed timestamp"),  # a Unicode digit int() refuses
        (str(NOW), "0" * 64, "malformed signature"),
        (str(NOW), "v2=" + "0" * 64, "malformed signature"),
        (str(NOW), "v1=" + "0" * 63, "malformed signature"),
        (str(NOW), ZEROS + "0", "malformed signature"),
        (str(NOW), "v1=" + "g" * 64, "malformed signature"),
        (str(NOW), ZEROS + "\n", "malformed signature"),
        (str(NOW), "v1=" + "00 " * 21 + "0", "malformed signature"),  # bytes.fromhex would pass
    ],
)
def test_malformed_headers_are_refused(
    stamp: str | None, signature: str | None, reason: str
) -> None:
    headers = {TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: signature}
    present = {name: value for name, value in headers.items() if value is not None}
    assert refused(SignatureChecker(WallClock()), present) == reason


def test_when_full_new_requests_are_refused_until_old_ones_expire() -> None:
    clock = WallClock()
    checker = SignatureChecker(clock, window_s=60.0, max_remembered=2)
    for body in (b"1", b"2"):
        checker.check(SECRET, "POST", PATH, body, sign(SECRET, "POST", PATH, body, NOW))
    third = sign(SECRET, "POST", PATH, b"3", NOW)
    with pytest.raises(SignaturesFullError) as caught:
        checker.check(SECRET, "POST", PATH, b"3", third)
    assert caught.value.reason == "too many signed requests in the window; retry"
    # Full, a replay is still named as one (nothing was forgotten to make room).
    first = sign(SECRET, "POST", PATH, b"1", NOW)
    assert refused(checker, first, body=b"1") == "replayed request"
    assert checker.remembered == 2
    clock.now += 61
    later = sign(SECRET, "POST", PATH, b"3", NOW + 61)
    checker.check(SECRET, "POST", PATH, b"3", later)
    assert checker.remembered == 1


def test_settings_that_could_not_work_are_refused() -> None:
    with pytest.raises(ValueError, match="window_s"):
        SignatureChecker(WallClock(), window_s=0)
    with pytest.raises(ValueError, match="max_remembered"):
        SignatureChecker(WallClock(), max_remembered=0)
