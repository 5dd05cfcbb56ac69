"""The gateway's routing table: applies full and delta snapshots from the controller."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gateway.members import Member, member_from_proto
from gateway.outliers import DEFAULT_EJECTION, EjectionSettings
from gateway.policies import Policy, PolicyRegistry, UnknownPolicyError
from gateway.policies.base import PickContext
from gateway.redaction import Redactor, parse_profile
from gateway.rules import Hop, Rule, Split, compile_rules, compile_split, resolve
from llmpool.v1 import gateway_pb2

log = logging.getLogger(__name__)

FALLBACK_POLICY = "round_robin"
# A pool's first-byte deadline when its route does not say (types.proto Pool.ttfb_timeout_s).
DEFAULT_TTFB_S = 30.0


@dataclass(frozen=True, slots=True)
class Route:
    """Everything needed to route one model, built once per snapshot."""

    model: str
    policy_name: str
    policy_params: Mapping[str, str]
    policy: Policy
    members: tuple[Member, ...]
    # Healthy and not draining, in snapshot order: what policies choose from.
    candidates: tuple[Member, ...]
    member_ids: frozenset[str]
    # Content rules and A/B split (gateway/rules.py); redirects: either is set.
    rules: tuple[Rule, ...] = ()
    split: Split | None = None
    redirects: bool = False
    # Passive health (gateway/outliers.py and the relay's first-byte deadline).
    ttfb_timeout_s: float = DEFAULT_TTFB_S
    ejection: EjectionSettings = DEFAULT_EJECTION
    # Seconds a request may wait for a member when there is none (a pool scaled to zero).
    hold_s: float = 0.0
    # Pools that serve when this one cannot, and its saturation bound (gateway/fallbacks.py).
    fallbacks: tuple[str, ...] = ()
    spill_waiting: float = 0.0
    # The pool prefers this gateway's zone: local holds its candidates there.
    prefer_zone: bool = False
    local: tuple[Member, ...] = ()
    ttft_slo_ms: float = 0.0
    # The owning tenant ("" shared), limits over every gateway, requests in flight per member
    # past which requests queue fairly (0: none), and the redaction for backends.
    tenant: str = ""
    rpm: int = 0
    tpm: int = 0
    queue_per_member: int = 0
    redactor: Redactor | None = None
    redaction: Mapping[str, str] = dataclasses.field(default_factory=dict)


class RoutingTable:
    """Model name -> Route. Replaced by full snapshots, patched by deltas."""

    def __init__(
        self,
        rng: random.Random | None = None,
        registry: PolicyRegistry | None = None,
        usable: Callable[[Member], bool] | None = None,
        zone: str = "",
        queue_per_member: int = 0,
    ) -> None:
        # Requests in flight per member past which a pool queues (--queue-per-member; pools
        # may set their own).
        self.queue_per_member = queue_per_member
        # This gateway's zone (--zone): pools that prefer it pick members there first.
        self.zone = zone
        # Whether this gateway can send to a member at all (it has the member's credential).
        self._usable = usable
        # Built at start-up with the plugins: the one place policies come from.
        self.registry = registry or PolicyRegistry()
        self._routes: dict[str, Route] = {}
        # Picks A/B arms for requests without a user key.
        self._rng = rng or random.Random()
        self.version = 0
        self.received = False
        # When the controller built the snapshot in use; /v1/models reports it as "created".
        self.created_s = 0
        # Unknown policy names already warned about, so a bad pool logs once, not per snapshot.
        self._warned: set[str] = set()
        # Model -> members held before a restarted controller's provisional snapshots, kept
        # alongside theirs until a snapshot that is final (gateway.proto RoutingSnapshot).
        self._carried: dict[str, tuple[Member, ...]] = {}
        # Set (and replaced) by every applied snapshot: requests held for a member wait on it.
        self._applied: asyncio.Event | None = None

    async def next_change(self) -> None:
        """Returns once the next snapshot has been applied."""
        if self._applied is None:
            self._applied = asyncio.Event()
        await self._applied.wait()

    def get(self, model: str) -> Route | None:
        return self._routes.get(model)

    def models(self) -> list[str]:
        return sorted(self._routes)

    def __contains__(self, model: object) -> bool:
        return model in self._routes

    def __len__(self) -> int:
        return len(self._routes)

    def apply(self, snapshot: gateway_pb2.RoutingSnapshot) -> bool:
        """Applies a snapshot; returns False for a stale delta (not newer than what we hold)."""
        if not snapshot.full and self.received and snapshot.version <= self.version:
            log.debug(
                "stale routing delta ignored",
                extra={"version": snapshot.version, "held": self.version},
            )
            return False
        if not snapshot.full and not self.received:
            # A delta without a base would leave a partial table; take it, the next full fixes it.
            log.warning(
                "routing delta before any full snapshot", extra={"version": snapshot.version}
            )
        old = self._routes
        merging = snapshot.provisional and self.received
        if merging and not self._carried:
            self._carried = {name: route.members for name, route in old.items()}
            log.info(
                "controller restarted: merging its routing into the table held until it settles",
                extra={"version": snapshot.version, "models": len(old)},
            )
        elif not snapshot.provisional and self._carried:
            self._carried = {}
            log.info(
                "controller settled: its routing is final", extra={"version": snapshot.version}
            )
        # A provisional table removes nothing: what it lacks may be an agent not yet back.
        routes = dict(old) if merging or not snapshot.full else {}
        if not merging:
            for name in snapshot.removed_models:
                routes.pop(name, None)
        for msg in snapshot.routes:
            routes[msg.model] = self._build_route(
                msg, old.get(msg.model), self._carried.get(msg.model, ())
            )
        self._routes = routes
        self.version = snapshot.version
        self.created_s = snapshot.created_unix_ms // 1000
        self.received = True
        if self._applied is not None:
            self._applied.set()
            self._applied = None
        return True

    def _candidates(self, members: tuple[Member, ...]) -> tuple[Member, ...]:
        usable = self._usable
        if usable is None:
            return tuple(m for m in members if m.routable)
        return tuple(m for m in members if m.routable and usable(m))

    def _local(self, prefer: bool, candidates: tuple[Member, ...]) -> tuple[Member, ...]:
        if not prefer or not self.zone:
            return ()
        return tuple(m for m in candidates if m.zone == self.zone)

    def recheck(self) -> None:
        """Works out every route's candidates again (a credential appeared or went)."""
        routes = {}
        for name, route in self._routes.items():
            candidates = self._candidates(route.members)
            routes[name] = dataclasses.replace(
                route, candidates=candidates, local=self._local(route.prefer_zone, candidates)
            )
        self._routes = routes

    def resolve(self, route: Route, ctx: PickContext) -> tuple[Route, tuple[Hop, ...]]:
        """The route that serves this request after route's rules and split (gateway/rules.py)."""
        return resolve(route, self._routes.get, ctx, self._rng)

    def _build_route(
        self,
        msg: gateway_pb2.ModelRoute,
        previous: Route | None,
        carried: tuple[Member, ...] = (),
    ) -> Route:
        rules = compile_rules(msg.model, msg.rules)
        split = compile_split(msg.splits, msg.split_header)
        members = tuple(member_from_proto(m, msg.model) for m in msg.members)
        if carried:
            have = {m.id for m in members}
            members += tuple(m for m in carried if m.id not in have)
        params = dict(msg.policy_params)
        name = msg.policy or FALLBACK_POLICY
        if (
            previous is not None
            and previous.policy_name == name
            and previous.policy_params == params
        ):
            # Keep the policy's state (round-robin position, prefix index, EWMAs) across load
            # updates: snapshots arrive on every load change.
            policy = previous.policy
        else:
            policy = self._make_policy(msg.model, name, params)
        member_ids = frozenset(m.id for m in members)
        candidates = self._candidates(members)
        if previous is None or policy is not previous.policy or member_ids != previous.member_ids:
            policy.on_members(members)
        policy.on_gateways(msg.gateways)
        policy.on_snapshot(members)
        return Route(
            model=msg.model,
            policy_name=name,
            policy_params=params,
            policy=policy,
            members=members,
            candidates=candidates,
            prefer_zone=msg.prefer_zone,
            ttft_slo_ms=msg.ttft_slo_ms,
            local=self._local(msg.prefer_zone, candidates),
            member_ids=member_ids,
            rules=rules,
            split=split,
            redirects=bool(rules or split),
            ttfb_timeout_s=msg.ttfb_timeout_s or DEFAULT_TTFB_S,
            ejection=EjectionSettings(
                consecutive=(
                    msg.eject_after_failures
                    if msg.HasField("eject_after_failures")
                    else DEFAULT_EJECTION.consecutive
                ),
                base_s=msg.eject_base_s or DEFAULT_EJECTION.base_s,
            ),
            hold_s=msg.hold_s,
            fallbacks=tuple(msg.fallbacks),
            spill_waiting=msg.spill_waiting,
            tenant=msg.tenant,
            rpm=msg.rpm,
            tpm=msg.tpm,
            queue_per_member=msg.max_in_flight_per_member or self.queue_per_member,
            redactor=self._redactor(msg, previous),
            redaction=dict(msg.redaction),
        )

    def _redactor(self, msg: gateway_pb2.ModelRoute, previous: Route | None) -> Redactor | None:
        """The pool's compiled redaction profile (kept from the previous snapshot when it did
        not change); a profile the gateway cannot use redacts with the defaults, never nothing."""
        if not msg.redaction:
            return None
        spec = dict(msg.redaction)
        if previous is not None and previous.redaction == spec:
            return previous.redactor
        try:
            return Redactor(parse_profile(spec))
        except ValueError as exc:
            log.warning(
                "bad redaction profile, redacting with the defaults",
                extra={"model": msg.model, "error": str(exc)},
            )
            return Redactor(parse_profile({}))

    def _make_policy(self, model: str, name: str, params: Mapping[str, str]) -> Policy:
        try:
            return self.registry.build(name, params)
        except UnknownPolicyError as exc:
            if name not in self._warned:
                self._warned.add(name)
                log.warning(
                    "unknown routing policy, using round_robin",
                    extra={"model": model, "policy": name, "error": str(exc)},
                )
            return self.registry.build(FALLBACK_POLICY, {})
        except ValueError as exc:
            # A known policy rejected its params: same fallback, a person must fix the pool.
            log.warning(
                "bad routing policy params, using round_robin",
                extra={"model": model, "policy": name, "error": str(exc)},
            )
            return self.registry.build(FALLBACK_POLICY, {})
