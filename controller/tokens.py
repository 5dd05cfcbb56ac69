"""Bearer tokens for the admin API: made by CreateToken, shown once, kept as SHA-256 hashes.

A token is `lpt_<id>_<secret>`: the id finds the record, the secret (32 random bytes) is
compared in constant time with the stored hash. A fast hash is right here: the secret has 256
bits of entropy, so there is nothing to guess that a slow hash would protect.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llmpool.clock import Clock
from llmpool.config import NAME_RE
from llmpool.errors import InvalidArgumentError, NotFoundError

from .rbac import TENANT_ADMIN, TOKEN_ROLES

if TYPE_CHECKING:
    from .store import Store

_TOKEN = re.compile(r"lpt_([0-9a-f]{12})_([A-Za-z0-9_-]{43})\Z")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,62}\Z")
MAX_TOKENS = 1000
MAX_TTL_S = 366 * 86400.0


@dataclass(frozen=True)
class TokenRecord:
    """Mirrors llmpool.v1.TokenInfo (plus the hash, which never leaves the controller)."""

    id: str
    name: str
    role: str
    created_at: float
    # 0: never.
    expires_at: float
    secret_sha256: str = ""
    # tenant-admin tokens: the tenant they manage.
    tenant: str = ""


def digest(secret: str) -> str:
    """The hex SHA-256 kept of a secret (admin tokens and API keys alike)."""
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenBook:
    def __init__(self, store: Store | None, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._records: dict[str, TokenRecord] = {}

    async def load(self) -> None:
        if self._store is not None:
            self._records = {r.id: r for r in await self._store.load_tokens()}

    def list(self) -> list[TokenRecord]:
        return sorted(self._records.values(), key=lambda r: (r.created_at, r.id))

    async def create(
        self, name: str, role: str, ttl_s: float, tenant: str = ""
    ) -> tuple[TokenRecord, str]:
        """A new token's record and its text, which is shown this once and stored nowhere."""
        if not _NAME.match(name):
            raise InvalidArgumentError(
                f"token name {name[:64]!r}: 1-63 of letters, digits, '.', '_', '@', '-'"
            )
        if role not in TOKEN_ROLES:
            raise InvalidArgumentError(f"token role {role!r}: choose from {', '.join(TOKEN_ROLES)}")
        if (role == TENANT_ADMIN) != bool(tenant):
            raise InvalidArgumentError(
                "a tenant-admin token needs a tenant, and only a tenant-admin token has one"
            )
        if tenant and not NAME_RE.match(tenant):
            raise InvalidArgumentError(f"tenant {tenant[:64]!r} is not a valid name")
        if not 0 <= ttl_s <= MAX_TTL_S or ttl_s != ttl_s:
            raise InvalidArgumentError(f"ttl_s must be 0 (no expiry) to {MAX_TTL_S:g} seconds")
        if len(self._records) >= MAX_TOKENS:
            raise InvalidArgumentError(f"at most {MAX_TOKENS} tokens: revoke unused ones first")
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        now = self._clock.wall()
        record = TokenRecord(
            id=token_id,
            name=name,
            role=role,
            created_at=now,
            expires_at=now + ttl_s if ttl_s else 0.0,
            secret_sha256=digest(secret),
            tenant=tenant,
        )
        if self._store is not None:
            await self._store.put_token(record)
        self._records[token_id] = record
        return record, f"lpt_{token_id}_{secret}"

    async def revoke(self, token_id: str) -> TokenRecord:
        record = self._records.get(token_id)
        if record is None:
            raise NotFoundError(f"token {token_id[:32]!r} not found: ListTokens shows the ids")
        if self._store is not None:
            await self._store.delete_token(token_id)
        del self._records[token_id]
        return record

    def verify(self, token: str) -> TokenRecord | None:
        """The record of a valid, unexpired token, else None."""
        m = _TOKEN.match(token)
        if m is None:
            return None
        record = self._records.get(m.group(1))
        if record is None:
            return None
        if not hmac.compare_digest(digest(m.group(2)), record.secret_sha256):
            return None
        if record.expires_at and self._clock.wall() >= record.expires_at:
            return None
        return record
