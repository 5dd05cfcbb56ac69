"""Limits shared by every gateway, and budgets: the controller splits each limited subject's
requests and tokens a minute into one slice per gateway, following where the demand is, and
sums what API keys and tenants spend.

A gateway admits from its slice locally (gateway/limits.py), so a request costs no round trip
and a gateway keeps its last slices while the controller is away. The slices of a subject add
up to its limit, whatever the number of gateways; demand moves between gateways within a report
or two. Subjects: "key/ID", "tenant/NAME", "pool/NAME".
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from llmpool.clock import Clock
from llmpool.v1 import gateway_pb2

from .apikeys import BUDGET_PERIODS, ApiKeyRecord, KeyBook, TenantRecord
from .model import PoolSpec
from .publisher import SnapshotPublisher
from .store import Store

log = logging.getLogger(__name__)

# Of each limit, this share is spread evenly over every gateway whatever its demand, so a
# gateway that has seen none yet can still admit a first request; the rest follows demand.
RESERVE = 0.02
# Demand is a moving average of the rate reported (per minute); a gateway silent this long
# drops out of the split.
_ALPHA = 0.5
_GATEWAY_GONE_S = 5.0
# Rows of what keys spent wait this long for the store.
_FLUSH_S = 5.0


@dataclass(frozen=True)
class SubjectLimit:
    rpm: float = 0.0
    tpm: float = 0.0


def allocate(
    limit: float, demands: Mapping[str, float], reserve: float = RESERVE
) -> dict[str, float]:
    """limit split over the gateways in demands (their wants, per minute): each gets an even
    share of reserve x limit, the rest goes max-min fair by want (nobody gets more than it
    wants while another wants more than it has), and what nobody wants is spread evenly. The
    shares add up to limit."""
    n = len(demands)
    if n == 0:
        return {}
    floor = limit * reserve / n
    remaining = limit - floor * n
    shares = dict.fromkeys(demands, floor)
    wants = sorted(demands.items(), key=lambda item: (max(item[1], 0.0), item[0]))
    for i, (gateway, want) in enumerate(wants):
        give = min(max(want - floor, 0.0), remaining / (n - i))
        shares[gateway] += give
        remaining -= give
    if remaining > 0:
        for gateway in shares:
            shares[gateway] += remaining / n
    return shares


def period_start(period: str, now: float) -> float:
    """Unix seconds at which the budget period holding now began (UTC calendar)."""
    if period == "total":
        return 0.0
    t = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "week":
        t -= timedelta(days=t.weekday())
    elif period == "month":
        t = t.replace(day=1)
    return t.timestamp()


def limits_of(
    keys: Iterable[ApiKeyRecord], tenants: Iterable[TenantRecord], pools: Iterable[PoolSpec]
) -> dict[str, SubjectLimit]:
    found: dict[str, SubjectLimit] = {}
    for k in keys:
        if k.rpm or k.tpm:
            found["key/" + k.id] = SubjectLimit(k.rpm, k.tpm)
    for t in tenants:
        if t.rpm or t.tpm:
            found["tenant/" + t.name] = SubjectLimit(t.rpm, t.tpm)
    for p in pools:
        if p.rpm or p.tpm:
            found["pool/" + p.name] = SubjectLimit(p.rpm, p.tpm)
    return found


@dataclass
class _Demand:
    rpm: float = 0.0
    tpm: float = 0.0
    # Tokens per admitted request, to value refused requests in tokens.
    tokens_per_request: float = 0.0


@dataclass
class _Spend:
    since: float
    usd: float = 0.0


class Quotas:
    """Demand per (subject, gateway) from usage reports, slices from it, spend per budget."""

    def __init__(self, book: KeyBook, clock: Clock) -> None:
        self._book = book
        self._clock = clock
        self._demand: dict[str, dict[str, _Demand]] = {}
        self._last_report: dict[str, float] = {}
        # Subject -> budget period -> what it spent in the period holding now: every period
        # is kept, so a key whose period changes keeps what it spent in the new one.
        self._spend: dict[str, dict[str, _Spend]] = {}
        self._sequence: dict[str, int] = {}
        # (minute, tenant, key) -> [requests, tokens, cost] not yet stored.
        self.pending: dict[tuple[int, str, str], list[float]] = {}

    def record(
        self,
        gateway_id: str,
        subjects: Mapping[str, gateway_pb2.SubjectUsage],
        sequence: int = 0,
    ) -> None:
        """One gateway's report (its sequence-th): its demand per subject and what keys spent."""
        # The latest, not the highest: a gateway restarted under the same id counts from 1.
        self._sequence[gateway_id] = sequence
        now = self._clock.monotonic()
        last = self._last_report.get(gateway_id)
        self._last_report[gateway_id] = now
        dt = min(max(now - last, 0.2), 10.0) if last is not None else 1.0
        minute = int(self._clock.wall() // 60)
        for subject, u in subjects.items():
            if not subject.startswith(("key/", "tenant/", "pool/")) or len(subject) > 300:
                continue
            self._observe(subject, gateway_id, u, dt)
            cost = u.cost_usd if math.isfinite(u.cost_usd) and 0 < u.cost_usd < 1e6 else 0.0
            if subject.startswith("key/"):
                key = self._book.keys.get(subject[4:])
                if key is None:
                    continue
                admitted = max(u.requests - u.refused, 0)
                row = self.pending.setdefault((minute, key.tenant, key.id), [0, 0, 0.0])
                row[0] += admitted
                row[1] += u.tokens
                row[2] += cost
                if cost:
                    self._add_spend(subject, cost)
                    if key.tenant:
                        self._add_spend("tenant/" + key.tenant, cost)
        # Subjects not in this report: the gateway's demand for them fell to nothing.
        for subject, per_gateway in self._demand.items():
            if subject not in subjects and gateway_id in per_gateway:
                d = per_gateway[gateway_id]
                d.rpm *= 1 - _ALPHA
                d.tpm *= 1 - _ALPHA

    def _observe(
        self, subject: str, gateway_id: str, u: gateway_pb2.SubjectUsage, dt: float
    ) -> None:
        per_gateway = self._demand.setdefault(subject, {})
        d = per_gateway.setdefault(gateway_id, _Demand())
        admitted = max(u.requests - u.refused, 0)
        if admitted:
            d.tokens_per_request = u.tokens / admitted
        rpm = u.requests * 60.0 / dt
        tpm = (u.tokens + u.refused * d.tokens_per_request) * 60.0 / dt
        d.rpm += _ALPHA * (rpm - d.rpm)
        d.tpm += _ALPHA * (tpm - d.tpm)

    def _add_spend(self, subject: str, usd: float) -> None:
        now = self._clock.wall()
        periods = self._spend.setdefault(subject, {})
        for period in BUDGET_PERIODS:
            since = period_start(period, now)
            spend = periods.get(period)
            if spend is None or spend.since != since:
                spend = periods[period] = _Spend(since)
            spend.usd += usd

    def load_spend(self, rows_since: Mapping[float, Iterable[tuple[str, str, float]]]) -> None:
        """Spend so far from the store: for each period start, (tenant, key, cost) rows summed
        from it (the controller reads them at start-up, for every budget period)."""
        now = self._clock.wall()
        for period in BUDGET_PERIODS:
            since = period_start(period, now)
            keys: dict[str, float] = {}
            tenants: dict[str, float] = {}
            for tenant, key, cost in rows_since.get(since, ()):
                keys["key/" + key] = keys.get("key/" + key, 0.0) + cost
                if tenant:
                    tenants["tenant/" + tenant] = tenants.get("tenant/" + tenant, 0.0) + cost
            for subject, usd in (keys | tenants).items():
                self._spend.setdefault(subject, {})[period] = _Spend(since, usd)

    def spent(self, subject: str, period: str) -> float:
        spend = self._spend.get(subject, {}).get(period)
        if spend is None or spend.since != period_start(period, self._clock.wall()):
            return 0.0
        return spend.usd

    def gateways(self, connected: Iterable[str]) -> list[str]:
        """Gateways that share the limits: connected now, or reported within a few seconds."""
        now = self._clock.monotonic()
        for gateway_id, at in list(self._last_report.items()):
            if now - at > _GATEWAY_GONE_S:
                del self._last_report[gateway_id]
                self._sequence.pop(gateway_id, None)
                for per_gateway in self._demand.values():
                    per_gateway.pop(gateway_id, None)
        return sorted(set(connected) | set(self._last_report))

    def slices(
        self, limits: Mapping[str, SubjectLimit], gateways: list[str]
    ) -> dict[str, gateway_pb2.Quotas]:
        """Each gateway's Quotas message."""
        spent = self._spent_map()
        out = {
            g: gateway_pb2.Quotas(
                gateways=len(gateways),
                spent_usd=spent,
                acked_sequence=self._sequence.get(g, 0),
            )
            for g in gateways
        }
        for subject, limit in limits.items():
            per_gateway = self._demand.get(subject, {})
            rpm = allocate(limit.rpm, {g: _want(per_gateway, g, "rpm") for g in gateways})
            tpm = allocate(limit.tpm, {g: _want(per_gateway, g, "tpm") for g in gateways})
            for g in gateways:
                s = out[g].slices[subject]
                s.rpm = rpm[g] if limit.rpm else 0.0
                s.tpm = tpm[g] if limit.tpm else 0.0
        return out

    def _spent_map(self) -> dict[str, float]:
        found: dict[str, float] = {}
        for key in self._book.keys.values():
            if key.budget_usd:
                found["key/" + key.id] = self.spent("key/" + key.id, key.budget_period)
        for tenant in self._book.tenants.values():
            if tenant.budget_usd:
                found["tenant/" + tenant.name] = self.spent(
                    "tenant/" + tenant.name, tenant.budget_period
                )
        return found

    def take_pending(self) -> list[tuple[int, str, str, int, int, float]]:
        rows = [(m, t, k, int(v[0]), int(v[1]), v[2]) for (m, t, k), v in self.pending.items()]
        self.pending = {}
        return rows


class QuotaLoop:
    """Every second: each gateway's slices and the budgets' spend, pushed with routing; every
    few seconds, what keys spent, to the store."""

    def __init__(
        self,
        quotas: Quotas,
        book: KeyBook,
        pools: Callable[[], Iterable[PoolSpec]],
        publisher: SnapshotPublisher,
        store: Store,
        clock: Clock,
        interval_s: float = 1.0,
    ) -> None:
        self.quotas = quotas
        self._book = book
        self._pools = pools
        self._publisher = publisher
        self._store = store
        self._clock = clock
        self._interval_s = interval_s
        self._last_flush = clock.monotonic()
        self._sent_empty: set[str] = set()

    async def load(self) -> None:
        """What keys and tenants spent so far this period, from the store."""
        now = self._clock.wall()
        rows: dict[float, list[tuple[str, str, float]]] = {}
        for period in BUDGET_PERIODS:
            since = period_start(period, now)
            found = await self._store.key_usage(int(since // 60), 2**62, "")
            rows[since] = [(t, k, cost) for t, k, _, _, cost in found]
        self.quotas.load_spend(rows)

    def tick(self) -> None:
        limits = limits_of(self._book.keys.values(), self._book.tenants.values(), self._pools())
        gateways = self.quotas.gateways(self._publisher.gateway_ids())
        for gateway_id, message in self.quotas.slices(limits, gateways).items():
            empty = not message.slices and not message.spent_usd
            if empty and gateway_id in self._sent_empty:
                continue
            self._sent_empty.discard(gateway_id)
            if empty:
                self._sent_empty.add(gateway_id)
            self._publisher.offer_quotas(gateway_id, message)

    async def flush(self) -> None:
        rows = self.quotas.take_pending()
        if rows:
            await self._store.add_key_usage(rows)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                self.tick()
                if self._clock.monotonic() - self._last_flush >= _FLUSH_S:
                    self._last_flush = self._clock.monotonic()
                    await self.flush()
            except Exception:
                log.exception("quota round failed")


def _want(per_gateway: Mapping[str, _Demand], gateway: str, what: str) -> float:
    d = per_gateway.get(gateway)
    if d is None:
        return 0.0
    value: float = getattr(d, what)
    return value
