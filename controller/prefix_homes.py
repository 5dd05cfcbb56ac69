"""One home per prompt prefix that gateways keep sending, per pool, that every gateway follows.

A gateway alone places a prefix new to it on the least filled member and learns where it
thrashes. Several gateways cannot do that alike: each sees its own sends at once and the
others' a usage report later (seen: three gateways placing by rendezvous alone, which they
compute alike, put four of 8 groups on one 16k-token engine and none on another; each placing
by its own view instead split groups over two and three members). The controller sees every
gateway's sends (UsageAggregator: the prefixes each sent each member within 30 s, and their
prompts' sizes), so it gives each prefix that two gateway sends name one member, and every
gateway sends it there (Member.home_prefixes); load spills as before.

Only in pools whose every member's engine reports its cache: homes are balanced over the
reports, and with caches unknown a balance over guesses did worse than the gateways learning
them (an 8k-token engine given two 5,000-token groups; docs/benchmarks.md, "Routing in virtual
time"). What gateways learned from answers (Member.learned_cache_tokens) is not used: in the
first seconds, before any home, three gateways' sends overfill some member, and the bound
their misses there give is far below its cache (3,744 tokens of a 16k-token engine, held for
LEARNED_TTL_S, 10 minutes, with nothing sent there to raise it), which sent every home off it
and a third group onto each of two others, to thrash them for the rest of the run.

- A new prefix stays where gateways sent it while that member's share of the homed prompts
  stays within its share of the pool's cache; the others go, largest first, to the member
  least filled after taking it (prompt tokens over cache).
- A home is kept while gateways send its prefix (HOME_TTL_S). It moves when gateways found it
  missing at its member while the member held OTHERS times its prompt besides it (what can
  have pushed it out; the member then counts as holding no more than that for ROOM_S), to a
  member that would be less full with it, a member's once every MOVE_GAP_S, and not back to a
  member it left within LEFT_S."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from xxhash import xxh3_64_intdigest

from llmpool.clock import Clock

from .snapshot import ModelRoute, RouteMember, Routes

# Homes handed per member (Member.home_prefixes) and kept per pool.
PER_MEMBER = 256
PER_POOL = 4096
MOVE_GAP_S = 1.0
# A home is dropped this long after gateways last told a send of its prefix (the controller
# hands sends out for 30 s: one still in use is sent again within that).
HOME_TTL_S = 30.0
# A home found missing moves only where its member holds this many times its prompt besides it
# (less cannot have pushed it out: a slow hit, or running requests' room).
OTHERS = 1.5
# A home that moved off a member for a miss goes back there no sooner than this.
LEFT_S = 60.0
# How long a cache shown small by a miss is balanced as that small (then it is tried again).
ROOM_S = 60.0
POLICY = "prefix_aware"


@dataclass(slots=True)
class Home:
    member: str
    tokens: int
    since: float  # monotonic seconds it was homed there
    seen: float  # when a gateway's send of it was last told


def _rank(prefix: int, member: str) -> int:
    """Ties go by rendezvous (the same on every rebuild)."""
    return xxh3_64_intdigest(member.encode(), seed=prefix & 0xFFFFFFFFFFFFFFFF)


class PrefixHomes:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        # pool -> prefix -> its home, oldest homed first.
        self._pools: dict[str, dict[int, Home]] = {}
        # (pool, member) -> when a home last moved off it.
        self._moved: dict[tuple[str, str], float] = {}
        # (pool, member, prefix) -> when gateways first said the member missed the prefix (as
        # long as they say so); and when a home moved off the member (it goes back no sooner
        # than LEFT_S).
        self._misses: dict[tuple[str, str, int], float] = {}
        self._left: dict[tuple[str, str, int], float] = {}
        # (pool, member) -> the most its homes were seen to keep there (tokens: what it held
        # besides a prompt it was found missing), and when: a cache shown that small is
        # balanced as that small, for ROOM_S.
        self._room: dict[tuple[str, str], tuple[int, float]] = {}
        # Pool -> each member's cache as balanced and homed prompt tokens, as of the last
        # rebuild and the asks since (ask()); pools that give homes only.
        self._fill: dict[str, tuple[dict[str, int], dict[str, int]]] = {}

    def homes(self, pool: str) -> dict[int, Home]:
        return self._pools.get(pool, {})

    def ask(self, pool: str, prefix: int, tokens: int) -> str:
        """The prefix's home, homing it now if it has none (GatewayService.AskHome: a gateway
        about to send a long prompt whose prefix no gateway sent yet): the member least full
        with it (homed prompt tokens over cache, as of the last rebuild and the asks since).
        Every gateway that asks gets the same member, where each placing it by what it knows
        would not (seen: three of eight groups on one of four equal engines in 96% of draws).
        "": the pool gives no homes (one gateway, another policy, a cache not reported)."""
        fill = self._fill.get(pool)
        if fill is None:
            return ""
        caches, load = fill
        homes = self._pools[pool]
        home = homes.get(prefix)
        if home is not None and home.member in caches:
            return home.member
        # A prompt larger than any cache fills the largest; a claim past that is no more.
        tokens = max(1, min(tokens, max(caches.values())))
        best = min(
            caches, key=lambda mid: ((load[mid] + tokens) / caches[mid], -_rank(prefix, mid))
        )
        now = self._clock.monotonic()
        homes[prefix] = Home(best, tokens, now, now)
        load[best] += tokens
        _trim(homes, load)
        return best

    def apply(self, routes: Routes) -> Routes:
        """The routes with each member's homes (pools routed by prefix_aware with several
        gateways; the others as they are, and their homes dropped)."""
        now = self._clock.monotonic()
        out: Routes = {}
        for name, route in routes.items():
            if route.gateways < 2 or route.policy != POLICY:
                self._drop(name)
                out[name] = route
                continue
            homes = self.place(name, route.members, now)
            out[name] = with_homes(route, homes) if homes else route
        for name in [p for p in self._pools if p not in routes]:
            self._drop(name)
        return out

    def _drop(self, pool: str) -> None:
        if self._pools.pop(pool, None) is not None:
            self._moved = {k: v for k, v in self._moved.items() if k[0] != pool}
            self._misses = {k: v for k, v in self._misses.items() if k[0] != pool}
            self._left = {k: v for k, v in self._left.items() if k[0] != pool}
            self._room = {k: v for k, v in self._room.items() if k[0] != pool}
        self._fill.pop(pool, None)

    def place(self, pool: str, members: Sequence[RouteMember], now: float) -> dict[int, Home]:
        """Updates the pool's homes from what gateways sent its members lately."""
        live = [m for m in members if m.healthy and not m.draining]
        homes = self._pools.setdefault(pool, {})
        if not live or not all(m.cache_tokens > 0 for m in live):
            # Homes are balanced over caches engines report: where one says nothing, the
            # gateways learn the caches from answers and place as each learns (a balance over
            # guessed caches put two groups on an 8k-token engine and kept them there).
            homes.clear()
            self._fill.pop(pool, None)
            return homes
        caches = {m.id: m.cache_tokens for m in live}
        for mid in caches:
            shown = self._room.get((pool, mid))
            if shown is not None:
                if now - shown[1] > ROOM_S:
                    del self._room[(pool, mid)]
                else:
                    caches[mid] = max(1, min(caches[mid], shown[0]))
        # prefix -> member -> gateways that sent it there; and its prompt's tokens.
        seen: dict[int, dict[str, int]] = {}
        size: dict[int, int] = {}
        for m in live:
            counts = m.sent_prefix_senders
            if len(counts) != len(m.sent_prefixes):
                counts = (1,) * len(m.sent_prefixes)
            for prefix, tokens, senders in zip(
                m.sent_prefixes, m.sent_prefix_tokens, counts, strict=False
            ):
                seen.setdefault(prefix, {})[m.id] = senders
                size[prefix] = max(size.get(prefix, 0), tokens)
        # Kept while sent (a miss a gateway found refutes the send it told, not the home).
        for prefix in [
            p for p, h in homes.items() if h.member not in caches or now - h.seen > HOME_TTL_S
        ]:
            del homes[prefix]
        load = dict.fromkeys(caches, 0)
        for prefix, home in homes.items():
            if prefix in size:
                home.tokens = size[prefix]
                home.seen = now
            load[home.member] += home.tokens
        # Sent by two gateways: a prefix that recurs (a unique prompt is sent once).
        new = [p for p, where in seen.items() if p not in homes and sum(where.values()) >= 2]
        if new:
            self._place_new(homes, new, seen, size, caches, load, now)
        self._rebalance(pool, homes, live, caches, load, now)
        _trim(homes, load)
        self._fill[pool] = (caches, load)
        return homes

    def _place_new(
        self,
        homes: dict[int, Home],
        new: list[int],
        seen: dict[int, dict[str, int]],
        size: dict[int, int],
        caches: dict[str, int],
        load: dict[str, int],
        now: float,
    ) -> None:
        total = sum(load.values()) + sum(size[p] for p in new)
        pool_cache = sum(caches.values())
        rest = []
        # Largest first: the greedy balance that leaves the least over.
        for prefix in sorted(new, key=lambda p: (-size[p], p)):
            tokens = size[prefix]
            where = seen[prefix]
            there = max(where, key=lambda mid: (where[mid], _rank(prefix, mid)))
            share = total * caches[there] / pool_cache
            if load[there] + tokens <= share + tokens / 2:
                homes[prefix] = Home(there, tokens, now, now)
                load[there] += tokens
            else:
                rest.append(prefix)
        for prefix in rest:
            tokens = size[prefix]
            where = seen[prefix]
            best = min(
                caches,
                key=lambda mid: (
                    (load[mid] + tokens) / caches[mid],
                    mid not in where,
                    -_rank(prefix, mid),
                ),
            )
            homes[prefix] = Home(best, tokens, now, now)
            load[best] += tokens

    def _rebalance(
        self,
        pool: str,
        homes: dict[int, Home],
        live: Sequence[RouteMember],
        caches: dict[str, int],
        load: dict[str, int],
        now: float,
    ) -> None:
        misses = self._misses
        told = set()
        for m in live:
            for prefix in m.missed_prefixes:
                key = (pool, m.id, prefix)
                told.add(key)
                misses.setdefault(key, now)
        for key in [k for k in misses if k[0] == pool and k not in told]:
            del misses[key]
        left = self._left
        for key in [k for k, at in left.items() if now - at > LEFT_S]:
            del left[key]
        for m in live:
            mid = m.id
            if now - self._moved.get((pool, mid), -MOVE_GAP_S) < MOVE_GAP_S:
                continue
            mine = [p for p, h in homes.items() if h.member == mid]
            # Found missing there since homed there: it does not keep it beside the others.
            missed = [
                p
                for p in mine
                if misses.get((pool, mid, p), -1.0) > homes[p].since
                and load[mid] - homes[p].tokens >= OTHERS * homes[p].tokens
            ]
            for prefix in missed:
                tokens = homes[prefix].tokens
                room = max(1, load[mid] - tokens)
                shown = self._room.get((pool, mid))
                if shown is None or room < shown[0]:
                    self._room[(pool, mid)] = (room, now)
                    caches[mid] = max(1, min(caches[mid], room))
                if not self._move(pool, homes, prefix, mid, caches, load, load[mid] / room, now):
                    break

    def _move(
        self,
        pool: str,
        homes: dict[int, Home],
        prefix: int,
        mid: str,
        caches: dict[str, int],
        load: dict[str, int],
        fill: float,
        now: float,
    ) -> bool:
        """Moves the prefix's home off mid, as full as `fill`, to the member least full with it,
        where that is less full (and not one it left lately)."""
        tokens = homes[prefix].tokens
        left = self._left
        best = min(
            (o for o in caches if o != mid and (pool, o, prefix) not in left),
            key=lambda o: ((load[o] + tokens) / caches[o], -_rank(prefix, o)),
            default="",
        )
        if not best or (load[best] + tokens) / caches[best] >= fill:
            return False
        del homes[prefix]
        homes[prefix] = Home(best, tokens, now, now)
        load[mid] -= tokens
        load[best] += tokens
        self._moved[(pool, mid)] = now
        left[(pool, mid, prefix)] = now
        return True


def _trim(homes: dict[int, Home], load: dict[str, int]) -> None:
    """Drops the oldest homes past PER_POOL, and their tokens from their members' load."""
    while len(homes) > PER_POOL:
        gone = homes.pop(next(iter(homes)))
        if gone.member in load:
            load[gone.member] -= gone.tokens


def with_homes(route: ModelRoute, homes: dict[int, Home]) -> ModelRoute:
    by_member: dict[str, list[int]] = {}
    for prefix, home in homes.items():
        by_member.setdefault(home.member, []).append(prefix)
    members = tuple(
        dataclasses.replace(m, home_prefixes=tuple(by_member[m.id][-PER_MEMBER:]))
        if m.id in by_member
        else m
        for m in route.members
    )
    return dataclasses.replace(route, members=members)
