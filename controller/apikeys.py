"""API keys for the gateways' client APIs, and tenants' limits: made and changed by the admin API,
kept in the store (a key's secret as SHA-256 only), handed to gateways with routing.

A key is `lpk_<id>_<secret>`: the id (12 hex digits) finds the record, the secret (32 random
bytes) is compared in constant time with the stored hash. As for admin tokens (tokens.py), a
fast hash is right: 256 bits of entropy leave nothing for a slow hash to protect.
"""

from __future__ import annotations

import dataclasses
import math
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llmpool.bounds import check_bounds
from llmpool.config import NAME_RE
from llmpool.errors import InvalidArgumentError, NotFoundError
from llmpool.protoconv import from_json, to_json, to_proto
from llmpool.v1 import gateway_pb2, types_pb2

from .tokens import digest

if TYPE_CHECKING:
    from .store import Store

KEY_RE = re.compile(r"lpk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})\Z")
MAX_KEYS = 100_000
MAX_TENANTS = 10_000
BUDGET_PERIODS = ("day", "week", "month", "total")


@dataclass(frozen=True)
class ApiKeyRecord:
    """Mirrors llmpool.v1.ApiKey, plus the secret's hash, which never leaves the control plane
    but for gateways."""

    id: str
    name: str = ""
    tenant: str = ""
    pools: tuple[str, ...] = ()
    rpm: int = 0
    tpm: int = 0
    budget_usd: float = 0.0
    budget_period: str = "month"
    priority: int = 0
    expires_at: float = 0.0
    metadata: dict[str, str] = field(default_factory=dict)
    created_at: float = 0.0
    require_signature: bool = False
    secret_sha256: str = ""


@dataclass(frozen=True)
class TenantRecord:
    """Mirrors llmpool.v1.Tenant."""

    name: str
    rpm: int = 0
    tpm: int = 0
    budget_usd: float = 0.0
    budget_period: str = "month"
    description: str = ""


def check_key(key: ApiKeyRecord) -> ApiKeyRecord:
    """InvalidArgumentError saying what is wrong with a key's settings."""
    where = f"API key {key.name or key.id!r}"
    if key.name and not NAME_RE.match(key.name):
        raise InvalidArgumentError(f"{where}: name: use 1-128 letters, digits and . _ : / -")
    if key.tenant and not NAME_RE.match(key.tenant):
        raise InvalidArgumentError(f"{where}: tenant {key.tenant[:64]!r} is not a valid name")
    for pool in key.pools:
        if not NAME_RE.match(pool):
            raise InvalidArgumentError(f"{where}: pools: {pool[:64]!r} is not a valid pool name")
    if len(set(key.pools)) != len(key.pools):
        raise InvalidArgumentError(f"{where}: pools lists a pool twice")
    if key.budget_period not in BUDGET_PERIODS:
        raise InvalidArgumentError(
            f"{where}: budget_period {key.budget_period[:32]!r}: choose from "
            f"{', '.join(BUDGET_PERIODS)}"
        )
    if not -1000 <= key.priority <= 1000:
        raise InvalidArgumentError(f"{where}: priority must be -1000 to 1000")
    if not math.isfinite(key.expires_at) or key.expires_at < 0:
        raise InvalidArgumentError(f"{where}: expires_at must be unix seconds (0: never)")
    check_bounds(key, where)
    return key


def check_tenant(tenant: TenantRecord) -> TenantRecord:
    if not NAME_RE.match(tenant.name):
        raise InvalidArgumentError(
            f"tenant {tenant.name[:64]!r}: use 1-128 letters, digits and . _ : / -"
        )
    if tenant.budget_period not in BUDGET_PERIODS:
        raise InvalidArgumentError(
            f"tenant {tenant.name!r}: budget_period {tenant.budget_period[:32]!r}: choose from "
            f"{', '.join(BUDGET_PERIODS)}"
        )
    check_bounds(tenant, f"tenant {tenant.name!r}")
    return tenant


class KeyBook:
    """The API keys and tenants. on_change runs after every change (it republishes the key
    table to gateways)."""

    def __init__(self, store: Store | None, on_change: Callable[[], None] = lambda: None) -> None:
        self._store = store
        self._on_change = on_change
        self.keys: dict[str, ApiKeyRecord] = {}
        self.tenants: dict[str, TenantRecord] = {}
        # Bumped by every change: the publisher sends the table when it moved.
        self.version = 0

    async def load(self) -> None:
        if self._store is None:
            return
        keys = [from_json(ApiKeyRecord, d) for d in await self._store.load_documents("api_keys")]
        tenants = [from_json(TenantRecord, d) for d in await self._store.load_documents("tenants")]
        self.keys = {k.id: k for k in keys}
        self.tenants = {t.name: t for t in tenants}
        self._changed()

    def _changed(self) -> None:
        self.version += 1
        self._on_change()

    def table(self) -> gateway_pb2.KeyTable:
        """The keys (hashes only) and tenants as gateways check requests against them."""
        return gateway_pb2.KeyTable(
            keys=[
                gateway_pb2.KeyEntry(
                    id=k.id,
                    secret_sha256=bytes.fromhex(k.secret_sha256),
                    tenant=k.tenant,
                    pools=k.pools,
                    rpm=k.rpm,
                    tpm=k.tpm,
                    budget_usd=k.budget_usd,
                    priority=k.priority,
                    expires_at=k.expires_at,
                    require_signature=k.require_signature,
                    name=k.name,
                )
                for k in self.keys.values()
            ],
            tenants=[to_proto(t, types_pb2.Tenant) for t in self.tenants.values()],
        )

    def list_keys(self, tenant: str | None = None) -> list[ApiKeyRecord]:
        found = (k for k in self.keys.values() if tenant is None or k.tenant == tenant)
        return sorted(found, key=lambda k: (k.created_at, k.id))

    def get_key(self, key_id: str, tenant: str | None = None) -> ApiKeyRecord:
        """The key; NotFoundError for one that does not exist or (tenant given) is another's."""
        record = self.keys.get(key_id)
        if record is None or (tenant is not None and record.tenant != tenant):
            raise NotFoundError(f"API key {key_id[:32]!r} not found: ListApiKeys shows the ids")
        return record

    async def create(self, spec: ApiKeyRecord, now: float) -> tuple[ApiKeyRecord, str]:
        """The new key's record and its secret, which is shown this once and stored nowhere."""
        if len(self.keys) >= MAX_KEYS:
            raise InvalidArgumentError(f"at most {MAX_KEYS} API keys: revoke unused ones first")
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        record = check_key(
            dataclasses.replace(spec, id=key_id, created_at=now, secret_sha256=digest(secret))
        )
        await self._put(record)
        return record, f"lpk_{key_id}_{secret}"

    async def update(self, record: ApiKeyRecord) -> ApiKeyRecord:
        old = self.get_key(record.id)
        record = check_key(
            dataclasses.replace(record, created_at=old.created_at, secret_sha256=old.secret_sha256)
        )
        await self._put(record)
        return record

    async def _put(self, record: ApiKeyRecord) -> None:
        if self._store is not None:
            await self._store.put_document("api_keys", record.id, to_json(record))
        self.keys[record.id] = record
        self._changed()

    async def revoke(self, key_id: str, tenant: str | None = None) -> ApiKeyRecord:
        record = self.get_key(key_id, tenant)
        if self._store is not None:
            await self._store.delete_document("api_keys", key_id)
        del self.keys[key_id]
        self._changed()
        return record

    async def put_tenant(self, tenant: TenantRecord) -> TenantRecord:
        check_tenant(tenant)
        if tenant.name not in self.tenants and len(self.tenants) >= MAX_TENANTS:
            raise InvalidArgumentError(f"at most {MAX_TENANTS} tenants")
        if self._store is not None:
            await self._store.put_document("tenants", tenant.name, to_json(tenant))
        self.tenants[tenant.name] = tenant
        self._changed()
        return tenant

    async def delete_tenant(self, name: str) -> TenantRecord:
        tenant = self.tenants.get(name)
        if tenant is None:
            raise NotFoundError(f"tenant {name[:64]!r} not found: ListTenants shows them")
        if self._store is not None:
            await self._store.delete_document("tenants", name)
        del self.tenants[name]
        self._changed()
        return tenant
