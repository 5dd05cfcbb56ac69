"""Client API keys at the gateway: the table the controller sends (hashes only) and the check
of each request's key against it, with no round trip, so it keeps working while the
controller is away.

A key is `lpk_<id>_<secret>`; the id finds the entry and the secret's SHA-256 is compared in
constant time. Clients send it as `Authorization: Bearer KEY`, `x-api-key: KEY` (Anthropic
clients) or `api-key: KEY` (Azure OpenAI clients). Failed attempts are counted per client
address; past a few a minute each further one is answered late (gateway/asgi.py waits), which
slows guessing without holding anything but the connection.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.errors import AuthenticationError, NotReadyError
from gateway.metrics import GatewayMetrics
from llmpool.clock import Clock
from llmpool.v1 import gateway_pb2, types_pb2

log = logging.getLogger(__name__)

_KEY = re.compile(r"lpk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})\Z")
# Failures from one address in a minute before its answers slow down; the slowest answer; how
# many addresses are remembered (the oldest forgotten first).
FREE_FAILURES = 5
MAX_DELAY_S = 2.0
_MAX_ADDRESSES = 10_000
_WINDOW_S = 60.0

# Gateway --auth modes: keys required; keys required once any exists (loopback only); none.
AUTH_MODES = ("keys", "auto", "none")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request is for: its key's settings, as the table last said."""

    key_id: str
    name: str
    tenant: str
    # None: every pool the tenant may use.
    pools: frozenset[str] | None
    rpm: int
    tpm: int
    budget_usd: float
    priority: int
    expires_at: float
    require_signature: bool
    secret_sha256: bytes
    # Subjects of limits, budgets and usage (controller/quotas.py).
    subject: str
    tenant_subject: str

    def may_use(self, pool: str, pool_tenant: str) -> bool:
        """A key uses its tenant's pools and shared ones (of those, its list's when it has one)."""
        if pool_tenant and pool_tenant != self.tenant:
            return False
        return self.pools is None or pool in self.pools


def principal_from(entry: gateway_pb2.KeyEntry) -> Principal:
    return Principal(
        key_id=entry.id,
        name=entry.name,
        tenant=entry.tenant,
        pools=frozenset(entry.pools) if entry.pools else None,
        rpm=entry.rpm,
        tpm=entry.tpm,
        budget_usd=entry.budget_usd,
        priority=entry.priority,
        expires_at=entry.expires_at,
        require_signature=entry.require_signature,
        secret_sha256=entry.secret_sha256,
        subject="key/" + entry.id,
        tenant_subject="tenant/" + entry.tenant if entry.tenant else "",
    )


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request carries, in whichever header its client sends it."""
    auth = headers.get("authorization")
    if auth is not None:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer":
            return value.strip()
        return ""
    return headers.get("x-api-key") or headers.get("api-key")


class Keyring:
    """The key table and the per-address failure counts."""

    def __init__(self, mode: str, clock: Clock, metrics: GatewayMetrics) -> None:
        if mode not in AUTH_MODES:
            raise ValueError(f"auth mode {mode!r}: choose from {', '.join(AUTH_MODES)}")
        self.mode = mode
        self._clock = clock
        self._metrics = metrics
        self._keys: dict[str, Principal] = {}
        self.tenants: dict[str, types_pb2.Tenant] = {}
        # The table has come from the controller (a gateway that needs keys refuses until then).
        self.received = False
        self._failures: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._warned_open = False

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def required(self) -> bool:
        """Whether requests need a key now."""
        if self.mode == "none":
            return False
        return self.mode == "keys" or bool(self._keys)

    def apply(self, table: gateway_pb2.KeyTable) -> None:
        self._keys = {e.id: principal_from(e) for e in table.keys}
        self.tenants = {t.name: t for t in table.tenants}
        self.received = True
        self._metrics.api_keys.set(len(self._keys))
        if self.mode == "auto" and not self._keys and not self._warned_open:
            self._warned_open = True
            log.warning(
                "no API keys exist: this gateway serves requests without a key (it listens on "
                "loopback only; CreateApiKey turns keys on)"
            )

    def get(self, key_id: str) -> Principal | None:
        return self._keys.get(key_id)

    def authenticate(self, headers: Mapping[str, str], address: str) -> Principal | None:
        """The request's principal; None when keys are off. AuthenticationError (401) for a
        missing, unknown, revoked or expired key."""
        if not self.required:
            return None
        if not self.received:
            raise NotReadyError(
                "This gateway has no API keys from the controller yet; retry shortly.",
                headers={"Retry-After": "1"},
            )
        presented = presented_key(headers)
        if not presented:
            raise self._failed(
                address,
                "missing",
                "No API key: send Authorization: Bearer KEY (x-api-key for Anthropic clients).",
            )
        m = _KEY.match(presented)
        principal = self._keys.get(m.group(1)) if m is not None else None
        if (
            m is None
            or principal is None
            or not hmac.compare_digest(
                hashlib.sha256(m.group(2).encode()).digest(), principal.secret_sha256
            )
        ):
            raise self._failed(address, "invalid", "Incorrect API key provided.")
        if principal.expires_at and self._clock.wall() >= principal.expires_at:
            raise self._failed(address, "expired", "This API key has expired.")
        return principal

    def _failed(self, address: str, reason: str, message: str) -> AuthenticationError:
        self._metrics.auth_failures.labels(reason).inc()
        now = self._clock.monotonic()
        since, count = self._failures.pop(address, (now, 0))
        if now - since > _WINDOW_S:
            since, count = now, 0
        count += 1
        self._failures[address] = (since, count)
        if len(self._failures) > _MAX_ADDRESSES:
            self._failures.popitem(last=False)
        err = AuthenticationError(message)
        err.delay_s = delay_after(count)
        return err

    def failed_signature(self, address: str, reason: str) -> AuthenticationError:
        return self._failed(address, "signature", f"Request signature refused: {reason}.")


def delay_after(failures: int) -> float:
    """How late the answer to an address's n-th failure in a minute goes: none for the first
    few, then doubling from 0.1 s up to MAX_DELAY_S."""
    if failures <= FREE_FAILURES:
        return 0.0
    # The exponent is capped first: 2 ** 1,000 would not fit a float.
    doublings = min(failures - FREE_FAILURES - 1, 16)
    return float(min(MAX_DELAY_S, 0.1 * 2**doublings))
