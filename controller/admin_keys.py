"""The admin API's API keys and tenants, and what a tenant-admin may see: its own tenant's keys,
pools, backends and usage (and shared pools and backends), never another tenant's.

An admin manages every tenant's keys; a tenant-admin (a bearer token made for one tenant) only
its own: keys it creates belong to its tenant whatever it asks, and another tenant's key is
NOT_FOUND to it, as one that does not exist.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from llmpool.errors import InvalidArgumentError, PermissionDeniedError

from .apikeys import ApiKeyRecord, KeyBook, TenantRecord
from .audit import AuditLog
from .auth import Caller
from .model import BackendSpec, PoolSpec
from .quotas import Quotas
from .rbac import TENANT_ADMIN
from .store import Store

# Fields of a key an update may change (not its id, secret, creation time or spend).
KEY_FIELDS = (
    "name",
    "tenant",
    "pools",
    "rpm",
    "tpm",
    "budget_usd",
    "budget_period",
    "priority",
    "expires_at",
    "metadata",
    "require_signature",
)


@dataclass(frozen=True)
class KeyView:
    """A key as the admin API shows it (mirrors llmpool.v1.ApiKey): never its hash."""

    id: str
    name: str
    tenant: str
    pools: tuple[str, ...]
    rpm: int
    tpm: int
    budget_usd: float
    budget_period: str
    priority: int
    expires_at: float
    metadata: dict[str, str]
    created_at: float
    require_signature: bool
    spent_usd: float


@dataclass(frozen=True)
class KeyUsageRow:
    """What one key spent over a window (mirrors llmpool.v1.UsageRow's by_key rows)."""

    tenant: str
    api_key: str
    requests: int
    tokens: int
    cost_usd: float


def scope(caller: Caller) -> str | None:
    """The tenant a caller is confined to; None for one that sees everything."""
    return caller.tenant if caller.role == TENANT_ADMIN else None


def sees(caller: Caller, owner: str) -> bool:
    """Whether caller may see an object owned by tenant `owner` ("" shared)."""
    tenant = scope(caller)
    return tenant is None or owner in ("", tenant)


def visible_pools(caller: Caller, pools: Iterable[PoolSpec]) -> list[PoolSpec]:
    return [p for p in pools if sees(caller, p.tenant)]


def sees_backend(caller: Caller, backend: BackendSpec, pools: Mapping[str, PoolSpec]) -> bool:
    """A backend is its own tenant's, and its pool's: a tenant-admin sees it only when it
    would see both (a shared backend in another tenant's pool is that tenant's business)."""
    pool = pools.get(backend.pool)
    return sees(caller, backend.tenant) and (pool is None or sees(caller, pool.tenant))


def visible_backends(
    caller: Caller, backends: Iterable[BackendSpec], pools: Mapping[str, PoolSpec]
) -> list[BackendSpec]:
    return [b for b in backends if sees_backend(caller, b, pools)]


class KeysAdmin:
    def __init__(
        self,
        book: KeyBook,
        quotas: Quotas,
        audit: AuditLog,
        store: Store,
        flush: Callable[[], Awaitable[None]],
    ) -> None:
        self._book = book
        self._quotas = quotas
        self._audit = audit
        self._store = store
        # Stores what keys spent that has not been stored yet (QuotaLoop.flush).
        self._flush = flush

    def view(self, record: ApiKeyRecord) -> KeyView:
        values = {
            f.name: getattr(record, f.name)
            for f in dataclasses.fields(KeyView)
            if hasattr(record, f.name)
        }
        spent = self._quotas.spent("key/" + record.id, record.budget_period)
        return KeyView(**values, spent_usd=spent)

    async def create(self, spec: ApiKeyRecord, now: float, by: Caller) -> tuple[KeyView, str]:
        tenant = scope(by)
        if tenant is not None:
            if spec.tenant not in ("", tenant):
                await self._denied(by, "CreateApiKey", f"tenant/{spec.tenant[:128]}")
                raise PermissionDeniedError(
                    f"{by.identity} manages tenant {tenant!r} only: leave tenant empty or name it"
                )
            spec = dataclasses.replace(spec, tenant=tenant)
        record, secret = await self._book.create(spec, now)
        view = self.view(record)
        await self._audit.record(by, "CreateApiKey", f"api_key/{record.id}", after=view)
        return view, secret

    def list_keys(self, tenant: str, by: Caller) -> list[KeyView]:
        confined = scope(by)
        if confined is not None:
            if tenant and tenant != confined:
                return []
            tenant = confined
        return [self.view(k) for k in self._book.list_keys(tenant or None)]

    async def update(self, spec: ApiKeyRecord, paths: Iterable[str], by: Caller) -> KeyView:
        confined = scope(by)
        old = self._book.get_key(spec.id, confined)
        if confined is not None and "tenant" in paths and spec.tenant != confined:
            await self._denied(by, "UpdateApiKey", f"api_key/{spec.id}")
            raise PermissionDeniedError(f"{by.identity} may not move keys to another tenant")
        unknown = sorted(set(paths) - set(KEY_FIELDS))
        if unknown:
            raise InvalidArgumentError(f"API key fields that cannot change: {', '.join(unknown)}")
        changes = {name: getattr(spec, name) for name in paths}
        record = await self._book.update(dataclasses.replace(old, **changes))
        view = self.view(record)
        await self._audit.record(
            by, "UpdateApiKey", f"api_key/{record.id}", before=self.view(old), after=view
        )
        return view

    async def _denied(self, by: Caller, action: str, obj: str) -> None:
        """A tenant-admin reaching past its tenant: refused, and recorded like a refused RPC."""
        await self._audit.record(by, action, obj, "denied", detail="outside the caller's tenant")

    async def revoke(self, key_id: str, by: Caller) -> KeyView:
        record = await self._book.revoke(key_id, scope(by))
        view = self.view(record)
        await self._audit.record(by, "RevokeApiKey", f"api_key/{key_id}", before=view)
        return view

    async def put_tenant(self, tenant: TenantRecord, by: Caller) -> TenantRecord:
        before = self._book.tenants.get(tenant.name)
        stored = await self._book.put_tenant(tenant)
        await self._audit.record(
            by, "PutTenant", f"tenant/{tenant.name}", before=before, after=stored
        )
        return stored

    def tenants(self) -> list[tuple[TenantRecord, float]]:
        return [
            (t, self._quotas.spent("tenant/" + t.name, t.budget_period))
            for t in sorted(self._book.tenants.values(), key=lambda t: t.name)
        ]

    async def delete_tenant(self, name: str, by: Caller) -> None:
        before = await self._book.delete_tenant(name)
        await self._audit.record(by, "DeleteTenant", f"tenant/{name}", before=before)

    async def usage(self, since: float, until: float, tenant: str, by: Caller) -> list[KeyUsageRow]:
        """What each key spent over [since, until] (unix seconds; 0: unbounded)."""
        for name, value in (("since", since), ("until", until)):
            if not math.isfinite(value) or value < 0:
                raise InvalidArgumentError(f"{name} must be unix seconds >= 0 (0: unbounded)")
        confined = scope(by)
        if confined is not None:
            if tenant and tenant != confined:
                return []
            tenant = confined
        await self._flush()
        first = int(since // 60) if since > 0 else 0
        last = int(until // 60) if until > 0 else 2**62
        rows = await self._store.key_usage(first, last, tenant)
        return [KeyUsageRow(t, k, n, tokens, cost) for t, k, n, tokens, cost in rows]
