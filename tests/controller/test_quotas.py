"""Shared limits and budgets: demand and spend from usage reports, and the loop that pushes
slices and stores what keys spent (the split itself: test_quota_split.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller.apikeys import ApiKeyRecord, KeyBook, TenantRecord
from controller.metrics import ControllerMetrics
from controller.model import PoolSpec
from controller.publisher import SnapshotPublisher
from controller.quotas import (
    RESERVE,
    QuotaLoop,
    Quotas,
    SubjectLimit,
    period_start,
)
from controller.store import Store
from llmpool.clock import FakeClock
from llmpool.v1 import gateway_pb2

# 2026-12-02 (a Wednesday) 15:00 UTC.
WED_15H = datetime(2026, 12, 2, 15, tzinfo=UTC).timestamp()
# Two minutes before midnight of 2026-12-02 (UTC).
BEFORE_MIDNIGHT = datetime(2026, 12, 2, 23, 58, tzinfo=UTC).timestamp()


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


def use(
    requests: int = 0, refused: int = 0, tokens: int = 0, cost: float = 0.0
) -> gateway_pb2.SubjectUsage:
    return gateway_pb2.SubjectUsage(
        requests=requests, refused=refused, tokens=tokens, cost_usd=cost
    )


# --- Quotas -----------------------------------------------------------------------------------


def book_with(*keys: ApiKeyRecord, tenants: Iterable[TenantRecord] = ()) -> KeyBook:
    book = KeyBook(None)
    book.keys = {k.id: k for k in keys}
    book.tenants = {t.name: t for t in tenants}
    return book


LIMIT = {"key/k1": SubjectLimit(rpm=600, tpm=60_000)}


def run_reports(quotas: Quotas, clock: FakeClock, seconds: int, per_second: dict[str, int]) -> None:
    """Each gateway of per_second reports once a second for `seconds` seconds: that many
    requests of key k1 (0: an empty report)."""
    for _ in range(seconds):
        clock.advance(1.0)
        for gateway, requests in per_second.items():
            subjects = {"key/k1": use(requests, tokens=requests * 10)} if requests else {}
            quotas.record(gateway, subjects)


def rpm_slices(quotas: Quotas, gateways: list[str]) -> dict[str, float]:
    return {g: q.slices["key/k1"].rpm for g, q in quotas.slices(LIMIT, gateways).items()}


def test_the_slice_follows_demand_to_the_busy_gateway() -> None:
    clock = FakeClock()
    quotas = Quotas(book_with(ApiKeyRecord(id="k1", rpm=600)), clock)
    run_reports(quotas, clock, 10, {"A": 100, "B": 0})
    gateways = quotas.gateways(["A", "B"])
    assert gateways == ["A", "B"]
    slices = rpm_slices(quotas, gateways)
    floor = 600 * RESERVE / 2
    assert slices["A"] == pytest.approx(600 - floor)
    assert slices["B"] == pytest.approx(floor)
    assert sum(slices.values()) == pytest.approx(600)
    messages = quotas.slices(LIMIT, gateways)
    assert messages["A"].gateways == 2
    tpm = {g: m.slices["key/k1"].tpm for g, m in messages.items()}
    assert tpm == pytest.approx({"A": 60_000 * (1 - RESERVE / 2), "B": 60_000 * RESERVE / 2})


def test_demand_moves_when_the_traffic_moves() -> None:
    clock = FakeClock()
    quotas = Quotas(book_with(ApiKeyRecord(id="k1", rpm=600)), clock)
    run_reports(quotas, clock, 5, {"A": 100, "B": 0})
    run_reports(quotas, clock, 10, {"A": 0, "B": 100})
    slices = rpm_slices(quotas, quotas.gateways(["A", "B"]))
    assert slices["B"] > 0.95 * 600
    assert slices["A"] < 0.05 * 600


def test_two_busy_gateways_split_evenly() -> None:
    clock = FakeClock()
    quotas = Quotas(book_with(ApiKeyRecord(id="k1", rpm=600)), clock)
    run_reports(quotas, clock, 10, {"A": 100, "B": 100})
    assert rpm_slices(quotas, quotas.gateways([])) == pytest.approx({"A": 300.0, "B": 300.0})


def test_refused_requests_count_as_demand() -> None:
    """A gateway refusing most of its traffic for want of slice still wants the limit."""
    clock = FakeClock()
    quotas = Quotas(book_with(ApiKeyRecord(id="k1", rpm=600)), clock)
    for _ in range(10):
        clock.advance(1.0)
        quotas.record("A", {"key/k1": use(100, refused=95, tokens=50)})
        quotas.record("B", {"key/k1": use(1, tokens=20_000)})
    slices = quotas.slices(LIMIT, quotas.gateways([]))
    assert slices["A"].slices["key/k1"].rpm > 500
    # Refused requests are valued at the tokens an admitted one took (10 each): A wants 60,000
    # a minute, not the 3,000 it was let through, so it keeps half against B's 1.2 million.
    assert slices["A"].slices["key/k1"].tpm == pytest.approx(30_000, rel=0.01)


def test_a_silent_gateway_drops_out_and_its_share_goes_to_the_other() -> None:
    clock = FakeClock()
    quotas = Quotas(book_with(ApiKeyRecord(id="k1", rpm=600)), clock)
    run_reports(quotas, clock, 5, {"A": 100, "B": 100})
    # B goes quiet (and is no longer connected); A keeps reporting.
    run_reports(quotas, clock, 4, {"A": 100})
    assert quotas.gateways(["A"]) == ["A", "B"]
    run_reports(quotas, clock, 3, {"A": 100})
    assert quotas.gateways(["A"]) == ["A"]
    slices = quotas.slices(LIMIT, ["A"])
    assert slices["A"].gateways == 1
    assert slices["A"].slices["key/k1"].rpm == pytest.approx(600)
    # Back again: it starts from no demand, with the floor.
    quotas.record("B", {})
    assert rpm_slices(quotas, quotas.gateways(["A"]))["B"] == pytest.approx(600 * RESERVE / 2)


def test_each_gateway_hears_the_last_report_its_spend_includes() -> None:
    clock = FakeClock()
    quotas = Quotas(book_with(ApiKeyRecord(id="k1", budget_usd=1)), clock)
    quotas.record("A", {"key/k1": use(1, cost=0.1)}, 7)
    quotas.record("B", {"key/k1": use(1, cost=0.1)}, 3)
    assert {g: q.acked_sequence for g, q in quotas.slices({}, ["A", "B", "C"]).items()} == {
        "A": 7,
        "B": 3,
        "C": 0,
    }
    # The latest, not the highest: a gateway restarted under the same id counts from 1 again.
    quotas.record("A", {"key/k1": use(1, cost=0.1)}, 1)
    assert quotas.slices({}, ["A"])["A"].acked_sequence == 1
    # Gone silent and back: it starts again from nothing acknowledged.
    clock.advance(6)
    quotas.record("B", {}, 4)
    assert quotas.gateways(["A"]) == ["A", "B"]
    assert quotas.slices({}, ["A", "B"])["A"].acked_sequence == 0


def test_a_connected_gateway_shares_the_limit_before_it_reports() -> None:
    clock = FakeClock()
    quotas = Quotas(book_with(ApiKeyRecord(id="k1", rpm=600)), clock)
    assert rpm_slices(quotas, quotas.gateways(["new"])) == {"new": 600.0}
    slices = rpm_slices(quotas, quotas.gateways(["a", "b", "c"]))
    assert slices == pytest.approx({"a": 200.0, "b": 200.0, "c": 200.0})


def test_a_limit_on_one_dimension_only_leaves_the_other_zero() -> None:
    clock = FakeClock()
    quotas = Quotas(book_with(), clock)
    slices = quotas.slices({"pool/p": SubjectLimit(rpm=0, tpm=1000)}, ["a", "b"])
    assert slices["a"].slices["pool/p"].rpm == 0.0
    assert slices["a"].slices["pool/p"].tpm == pytest.approx(500.0)
    assert quotas.slices({}, []) == {}


def budget_book() -> KeyBook:
    return book_with(
        ApiKeyRecord(id="k1", tenant="team-a", budget_usd=10, budget_period="day"),
        ApiKeyRecord(id="k2", tenant="team-a", budget_usd=10, budget_period="month"),
        ApiKeyRecord(id="k3", budget_usd=10),
        tenants=[TenantRecord("team-a", budget_usd=100, budget_period="week")],
    )


def test_spend_accumulates_per_key_and_tenant() -> None:
    clock = FakeClock(WED_15H)
    quotas = Quotas(budget_book(), clock)
    quotas.record("A", {"key/k1": use(1, cost=0.25), "key/k2": use(1, cost=1.0)})
    clock.advance(1.0)
    quotas.record("B", {"key/k1": use(1, cost=0.5), "key/k3": use(1, cost=2.0)})
    assert quotas.spent("key/k1", "day") == pytest.approx(0.75)
    assert quotas.spent("key/k2", "month") == pytest.approx(1.0)
    assert quotas.spent("key/k3", "month") == pytest.approx(2.0)
    # The tenant's spend is its keys' (k3 has no tenant).
    assert quotas.spent("tenant/team-a", "week") == pytest.approx(1.75)
    assert quotas.spent("key/nobody", "month") == 0.0
    # Every gateway's message carries the budgets' spend.
    message = quotas.slices({}, ["A", "B"])["B"]
    assert dict(message.spent_usd) == pytest.approx(
        {"key/k1": 0.75, "key/k2": 1.0, "key/k3": 2.0, "tenant/team-a": 1.75}
    )


def test_spend_starts_again_in_a_new_period() -> None:
    clock = FakeClock(BEFORE_MIDNIGHT)
    quotas = Quotas(budget_book(), clock)
    quotas.record("A", {"key/k1": use(1, cost=3.0), "key/k2": use(1, cost=4.0)})
    assert quotas.spent("key/k1", "day") == pytest.approx(3.0)
    clock.advance(180)  # 00:01 the next day, the same week and month
    assert quotas.spent("key/k1", "day") == 0.0
    assert quotas.spent("key/k2", "month") == pytest.approx(4.0)
    assert quotas.spent("tenant/team-a", "week") == pytest.approx(7.0)
    quotas.record("A", {"key/k1": use(1, cost=1.0)})
    assert quotas.spent("key/k1", "day") == pytest.approx(1.0)
    assert quotas.spent("tenant/team-a", "week") == pytest.approx(8.0)
    assert quotas.slices({}, ["A"])["A"].spent_usd["key/k1"] == pytest.approx(1.0)


def test_spend_survives_a_change_of_budget_period() -> None:
    clock = FakeClock(WED_15H)
    book = budget_book()
    quotas = Quotas(book, clock)
    quotas.record("A", {"key/k2": use(1, cost=5.0)})
    assert quotas.spent("key/k2", "month") == 5.0
    book.keys["k2"] = dataclasses.replace(book.keys["k2"], budget_period="day")
    # All of it was spent today.
    assert quotas.spent("key/k2", "day") == 5.0


@pytest.mark.parametrize("cost", [math.nan, math.inf, -math.inf, -1.0, 1e6, 1e300])
def test_costs_that_make_no_sense_are_ignored(cost: float) -> None:
    clock = FakeClock(WED_15H)
    quotas = Quotas(budget_book(), clock)
    quotas.record("A", {"key/k1": use(3, tokens=30, cost=cost)})
    assert quotas.spent("key/k1", "day") == 0.0
    assert quotas.spent("tenant/team-a", "week") == 0.0
    rows = quotas.take_pending()
    assert rows == [(int(WED_15H // 60), "team-a", "k1", 3, 30, 0.0)]
    quotas.record("A", {"key/k1": use(1, tokens=10, cost=0.5)})
    assert quotas.spent("key/k1", "day") == pytest.approx(0.5)


def test_pending_rows_are_per_minute_tenant_and_key() -> None:
    clock = FakeClock(WED_15H)
    quotas = Quotas(budget_book(), clock)
    minute = int(WED_15H // 60)
    quotas.record("A", {"key/k1": use(5, refused=2, tokens=100, cost=0.1)})
    clock.advance(10)
    quotas.record("B", {"key/k1": use(2, tokens=40, cost=0.2), "key/k3": use(1, tokens=7)})
    clock.advance(60)
    quotas.record("A", {"key/k1": use(1, tokens=1, cost=0.05)})
    rows = sorted(quotas.take_pending())
    assert [row[:5] for row in rows] == [
        (minute, "", "k3", 1, 7),
        (minute, "team-a", "k1", 3 + 2, 140),
        (minute + 1, "team-a", "k1", 1, 1),
    ]
    assert [row[5] for row in rows] == pytest.approx([0.0, 0.3, 0.05])
    # Taken: nothing is pending any more.
    assert quotas.take_pending() == []


def test_unknown_keys_and_other_subjects_are_not_counted_for_spend() -> None:
    clock = FakeClock(WED_15H)
    quotas = Quotas(budget_book(), clock)
    quotas.record(
        "A",
        {
            "key/nope": use(10, tokens=100, cost=5.0),
            "tenant/team-a": use(10, tokens=100, cost=5.0),
            "pool/p": use(10, cost=5.0),
            "junk": use(10, cost=5.0),
            "key/" + "x" * 400: use(10, cost=5.0),
        },
    )
    assert quotas.take_pending() == []
    assert quotas.spent("key/nope", "month") == 0.0
    assert quotas.spent("tenant/team-a", "week") == 0.0
    assert dict(quotas.slices({}, ["A"])["A"].spent_usd) == {
        "key/k1": 0.0,
        "key/k2": 0.0,
        "key/k3": 0.0,
        "tenant/team-a": 0.0,
    }


def test_load_spend_sums_the_rows_of_each_period() -> None:
    clock = FakeClock(WED_15H)
    quotas = Quotas(budget_book(), clock)
    day = period_start("day", WED_15H)
    month = period_start("month", WED_15H)
    week = period_start("week", WED_15H)
    quotas.load_spend(
        {
            day: [("team-a", "k1", 1.0), ("team-a", "k2", 50.0)],
            month: [("team-a", "k2", 2.0), ("", "k3", 3.0), ("team-a", "k1", 70.0)],
            week: [("team-a", "k1", 4.0), ("team-a", "k2", 5.0), ("team-b", "kb", 80.0)],
        }
    )
    assert quotas.spent("key/k1", "day") == 1.0
    assert quotas.spent("key/k2", "month") == 2.0
    assert quotas.spent("key/k3", "month") == 3.0
    assert quotas.spent("tenant/team-a", "week") == 9.0


# --- QuotaLoop --------------------------------------------------------------------------------


class RecordingPublisher(SnapshotPublisher):
    """The publisher's quota interface, recording what it is offered."""

    def __init__(self, clock: FakeClock, gateways: list[str]) -> None:
        super().__init__(lambda: {}, asyncio.Event(), clock, ControllerMetrics())
        self.gateways = gateways
        self.offered: list[tuple[str, gateway_pb2.Quotas]] = []

    def gateway_ids(self) -> list[str]:
        return list(self.gateways)

    def offer_quotas(self, gateway_id: str, quotas: gateway_pb2.Quotas) -> None:
        self.offered.append((gateway_id, quotas))


async def test_tick_offers_slices_and_sends_an_empty_message_once(tmp_path: Path) -> None:
    clock = FakeClock(WED_15H)
    store = await Store.open(tmp_path)
    try:
        book = KeyBook(store)
        publisher = RecordingPublisher(clock, ["A", "B"])
        pools = [PoolSpec(name="p")]
        loop = QuotaLoop(Quotas(book, clock), book, lambda: pools, publisher, store, clock)
        # Nothing limited: one empty message to each gateway, then nothing more.
        loop.tick()
        loop.tick()
        assert [(g, len(q.slices), len(q.spent_usd)) for g, q in publisher.offered] == [
            ("A", 0, 0),
            ("B", 0, 0),
        ]
        publisher.offered.clear()
        # A limit: every tick offers every gateway its slice.
        record, _ = await book.create(ApiKeyRecord(id="", rpm=100), WED_15H)
        loop.tick()
        loop.tick()
        assert [g for g, _ in publisher.offered] == ["A", "B", "A", "B"]
        assert all(q.slices["key/" + record.id].rpm == 50.0 for _, q in publisher.offered)
        assert all(q.gateways == 2 for _, q in publisher.offered)
        publisher.offered.clear()
        # A gateway that connects gets the limit; one that leaves gets nothing.
        publisher.gateways = ["B", "C"]
        loop.tick()
        assert [g for g, _ in publisher.offered] == ["B", "C"]
        publisher.offered.clear()
        # The limit is gone: each gateway hears so once.
        await book.revoke(record.id)
        loop.tick()
        loop.tick()
        loop.tick()
        assert [(g, len(q.slices)) for g, q in publisher.offered] == [("B", 0), ("C", 0)]
        publisher.offered.clear()
        # A pool limit counts as much as a key's.
        pools = [PoolSpec(name="p", tpm=1000)]
        loop.tick()
        assert [(g, q.slices["pool/p"].tpm) for g, q in publisher.offered] == [
            ("B", 500.0),
            ("C", 500.0),
        ]
    finally:
        await store.close()


async def test_flush_stores_what_keys_spent_and_load_reads_it_back(tmp_path: Path) -> None:
    clock = FakeClock(WED_15H)
    store = await Store.open(tmp_path)
    try:
        book = KeyBook(store)
        await book.put_tenant(TenantRecord("team-a", budget_usd=100, budget_period="week"))
        k1, _ = await book.create(
            ApiKeyRecord(id="", tenant="team-a", budget_usd=10, budget_period="day"), WED_15H
        )
        k2, _ = await book.create(ApiKeyRecord(id="", budget_usd=10), WED_15H)
        quotas = Quotas(book, clock)
        loop = QuotaLoop(quotas, book, lambda: [], RecordingPublisher(clock, []), store, clock)
        quotas.record("A", {"key/" + k1.id: use(4, refused=1, tokens=30, cost=0.5)})
        quotas.record("B", {"key/" + k1.id: use(1, tokens=10, cost=0.25)})
        quotas.record("B", {"key/" + k2.id: use(2, tokens=5, cost=1.5)})
        await loop.flush()
        assert quotas.pending == {}
        await loop.flush()  # nothing pending: nothing added
        rows = await store.key_usage(0, 2**62, "")
        assert sorted(rows) == sorted([("team-a", k1.id, 4, 40, 0.75), ("", k2.id, 2, 5, 1.5)])
        # A restarted controller knows what was spent this period.
        fresh = Quotas(book, clock)
        await QuotaLoop(fresh, book, lambda: [], RecordingPublisher(clock, []), store, clock).load()
        assert fresh.spent("key/" + k1.id, "day") == pytest.approx(0.75)
        assert fresh.spent("key/" + k2.id, "month") == pytest.approx(1.5)
        assert fresh.spent("tenant/team-a", "week") == pytest.approx(0.75)
        # The next day, the day's budget starts again; the month's and week's do not.
        clock.advance(86400)
        later = Quotas(book, clock)
        await QuotaLoop(later, book, lambda: [], RecordingPublisher(clock, []), store, clock).load()
        assert later.spent("key/" + k1.id, "day") == 0.0
        assert later.spent("key/" + k2.id, "month") == pytest.approx(1.5)
        assert later.spent("tenant/team-a", "week") == pytest.approx(0.75)
    finally:
        await store.close()
