"""Usage reported by gateways, aggregated per member: in-flight summed, with expiry."""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import deque
from dataclasses import dataclass
from typing import TypeVar

from llmpool.cache_bound import cap_bound
from llmpool.clock import Clock

from .ledger import Ledger
from .metrics import ControllerMetrics


@dataclass(frozen=True)
class MemberUsage:
    """What one gateway sent one member since its last report (mirrors llmpool.v1.MemberUsage);
    in_flight is the count at the report."""

    member_id: str
    model: str = ""
    in_flight: int = 0
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    mean_latency_ms: float = 0.0
    mean_ttft_ms: float = 0.0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    # The cache the gateway learned the member has, tokens, and the prefill speed it learned
    # there, seconds a token (0: none learned).
    learned_cache_tokens: int = 0
    learned_prefill_s_per_token: float = 0.0
    # Prompt prefixes (first-block hashes) the gateway found the member no longer held.
    missed_prefixes: tuple[int, ...] = ()
    # Prompt prefixes the gateway sent the member, and each prompt's size in tokens.
    sent_prefixes: tuple[int, ...] = ()
    sent_prefix_tokens: tuple[int, ...] = ()
    # Verdicts on the gateway's predictions there: how deep in the member's LRU each prompt's
    # held part sat, tokens, and whether it was found cached.
    verdict_reach_tokens: tuple[int, ...] = ()
    verdict_hits: tuple[bool, ...] = ()


@dataclass(frozen=True)
class MemberCondition:
    """A member one gateway keeps out of its picks (mirrors llmpool.v1.MemberCondition)."""

    member_id: str
    condition: str = ""
    seconds_left: float = 0.0
    ejections: int = 0
    gateway_id: str = ""


@dataclass(frozen=True)
class UsageReport:
    """One gateway's report (mirrors llmpool.v1.UsageReport): every member with requests in
    flight or finished since the last one, and the routing version it applies."""

    gateway_id: str
    members: tuple[MemberUsage, ...] = ()
    routing_version: int = 0
    conditions: tuple[MemberCondition, ...] = ()
    # Requests held now for want of any member, per model (a pool scaled to zero).
    held: dict[str, int] = dataclasses.field(default_factory=dict)


# Conditions and held models kept per gateway report at most; models with activity kept.
_MAX_CONDITIONS = 1000
_MAX_MODELS = 10_000
# A gateway's learned cache for a member counts this long after it last said it: a gateway
# names a member only while it sends it requests, and what it learned stays true meanwhile.
LEARNED_TTL_S = 600.0
# Learned caches above this many tokens are not believed (no engine holds a billion), nor
# prefill speeds slower than a second a token.
_MAX_LEARNED_TOKENS = 1 << 30
_MAX_LEARNED_S_PER_TOKEN = 1.0
# A prefix a gateway found a member no longer held is handed to every gateway this long: they
# forget it there and place it elsewhere alike (a session's next turn comes within seconds).
MISSED_TTL_S = 60.0
# Bounds: prefixes taken from one member's line of a report, kept per member, members kept.
_MAX_MISSED_PER_REPORT = 64
_MAX_MISSED_PER_MEMBER = 256
_MAX_MISSED_MEMBERS = 10_000
# A prefix a gateway sent a member is handed to every gateway this long (the same bounds): they
# count it in the member's cache and follow it there. A prefix still in use is sent, and so
# reported, again; one that is not has most likely left a busy engine's cache by then.
SENT_TTL_S = 30.0
# Tokens believed of one prompt (the longest context any engine takes is well below), and
# gateways kept per prefix.
_MAX_SENT_TOKENS = 1 << 24
_MAX_SENDERS = 64
# Gateways' verdicts kept per member (the latest; within LEARNED_TTL_S), three gateways' worth
# of what each keeps of its own (cache_estimate.POINTS).
POOLED_VERDICTS = 144


@dataclass(frozen=True)
class Activity:
    """A model's requests finished since the autoscaler last looked, and their mean TTFT."""

    requests: int = 0
    ttft_ms: float | None = None


@dataclass(frozen=True)
class MemberLoad:
    in_flight: float = 0.0
    latency_ms: float = 0.0
    # The lower median of the caches gateways learned the member has, tokens, and the median
    # of the prefill speeds they learned, seconds a token (0: none).
    learned_cache_tokens: int = 0
    learned_prefill_s_per_token: float = 0.0
    # Prompt prefixes gateways found the member no longer held, within MISSED_TTL_S, latest last.
    missed_prefixes: tuple[int, ...] = ()
    # Prompt prefixes gateways sent it within SENT_TTL_S, latest last, their prompts' tokens,
    # and how many gateways said so.
    sent_prefixes: tuple[int, ...] = ()
    sent_prefix_tokens: tuple[int, ...] = ()
    sent_prefix_senders: tuple[int, ...] = ()


_NO_LOAD = MemberLoad()


@dataclass
class _Observed:
    in_flight: int
    latency_ms: float
    at: float


class UsageAggregator:
    """Each gateway's latest in-flight per member; reports older than ttl_s do not count."""

    def __init__(
        self,
        clock: Clock,
        metrics: ControllerMetrics,
        ttl_s: float = 5.0,
        ledger: Ledger | None = None,
    ) -> None:
        self._ledger = ledger
        self._clock = clock
        self._metrics = metrics
        self._ttl_s = ttl_s
        self._latest: dict[tuple[str, str], _Observed] = {}
        # gateway id -> when its latest report came (whatever members it listed) and the
        # routing version it had applied.
        self._reported_at: dict[str, tuple[float, int]] = {}
        # gateway id -> the members it keeps out of its picks, from its latest report.
        self._conditions: dict[str, tuple[MemberCondition, ...]] = {}
        # gateway id -> requests it holds per model, from its latest report.
        self._held: dict[str, dict[str, int]] = {}
        # model -> [requests, TTFT ms summed over requests that had one, how many had one].
        self._activity: dict[str, list[float]] = {}
        # (gateway id, member id) -> the cache that gateway learned the member has, and when
        # it last said so; likewise the prefill speed it learned there.
        self._learned: dict[tuple[str, str], tuple[int, float]] = {}
        self._speeds: dict[tuple[str, str], tuple[float, float]] = {}
        # member id -> prefix -> when a gateway last said the member missed it (oldest first).
        self._missed: dict[str, dict[int, float]] = {}
        # member id -> prefix -> gateway id -> (its prompt's tokens, when that gateway last
        # said it sent it there); prefixes oldest first.
        self._sent: dict[str, dict[int, dict[str, tuple[int, float]]]] = {}
        # member id -> every gateway's latest verdicts there: (reach, tokens; hit; when); and
        # the cache they bound (None: none), for members whose verdicts did not change since.
        self._verdicts: dict[str, deque[tuple[int, bool, float]]] = {}
        self._bounds: dict[str, float | None] = {}

    def record(self, report: UsageReport) -> None:
        now = self._clock.monotonic()
        self._reported_at[report.gateway_id] = (now, report.routing_version)
        # Each report lists them in full: the latest replaces the previous.
        if report.conditions or report.gateway_id in self._conditions:
            self._conditions[report.gateway_id] = tuple(
                dataclasses.replace(c, gateway_id=report.gateway_id)
                for c in report.conditions[:_MAX_CONDITIONS]
            )
        if report.held or report.gateway_id in self._held:
            self._held[report.gateway_id] = {
                model: n for model, n in list(report.held.items())[:_MAX_CONDITIONS] if n > 0
            }
        for m in report.members:
            key = (report.gateway_id, m.member_id)
            self._latest[key] = _Observed(m.in_flight, m.mean_latency_ms, now)
            if 0 < m.learned_cache_tokens <= _MAX_LEARNED_TOKENS:
                self._learned[key] = (m.learned_cache_tokens, now)
            else:
                # The gateway learned nothing of it (it restarted, or grew back to the report).
                self._learned.pop(key, None)
            if m.verdict_reach_tokens:
                self._note_verdicts(m.member_id, m.verdict_reach_tokens, m.verdict_hits, now)
            if m.sent_prefixes:
                self._note_sent(
                    report.gateway_id, m.member_id, m.sent_prefixes, m.sent_prefix_tokens, now
                )
            if m.missed_prefixes:
                # After the sends: a miss refutes those told so far, this report's too.
                self._note_missed(m.member_id, m.missed_prefixes, now)
            speed = m.learned_prefill_s_per_token
            if 0 < speed <= _MAX_LEARNED_S_PER_TOKEN:  # NaN fails both
                self._speeds[key] = (speed, now)
            else:
                self._speeds.pop(key, None)
            model = m.model or "unknown"
            if m.requests and (model in self._activity or len(self._activity) < _MAX_MODELS):
                seen = self._activity.setdefault(model, [0.0, 0.0, 0.0])
                seen[0] += m.requests
                if m.mean_ttft_ms > 0:
                    seen[1] += m.mean_ttft_ms * m.requests
                    seen[2] += m.requests
            if m.requests:
                self._metrics.requests.labels(model).inc(m.requests)
            if m.errors:
                self._metrics.request_errors.labels(model).inc(m.errors)
            if m.prompt_tokens:
                self._metrics.tokens.labels(model, "prompt").inc(m.prompt_tokens)
            if m.completion_tokens:
                self._metrics.tokens.labels(model, "completion").inc(m.completion_tokens)
            # A report is trusted no further than its numbers: NaN, negative or absurd costs
            # count as none.
            cost = m.cost_usd if math.isfinite(m.cost_usd) and 0 < m.cost_usd < 1e6 else 0.0
            if cost:
                self._metrics.cost.labels(model, m.member_id).inc(cost)
            if self._ledger is not None and m.requests:
                self._ledger.add(
                    model,
                    m.member_id,
                    m.requests,
                    m.prompt_tokens,
                    m.cached_tokens,
                    m.completion_tokens,
                    cost,
                )

    def loads(self) -> dict[str, MemberLoad]:
        """Per member: in-flight summed over gateways, latency averaged over those that saw any."""
        now = self._clock.monotonic()
        for key in [k for k, o in self._latest.items() if now - o.at > self._ttl_s]:
            del self._latest[key]
        in_flight: dict[str, float] = {}
        latencies: dict[str, list[float]] = {}
        for (_, member), obs in self._latest.items():
            in_flight[member] = in_flight.get(member, 0.0) + obs.in_flight
            if obs.latency_ms > 0:
                latencies.setdefault(member, []).append(obs.latency_ms)
        loads = {
            member: MemberLoad(
                in_flight=total,
                latency_ms=sum(latencies.get(member, [])) / max(1, len(latencies.get(member, []))),
            )
            for member, total in in_flight.items()
        }
        for member, tokens in self._learned_caches(now).items():
            loads[member] = dataclasses.replace(
                loads.get(member, _NO_LOAD), learned_cache_tokens=tokens
            )
        for member, speed in self._learned_speeds(now).items():
            loads[member] = dataclasses.replace(
                loads.get(member, _NO_LOAD), learned_prefill_s_per_token=speed
            )
        for member, keys in list(self._missed.items()):
            while keys and now - next(iter(keys.values())) > MISSED_TTL_S:
                del keys[next(iter(keys))]
            if not keys:
                del self._missed[member]
                continue
            loads[member] = dataclasses.replace(
                loads.get(member, _NO_LOAD), missed_prefixes=tuple(keys)
            )
        for member, sent in list(self._sent.items()):
            for prefix, senders in list(sent.items()):
                for gateway in [g for g, (_, at) in senders.items() if now - at > SENT_TTL_S]:
                    del senders[gateway]
                if not senders:
                    del sent[prefix]
            if not sent:
                del self._sent[member]
                continue
            loads[member] = dataclasses.replace(
                loads.get(member, _NO_LOAD),
                sent_prefixes=tuple(sent),
                # The latest size any gateway said.
                sent_prefix_tokens=tuple(
                    max(senders.values(), key=lambda ta: ta[1])[0] for senders in sent.values()
                ),
                sent_prefix_senders=tuple(len(senders) for senders in sent.values()),
            )
        return loads

    def forget_learned(self, member_ids: set[str]) -> None:
        """Drops what gateways learned of these members (caches, prefill speeds, verdicts,
        prefixes they found missing or sent there): their pool's policy changed."""
        for table in (self._learned, self._speeds):
            for key in [k for k in table if k[1] in member_ids]:
                del table[key]
        for member in member_ids:
            self._missed.pop(member, None)
            self._sent.pop(member, None)
            self._verdicts.pop(member, None)
            self._bounds.pop(member, None)

    def _note_verdicts(
        self, member: str, reach: tuple[int, ...], hits: tuple[bool, ...], now: float
    ) -> None:
        """Depths paired with verdicts; a line that pairs them wrongly (a broken or hostile
        gateway) is taken no further than its pairs, and depths past any engine's are not."""
        points = self._verdicts.get(member)
        if points is None:
            if len(self._verdicts) >= _MAX_MISSED_MEMBERS:
                return
            points = self._verdicts[member] = deque(maxlen=POOLED_VERDICTS)
        taken = False
        for tokens, hit in list(zip(reach, hits, strict=False))[:_MAX_MISSED_PER_REPORT]:
            if 0 < tokens <= _MAX_SENT_TOKENS:
                points.append((tokens, bool(hit), now))
                taken = True
        if taken:
            self._bounds.pop(member, None)  # Bounded afresh when next asked.

    def _note_missed(self, member: str, prefixes: tuple[int, ...], now: float) -> None:
        """A gateway found the member no longer held these: the sends of them there that
        gateways told so far are refuted, and no longer handed out as held there (seen: a
        gateway sent a session back to where it had just found it missing, because another had
        sent it there within the last 30 s)."""
        sent = self._sent.get(member)
        if sent:
            for key in prefixes[:_MAX_MISSED_PER_REPORT]:
                sent.pop(key, None)
        keys = self._missed.get(member)
        if keys is None:
            if len(self._missed) >= _MAX_MISSED_MEMBERS:
                return
            keys = self._missed[member] = {}
        for key in prefixes[:_MAX_MISSED_PER_REPORT]:
            keys.pop(key, None)
            keys[key] = now
        while len(keys) > _MAX_MISSED_PER_MEMBER:
            del keys[next(iter(keys))]

    def _note_sent(
        self,
        gateway: str,
        member: str,
        prefixes: tuple[int, ...],
        tokens: tuple[int, ...],
        now: float,
    ) -> None:
        """Prefixes paired with their prompts' tokens; a report's line may pair them wrongly (a
        broken or hostile gateway): a prefix without a size, or with one past any engine's,
        is not taken."""
        sent = self._sent.get(member)
        if sent is None:
            if len(self._sent) >= _MAX_MISSED_MEMBERS:
                return
            sent = self._sent[member] = {}
        for key, size in list(zip(prefixes, tokens, strict=False))[:_MAX_MISSED_PER_REPORT]:
            if 0 < size <= _MAX_SENT_TOKENS:
                senders = sent.pop(key, None) or {}
                senders.pop(gateway, None)
                senders[gateway] = (size, now)
                while len(senders) > _MAX_SENDERS:
                    del senders[next(iter(senders))]
                sent[key] = senders
        while len(sent) > _MAX_MISSED_PER_MEMBER:
            del sent[next(iter(sent))]

    def _learned_speeds(self, now: float) -> dict[str, float]:
        """Per member, the median prefill speed gateways learned there within LEARNED_TTL_S: a
        gateway that saw too few requests alone on a member to learn it takes the others'."""
        found = _by_member(self._speeds, now)
        return {member: statistics.median(speeds) for member, speeds in found.items()}

    def _learned_caches(self, now: float) -> dict[str, int]:
        """Per member, the lower median of the caches gateways learned it has within
        LEARNED_TTL_S: each gateway bounds a member by how deep in its LRU the prompts it sent
        there missed, and the first to find the bound spares the others the misses of finding it
        again (with one or two saying, the smallest); with more, one gateway's bound that a busy
        host made up does not carry the others. Less where every gateway's verdicts there
        together bound it (llmpool/cache_bound.py): with N gateways each sees a member's misses
        1/N as often, and alone learns a small cache N times later (static backends behind
        three gateways thrashed an 8k-token engine for seconds while none had seen enough)."""
        found = _by_member(self._learned, now)
        caches = {member: statistics.median_low(caches) for member, caches in found.items()}
        bounds = self._bounds
        for member, points in list(self._verdicts.items()):
            while points and now - points[0][2] > LEARNED_TTL_S:
                points.popleft()
                bounds.pop(member, None)
            if not points:
                del self._verdicts[member]
                continue
            if member in bounds:
                bound = bounds[member]
            else:
                bound = bounds[member] = cap_bound((tokens, hit) for tokens, hit, _ in points)
            if bound is not None:
                learned = caches.get(member, 0)
                caches[member] = max(1, int(min(bound, learned or bound)))
        return caches

    def held(self) -> dict[str, int]:
        """Requests held per model, summed over gateways heard from within ttl_s."""
        now = self._clock.monotonic()
        total: dict[str, int] = {}
        for gateway, held in list(self._held.items()):
            at = self._reported_at.get(gateway)
            if at is None or now - at[0] > self._ttl_s:
                del self._held[gateway]
                continue
            for model, n in held.items():
                total[model] = total.get(model, 0) + n
        return total

    def take_activity(self) -> dict[str, Activity]:
        """Per model, what gateways finished since the previous call (which it resets)."""
        taken, self._activity = self._activity, {}
        return {
            model: Activity(int(n), ttft / timed if timed else None)
            for model, (n, ttft, timed) in taken.items()
        }

    def conditions(self, member_ids: set[str]) -> list[MemberCondition]:
        """What gateways heard from within ttl_s say about these members."""
        now = self._clock.monotonic()
        found: list[MemberCondition] = []
        for gateway, conditions in list(self._conditions.items()):
            at = self._reported_at.get(gateway)
            if at is None or now - at[0] > self._ttl_s:
                del self._conditions[gateway]
                continue
            found.extend(c for c in conditions if c.member_id in member_ids)
        return sorted(found, key=lambda c: (c.member_id, c.gateway_id))

    def quiet_since(self, member_id: str, since: float, min_version: int = 0) -> bool:
        """True when every gateway heard from within ttl_s has reported after `since` (monotonic),
        routing with snapshot min_version or newer, and had nothing in flight on member_id. A
        gateway lists every member with requests in flight in every report, so a member missing
        from one has none; one that routes with min_version (which no longer lists the member as
        a candidate) sends it nothing new."""
        now = self._clock.monotonic()
        for gateway, (at, version) in list(self._reported_at.items()):
            if now - at > self._ttl_s:
                del self._reported_at[gateway]
                continue
            if at < since or version < min_version:
                return False
            seen = self._latest.get((gateway, member_id))
            if seen is not None and seen.at == at and seen.in_flight > 0:
                return False
        return True


_Said = TypeVar("_Said", int, float)


def _by_member(
    said: dict[tuple[str, str], tuple[_Said, float]], now: float
) -> dict[str, list[_Said]]:
    """What gateways said of each member within LEARNED_TTL_S (older entries are dropped)."""
    for key in [k for k, (_, at) in said.items() if now - at > LEARNED_TTL_S]:
        del said[key]
    found: dict[str, list[_Said]] = {}
    for (_, member), (value, _) in said.items():
        found.setdefault(member, []).append(value)
    return found
