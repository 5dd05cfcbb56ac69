"""The pure autoscale step: a pool's policy, signals and history -> a typed decision.

Each second the controller asks what the pool's load wants (a recommendation), keeps the
recommendations of the last few minutes, and moves the replica count only when every one over
the up window wants more (then to the least of them) or every one over the down window wants
fewer (then to the most of them), as Kubernetes' HPA stabilisation does, outside the cooldowns.
Recommendations count READY replicas only: a replica still starting takes no load, so waiting
requests do not add replicas again while the first new one loads its weights.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .model import Autoscale

# At most how many recommendations are kept (one a second over the longer window).
_MAX_HISTORY = 4000
# A scale-down on "waiting" leaves each remaining replica's batch at most this full.
DOWN_FILL = 0.8


@dataclass(frozen=True)
class PoolSignals:
    """What the pool's load looks like now, summed over its READY, routable replicas."""

    ready: int = 0
    # Requests decoding and queued in the engines (agents' reports).
    running: float = 0.0
    waiting: float = 0.0
    # The most requests decoding on one replica now: a floor on what one replica can batch.
    peak_running: float = 0.0
    # Requests in flight to the pool's members, summed over gateways (their reports), and held
    # at gateways for want of any member (a pool scaled to zero).
    in_flight: float = 0.0
    held: int = 0
    # Mean KV cache use over replicas that report it; None when none does.
    kv_usage: float | None = None
    # Gateways' recent mean time to first token for the pool, ms; None without traffic.
    ttft_ms: float | None = None
    # Requests gateways finished on the pool's members since the previous step.
    requests: int = 0


@dataclass(frozen=True)
class ScaleState:
    """What the autoscaler remembers of one pool between steps (monotonic seconds)."""

    # (when, recommendation), oldest first.
    history: tuple[tuple[float, int], ...] = ()
    last_up_at: float = -math.inf
    last_down_at: float = -math.inf
    # The most requests one replica was seen decoding at once (exactly that while requests
    # waited): what one replica holds before it queues.
    batch: float = 0.0
    # When the first step ran: a window is only judged once the history spans it, so a
    # restarted controller does not scale on one second of signals.
    since: float | None = None


@dataclass(frozen=True)
class ScaleUp:
    pool: str
    current: int
    target: int
    reason: str


@dataclass(frozen=True)
class ScaleDown:
    pool: str
    current: int
    target: int
    reason: str


@dataclass(frozen=True)
class Keep:
    pool: str
    current: int
    reason: str


ScaleDecision = ScaleUp | ScaleDown | Keep


@dataclass(frozen=True)
class Recommendation:
    replicas: int
    # The metric per READY replica (for status), and why, for people.
    value: float
    why: str


def recommend(
    policy: Autoscale, ttft_slo_ms: float, s: PoolSignals, batch: float
) -> Recommendation:
    """Replicas the load asks for now, before windows, cooldowns and the floor and ceiling.

    `waiting`: past the target (waiting requests per READY replica), all the demand (decoding +
    queued + held) divided by what one replica should carry: its batch (the most one was seen
    decoding) plus the queue the target allows. Within the target, fewer replicas only when the
    demand fits their batches DOWN_FILL full, so a scale-down does not start a queue (the
    waiting time, and so the demand, grows once a batch is full).
    `kv` and `ttft`: proportional (replicas x value / target), as HPA does.
    Any request in flight or held keeps at least one replica."""
    target = policy.target_for(ttft_slo_ms)
    active = s.held > 0 or s.in_flight > 0 or s.running > 0 or s.waiting > 0 or s.requests > 0
    floor = 1 if active else 0
    ready = max(s.ready, 0)
    if policy.metric == "waiting":
        demand = max(s.running + s.waiting, s.in_flight) + s.held
        size = max(batch, s.peak_running, 1.0)
        value = s.waiting / ready if ready else float(s.held)
        if not ready or value > target:
            wanted = math.ceil(demand / (size + target) - 1e-9)
            why = (
                f"{demand:g} requests (decoding, queued or held) at {size:g} decoding + "
                f"{target:g} waiting per replica"
            )
        else:
            # Fewer replicas only when what runs fits their batches with room to spare: a
            # queue grows without bound once a replica's batch is full all the time.
            wanted = min(ready, math.ceil(demand / (size * DOWN_FILL) - 1e-9))
            why = (
                f"{demand:g} requests, {value:g} waiting per replica (target {target:g}); "
                f"a replica decodes {size:g}"
            )
    elif policy.metric == "kv":
        value = s.kv_usage if s.kv_usage is not None else 0.0
        wanted = math.ceil(ready * value / target - 1e-9) if target > 0 else ready
        why = f"KV cache {value:.0%} used on {ready} replica(s), target {target:.0%}"
    else:
        value = s.ttft_ms if s.ttft_ms is not None else 0.0
        wanted = math.ceil(ready * value / target - 1e-9) if target > 0 else ready
        why = f"TTFT {value:.0f} ms on {ready} replica(s), SLO {target:g} ms"
    if s.held and not ready:
        why = f"{s.held} request(s) held at gateways with no replica ready"
    return Recommendation(max(wanted, floor), value, why)


def step(
    pool: str,
    policy: Autoscale,
    ttft_slo_ms: float,
    current: int,
    signals: PoolSignals,
    state: ScaleState,
    now: float,
) -> tuple[ScaleDecision, ScaleState, Recommendation]:
    """One autoscale step for one pool: the decision, the state to keep, the recommendation."""
    # The most one replica decodes at once: the most seen, or exactly what runs while requests
    # queue (then the batch is full, whatever it was believed to be).
    batch = max(state.batch, signals.peak_running)
    if signals.waiting > 0 and signals.peak_running > 0:
        batch = signals.peak_running
    rec = recommend(policy, ttft_slo_ms, signals, batch)
    horizon = now - max(policy.up_window_s, policy.down_window_s)
    history = tuple(h for h in state.history if h[0] >= horizon)[-_MAX_HISTORY:]
    history += ((now, rec.replicas),)
    since = now if state.since is None else state.since
    state = dataclasses.replace(state, history=history, batch=batch, since=since)
    low, high = policy.min_replicas, policy.max_replicas

    def clamp(n: int) -> int:
        return min(max(n, low), high)

    if current < low or current > high:
        target = clamp(current)
        bound = "floor" if current < low else "ceiling"
        decision: ScaleDecision = (ScaleUp if target > current else ScaleDown)(
            pool, current, target, f"outside the autoscale {bound} ({low}..{high})"
        )
        return decision, _scaled(state, decision, now), rec
    if current == 0 and signals.held > 0:
        # Activation: a request waits at a gateway; no window stands between it and a replica.
        decision = ScaleUp(pool, 0, clamp(1), rec.why)
        return decision, _scaled(state, decision, now), rec
    if current > 0 and signals.ready == 0:
        return Keep(pool, current, "no replica is ready yet: waiting for one"), state, rec
    # Every recommendation over the up window must want more: the least of them is the target.
    up_to = min(n for t, n in history if t >= now - policy.up_window_s)
    down_to = max(n for t, n in history if t >= now - policy.down_window_s)
    if now - since < policy.up_window_s:
        up_to = current
    if now - since < policy.down_window_s:
        down_to = current
    if clamp(up_to) > current:
        if now - state.last_up_at < policy.up_cooldown_s:
            return Keep(pool, current, f"wants {clamp(up_to)}; in the up cooldown"), state, rec
        decision = ScaleUp(pool, current, clamp(up_to), rec.why)
        return decision, _scaled(state, decision, now), rec
    if clamp(down_to) < current:
        last = max(state.last_up_at, state.last_down_at)
        if now - last < policy.down_cooldown_s:
            return Keep(pool, current, f"wants {clamp(down_to)}; in the down cooldown"), state, rec
        why = rec.why if down_to else "no request for the whole down window"
        decision = ScaleDown(pool, current, clamp(down_to), why)
        return decision, _scaled(state, decision, now), rec
    if clamp(rec.replicas) > current:
        why = f"wants {clamp(rec.replicas)}; waiting out the up window ({rec.why})"
    elif clamp(rec.replicas) < current:
        why = f"wants {clamp(rec.replicas)}; waiting out the down window ({rec.why})"
    else:
        why = f"steady ({rec.why})"
    return Keep(pool, current, why), state, rec


def _scaled(state: ScaleState, decision: ScaleDecision, now: float) -> ScaleState:
    if isinstance(decision, ScaleUp):
        return dataclasses.replace(state, last_up_at=now)
    return dataclasses.replace(state, last_down_at=now)
