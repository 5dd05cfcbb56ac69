"""API keys at the gateway: when a key is required, the headers it may come in, what a bad one
is told and counted as, the growing delay for an address that keeps failing, and which pools a
key may use."""

from __future__ import annotations

import hashlib

import pytest

import gateway.keys
from gateway.errors import AuthenticationError, NotReadyError
from gateway.keys import (
    FREE_FAILURES,
    MAX_DELAY_S,
    Keyring,
    Principal,
    delay_after,
    presented_key,
)
from gateway.metrics import GatewayMetrics
from llmpool.clock import FakeClock
from llmpool.v1 import gateway_pb2

KEY_ID = "0123456789ab"
SECRET = "S3cr3t-_" + "x" * 35
KEY = f"lpk_{KEY_ID}_{SECRET}"
OTHER_ID = "ba9876543210"
ADDRESS = "203.0.113.7"


def entry(key_id: str = KEY_ID, secret: str = SECRET, **fields: object) -> gateway_pb2.KeyEntry:
    """A key table entry as the controller sends it: the secret's SHA-256 only."""
    digest = hashlib.sha256(secret.encode()).digest()
    return gateway_pb2.KeyEntry(id=key_id, secret_sha256=digest, **fields)  # type: ignore[arg-type]


def ring(mode: str = "keys", *entries: gateway_pb2.KeyEntry) -> tuple[Keyring, FakeClock]:
    clock = FakeClock()
    keys = Keyring(mode, clock, GatewayMetrics())
    if entries:
        keys.apply(gateway_pb2.KeyTable(keys=list(entries)))
    return keys, clock


def failures(keys: Keyring, reason: str) -> float:
    value = keys._metrics.registry.get_sample_value(
        "llmpool_gateway_auth_failures_total", {"reason": reason}
    )
    return value or 0.0


def refused(keys: Keyring, headers: dict[str, str], address: str = ADDRESS) -> AuthenticationError:
    with pytest.raises(AuthenticationError) as caught:
        keys.authenticate(headers, address)
    assert caught.value.status == 401
    return caught.value


def test_the_secret_part_is_43_characters_as_the_controller_makes_it() -> None:
    assert len(SECRET) == 43


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="auth mode"):
        Keyring("open", FakeClock(), GatewayMetrics())


def test_mode_none_never_requires_a_key_even_with_a_table() -> None:
    keys, _ = ring("none", entry())
    assert not keys.required
    assert keys.authenticate({}, ADDRESS) is None
    assert keys.authenticate({"authorization": "Bearer nonsense"}, ADDRESS) is None


def test_mode_auto_requires_a_key_only_while_the_table_has_one() -> None:
    keys, _ = ring("auto")
    assert not keys.required
    assert keys.authenticate({}, ADDRESS) is None
    keys.apply(gateway_pb2.KeyTable())
    assert not keys.required
    assert keys.authenticate({}, ADDRESS) is None
    keys.apply(gateway_pb2.KeyTable(keys=[entry()]))
    assert keys.required
    refused(keys, {})
    principal = keys.authenticate({"authorization": f"Bearer {KEY}"}, ADDRESS)
    assert principal is not None and principal.key_id == KEY_ID
    # The last key revoked: open again.
    keys.apply(gateway_pb2.KeyTable())
    assert not keys.required
    assert keys.authenticate({}, ADDRESS) is None


def test_mode_keys_requires_a_key_even_with_an_empty_table() -> None:
    keys, _ = ring("keys")
    assert keys.required
    keys.apply(gateway_pb2.KeyTable())
    assert keys.required
    refused(keys, {"authorization": f"Bearer {KEY}"})


def test_mode_keys_is_not_ready_before_the_first_table() -> None:
    keys, _ = ring("keys")
    with pytest.raises(NotReadyError) as caught:
        keys.authenticate({"authorization": f"Bearer {KEY}"}, ADDRESS)
    assert caught.value.status == 503
    assert caught.value.headers == {"Retry-After": "1"}
    # Not a failure of the client's: not counted, not slowed.
    assert failures(keys, "missing") == failures(keys, "invalid") == 0
    keys.apply(gateway_pb2.KeyTable(keys=[entry()]))
    assert keys.authenticate({"authorization": f"Bearer {KEY}"}, ADDRESS) is not None


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": f"Bearer {KEY}"},
        {"authorization": f"bearer   {KEY} "},
        {"x-api-key": KEY},
        {"api-key": KEY},
    ],
    ids=["bearer", "bearer-lowercase-padded", "x-api-key", "api-key"],
)
def test_a_good_key_is_accepted_in_any_of_the_client_headers(headers: dict[str, str]) -> None:
    keys, _ = ring("keys", entry(tenant="acme", rpm=60, priority=3, name="ci"))
    principal = keys.authenticate(headers, ADDRESS)
    assert principal is not None
    assert principal.key_id == KEY_ID
    assert principal.name == "ci"
    assert principal.tenant == "acme"
    assert principal.rpm == 60
    assert principal.priority == 3
    assert principal.subject == "key/" + KEY_ID
    assert principal.tenant_subject == "tenant/acme"


def test_the_table_replaces_the_keys_and_counts_them_in_a_gauge() -> None:
    keys, _ = ring("keys", entry(), entry(OTHER_ID))
    gauge = keys._metrics.registry.get_sample_value("llmpool_gateway_api_keys")
    assert len(keys) == 2 and gauge == 2
    keys.apply(gateway_pb2.KeyTable(keys=[entry(OTHER_ID)]))
    assert len(keys) == 1
    assert keys._metrics.registry.get_sample_value("llmpool_gateway_api_keys") == 1
    # Revoked: the key that was good is now refused.
    refused(keys, {"authorization": f"Bearer {KEY}"})
    assert failures(keys, "invalid") == 1


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"authorization": f"Bearer lpk_{KEY_ID}_{'y' * 43}"}, "invalid"),
        ({"authorization": f"Bearer lpk_{OTHER_ID}_{SECRET}"}, "invalid"),
        ({"authorization": f"Bearer lpk_{KEY_ID}_{SECRET[:-1]}"}, "invalid"),
        ({"authorization": f"Bearer lpk_{KEY_ID.upper()}_{SECRET}"}, "invalid"),
        ({"x-api-key": f"{KEY}x"}, "invalid"),
        ({"x-api-key": "sk-not-ours"}, "invalid"),
        ({}, "missing"),
        ({"authorization": "Bearer "}, "missing"),
        ({"authorization": "Bearer"}, "missing"),
        ({"authorization": f"Basic {KEY}"}, "missing"),
        ({"x-api-key": ""}, "missing"),
    ],
    ids=[
        "wrong-secret",
        "unknown-id",
        "short-secret",
        "uppercase-id",
        "long-secret",
        "foreign-key",
        "no-header",
        "empty-bearer",
        "bare-bearer",
        "basic-scheme",
        "empty-x-api-key",
    ],
)
def test_a_bad_or_missing_key_is_401_and_counted_by_reason(
    headers: dict[str, str], reason: str
) -> None:
    keys, _ = ring("keys", entry(), entry(OTHER_ID, secret="z" * 43))
    err = refused(keys, headers)
    assert err.code == "invalid_api_key"
    assert err.delay_s == 0.0
    assert failures(keys, reason) == 1
    assert sum(failures(keys, r) for r in ("missing", "invalid", "expired")) == 1


def test_a_trailing_newline_does_not_pass_for_the_key() -> None:
    # The pattern ends at \Z, not $: a newline after the key is not the key (x-api-key values
    # are not stripped as Bearer ones are).
    keys, _ = ring("keys", entry())
    refused(keys, {"x-api-key": KEY + "\n"})
    assert failures(keys, "invalid") == 1


def test_an_expired_key_is_refused_from_its_expiry_on() -> None:
    keys, clock = ring("keys", entry(expires_at=1500.0))
    headers = {"authorization": f"Bearer {KEY}"}
    clock.advance(499.0)
    assert keys.authenticate(headers, ADDRESS) is not None
    clock.advance(1.0)
    err = refused(keys, headers)
    assert "expired" in err.message
    assert failures(keys, "expired") == 1
    assert failures(keys, "invalid") == 0


def test_a_key_without_expiry_never_expires() -> None:
    keys, clock = ring("keys", entry(expires_at=0.0))
    clock.advance(10 * 365 * 86400.0)
    assert keys.authenticate({"api-key": KEY}, ADDRESS) is not None


def test_presented_key_prefers_authorization_then_x_api_key_then_api_key() -> None:
    assert presented_key({"authorization": "Bearer a", "x-api-key": "b", "api-key": "c"}) == "a"
    assert presented_key({"x-api-key": "b", "api-key": "c"}) == "b"
    assert presented_key({"api-key": "c"}) == "c"
    assert presented_key({"x-api-key": "", "api-key": "c"}) == "c"
    assert presented_key({}) is None
    # Another scheme is a key not presented, whatever else comes.
    assert presented_key({"authorization": "Basic abc", "x-api-key": "b"}) == ""


def test_delay_after_is_free_then_doubles_up_to_the_cap() -> None:
    assert [delay_after(n) for n in range(1, FREE_FAILURES + 1)] == [0.0] * FREE_FAILURES
    delays = [delay_after(FREE_FAILURES + n) for n in range(1, 8)]
    assert delays[:5] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6])
    assert delays[5:] == [MAX_DELAY_S, MAX_DELAY_S]
    assert delay_after(1029) == MAX_DELAY_S


def test_delay_after_stays_at_the_cap_for_any_number_of_failures() -> None:
    # 2 ** 1,025 does not fit a float: the exponent is capped before it is raised.
    assert delay_after(1030) == delay_after(10**9) == MAX_DELAY_S


def test_an_address_failing_over_a_thousand_times_a_minute_still_gets_401() -> None:
    keys, _ = ring("keys", entry())
    for _ in range(1029):
        refused(keys, {})
    assert refused(keys, {}).delay_s == MAX_DELAY_S


def test_failures_from_one_address_slow_it_and_reset_after_a_minute() -> None:
    keys, clock = ring("keys", entry())
    bad = {"authorization": f"Bearer lpk_{KEY_ID}_{'y' * 43}"}
    delays = []
    for _ in range(FREE_FAILURES + 7):
        delays.append(refused(keys, bad).delay_s)
        clock.advance(1.0)
    assert delays[:FREE_FAILURES] == [0.0] * FREE_FAILURES
    assert delays[FREE_FAILURES:] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0])
    # Another address is not slowed by this one's failures.
    assert refused(keys, bad, "198.51.100.1").delay_s == 0.0
    # A good key from the slowed address still works (and is not delayed: nothing raised).
    assert keys.authenticate({"authorization": f"Bearer {KEY}"}, ADDRESS) is not None
    # The minute counts from the address's first failure; past it the count starts over.
    clock.advance(60.0 - (FREE_FAILURES + 7) + 0.5)
    assert refused(keys, bad).delay_s == 0.0
    for _ in range(FREE_FAILURES - 1):
        assert refused(keys, bad).delay_s == 0.0
    assert refused(keys, bad).delay_s == pytest.approx(0.1)


def test_failures_within_the_minute_keep_counting() -> None:
    keys, clock = ring("keys", entry())
    for _ in range(FREE_FAILURES):
        refused(keys, {})
    clock.advance(59.0)
    assert refused(keys, {}).delay_s == pytest.approx(0.1)


def test_every_kind_of_failure_counts_towards_the_delay() -> None:
    keys, _ = ring("keys", entry(), entry(OTHER_ID, expires_at=1.0))
    kinds = [
        {},
        {"x-api-key": "nope"},
        {"x-api-key": f"lpk_{OTHER_ID}_{SECRET}"},
        {"x-api-key": f"lpk_{KEY_ID}_{'y' * 43}"},
    ]
    for headers in kinds + kinds[:1]:
        refused(keys, headers)
    assert refused(keys, {}).delay_s == pytest.approx(0.1)
    assert keys.failed_signature(ADDRESS, "bad signature").delay_s == pytest.approx(0.2)
    assert failures(keys, "signature") == 1


def test_failing_addresses_are_remembered_up_to_a_bound_oldest_forgotten_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gateway.keys, "_MAX_ADDRESSES", 3)
    keys, _ = ring("keys", entry())
    for _ in range(FREE_FAILURES):
        refused(keys, {}, "a")
        refused(keys, {}, "b")
    refused(keys, {}, "c")
    # "a" failed again last: "b" is now the oldest, and a fourth address pushes it out.
    assert refused(keys, {}, "a").delay_s == pytest.approx(0.1)
    refused(keys, {}, "d")
    assert len(keys._failures) == 3
    assert refused(keys, {}, "b").delay_s == 0.0
    # "a" was kept (then "c" went to make room for "b").
    assert refused(keys, {}, "a").delay_s == pytest.approx(0.2)


def principal(tenant: str = "", pools: frozenset[str] | None = None) -> Principal:
    keys, _ = ring("keys", entry(tenant=tenant, pools=sorted(pools or ())))
    found = keys.get(KEY_ID)
    assert found is not None
    return found


def test_a_tenant_key_uses_its_tenant_pools_and_shared_ones_not_another_tenants() -> None:
    p = principal("acme")
    assert p.pools is None
    assert p.may_use("acme-llama", "acme")
    assert p.may_use("shared-llama", "")
    assert not p.may_use("globex-llama", "globex")


def test_a_key_with_a_pool_list_uses_only_those_pools() -> None:
    p = principal("acme", frozenset({"acme-llama", "shared-llama"}))
    assert p.pools == frozenset({"acme-llama", "shared-llama"})
    assert p.may_use("acme-llama", "acme")
    assert p.may_use("shared-llama", "")
    assert not p.may_use("acme-other", "acme")
    assert not p.may_use("shared-other", "")
    # The list does not override the tenant boundary.
    p2 = principal("acme", frozenset({"globex-llama"}))
    assert not p2.may_use("globex-llama", "globex")


def test_a_key_without_a_tenant_uses_only_shared_pools() -> None:
    p = principal("")
    assert p.tenant_subject == ""
    assert p.may_use("shared-llama", "")
    assert not p.may_use("acme-llama", "acme")
