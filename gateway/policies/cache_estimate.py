"""What each member's prefix cache really holds, learned from how its answers come back.

The prefix index bounds each member by a cap (units of the index's first block size). It
starts from what the member reports (its engine's KV cache, via the agent; REPORTED_USABLE of
it) or, for a member that reports nothing, from member_capacity_tokens. Every answer then
tells whether the index was right: a request the index expected to find its prefix cached
there either was served from cache (a hit) or prefilled it all again (a miss). Two signals
tell which:

- the answer's usage says how many prompt tokens came from cache (OpenAI, Anthropic, and
  engines that report it), once a member has shown it reports them;
- otherwise time to first token. The pool's seconds per unit of prefill are learned from
  requests the index expected to miss that had the member's prefill to themselves (this
  gateway's all answering already, and, after the first few, nothing of another gateway in
  flight there when sent: a request alone on a member is rare under load, and waiting for it
  a pool at 4 requests/s never learned the speed; the upper quartile of the first few, then
  an average).
  Every time below is counted past the fastest answer the pool ever gave (the floor: what the
  gateway, the network and an engine step cost a request of any size; with a short new part a
  hit is little more than that). A hit takes at most the new part and half the held part's
  prefill: a request that fast is a hit however busy the member was. A slower one is a miss
  if it had the member's prefill to itself (others there all answering already: a decode step
  is all they add) and took three quarters of the held part past its new part,
  or if it took LOADED_MARGIN times the prefill of all of its prompt and of this gateway's
  work queued ahead of it (a thrashing member's queue of cold prefills). Otherwise it says
  nothing: under load a hit waits behind other requests' steps and looks slow, a busy host
  delays it too, and such verdicts would shrink a cache that is fine.

The cap moves on the outcomes of WINDOW decided predictions (FIRST_WINDOW the first time):
more than MISSES_TO_SHRINK of them misses (a cache too small for what the index gives it
thrashes: most predictions miss) means the member keeps less than the index believes (a
smaller cache, other gateways' traffic, running requests' KV taking room), and the cap
shrinks to what the index held there times (1 - half the miss fraction), by a quarter at
most; fewer than MISSES_TO_GROW with the index full at its cap grows it by GROW, slowly. A
miss also makes the index forget that prompt there (forgets_on_miss), as does a new prompt
that waited for room (_stalled). A cap never grows past the usable share of the member's
report. Time to first token shrinks the cap of a member that reports its cache only through
the depth bound (robust to a busy host's noise, unlike a window's share of misses) and to no
less than REPORTED_FLOOR of the report: an engine's KV holds its running requests' answers as
well as cached prompts, so fewer prompts fit than its size says, but not far fewer.

With several gateways each learns from its own answers, and the controller hands every one the
lower median of the caps they learned for a member (Member.learned_cache_tokens; the smallest
while one or two have learned one): a gateway takes a new one that is below its own (the first
to find a small engine spares the others the misses of finding it again; each counts depth in
its own sends, which with prompts placed alike on every gateway come to about the same), and
grows back on its own evidence as before. Answers are judged, and queues drained, at the median
speed the gateways learned (the controller's), which a gateway with none yet starts from: three
gateways learned 18, 6 and 7 us a token of one pool, and the one at 18 took every miss for a hit."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.policies.held import UNBOUNDED
from gateway.policies.prefix_index import PrefixIndex
from gateway.policies.rough_room import RoughRooms
from gateway.policies.ticket import Ticket
from llmpool.cache_bound import LEAST_KEPT, cap_bound

WINDOW = 8
FIRST_WINDOW = 4
MISSES_TO_SHRINK = 0.5
MISSES_TO_GROW = 0.1
GROW = 1.1
# A cap never goes below this many units (a few prompts' worth).
MIN_UNITS = 16
# A member that reports nothing may grow to this many times member_capacity_tokens.
UNREPORTED_CEILING = 4
# Units a prediction must rest on before its outcome teaches anything.
MIN_HELD = 4
MIN_NEW_FOR_SPEED = 8
# Expected misses whose upper quartile starts the learned speed (upper: a sample may be a
# prefix another gateway cached there, far too fast, and a speed learned too fast would make
# every hit look like a miss).
FIRST_SAMPLES = 5
# A request slower than this many times the prefill of its whole prompt and of what this
# gateway queued ahead of it missed, however busy the member: a hit waiting that long needs
# other gateways' cold prefills ahead of it, which a right index makes rare.
LOADED_MARGIN = 2.0
# A prompt new to a member, sent with its prefill to itself there, that took this many times
# that prefill and this gateway's queue ahead of it waited for KV room (_stalled)...
STALL_MARGIN = 2.0
# ... when the member held this many times the prompt (others' prompts beside it).
STALL_OTHERS = 1.5
# Later samples count at most this many times the learned speed (slower ones waited).
SAMPLE_CEILING = 2.0
# How far a new expected miss moves the learned seconds per unit.
SPEED_ALPHA = 0.2
# Verdicts per member kept with the depth they were at (llmpool/cache_bound.py bounds the
# cap from them).
POINTS = 48
# Verdicts kept per member for the next usage report (the controller takes no more from a
# report's line).
VERDICTS_TO_REPORT = 64
# A member's own report bounds its cap from below at this share of it.
REPORTED_FLOOR = 0.5
# The share of a reported cache the index fills with prompts. The index counts a prompt to its
# last whole block (5,056 of a 5,767-token prompt's bytes/4: blocks double along a prompt), the
# bytes-per-token guess runs short of real tokenizers' (the simulator's: 6,050 tokens), and the
# KV also holds running requests' answers. Taken whole, three 6,050-token groups looked like
# they fit a 16,384-token engine (virtual time, four such engines, three gateways, seeds 5-12:
# p99 up to 1.22 s, 2 of 8 within 1.5x of the oracle; 0.85: up to 0.52 s, 3 of 8; the default
# fleet's multi-turn with one gateway 7 of 8, 8 of 8; 0.9 and 0.8 alike).
REPORTED_USABLE = 0.85
# A member that reports its cache forgets a prompt that missed there while it is this full.
FULL_ON_MISS = 0.9


@dataclass(slots=True)
class Outcomes:
    """Per member: how its predictions turned out (for metrics) and the current window."""

    hits: int = 0
    misses: int = 0
    surprises: int = 0
    window_hits: int = 0
    window_misses: int = 0
    # The most the index held there when a prediction of this window missed (before it
    # forgot the prompt that missed).
    window_held: int = 0
    resized: bool = False
    # The latest verdicts with the depth they were at: (reach, hit).
    points: deque[tuple[int, bool]] = field(default_factory=lambda: deque(maxlen=POINTS))


class CacheSizer:
    """Learns each member's effective cache (its cap in the index) and prefill speed."""

    def __init__(self, index: PrefixIndex, bytes_per_token: int) -> None:
        self.index = index
        self.bytes_per_token = bytes_per_token
        # Members' own reports, in units: a cap never grows past these.
        self.reported: dict[str, int] = {}
        # Seconds a unit of prompt takes to prefill (the pool's members alike), when learned.
        self.unit_s: float | None = None
        # The gateways' median (the controller's), as unit_s: what answers are judged by.
        self.pool_s: float | None = None
        # The fastest prefill any expected miss showed (its wait included): the speed is at
        # least this, which bounds how long queued prefills stay counted before unit_s is known.
        self.bound_s: float | None = None
        # The fastest time to first token any answer had.
        self.floor_s: float | None = None
        self._first: list[float] = []
        # Members whose answers were seen to carry cached prompt tokens.
        self._reports_cached: set[str] = set()
        # The latest cap, in units, gateways shared for a member (taken once, when it changes).
        self._shared: dict[str, int] = {}
        self.outcomes: dict[str, Outcomes] = {}
        # The prefixes the last settle() made the index forget at its member.
        self.forgot: list[int] = []
        # Per member, the verdicts with their depth (units) since the last usage report: the
        # controller bounds the member's cache from every gateway's together.
        self.verdicts: dict[str, list[tuple[int, bool]]] = {}
        # Per member of unknown cache, a rough bound of it from its first misses (rough_room.py).
        self.rooms = RoughRooms(index)

    def units_of_tokens(self, tokens: int) -> int:
        return max(1, tokens * self.bytes_per_token // self.index.block_chars)

    def on_report(self, member_id: str, cache_tokens: int) -> None:
        """The member's engine says its cache holds cache_tokens."""
        units = self.units_of_tokens(int(cache_tokens * REPORTED_USABLE))
        if self.reported.get(member_id) == units:
            return
        self.reported[member_id] = units
        record = self.index.record(member_id)
        if not record.cap or record.cap > units:
            self.index.set_cap(member_id, units)

    def on_shared(self, member_id: str, cache_tokens: int) -> bool:
        """The cache gateways learned member_id has (their lower median; 0: none). Returns
        whether this gateway's cap came down to it."""
        if member_id in self._reports_cached:
            return False  # Its answers' cached tokens tell this gateway directly.
        units = self.units_of_tokens(cache_tokens) if cache_tokens > 0 else 0
        if self._shared.get(member_id, 0) == units:
            return False
        self._shared[member_id] = units
        cap = self.cap_units(member_id)
        if not units or (cap and units >= cap):
            return False
        outcomes = self.outcomes.get(member_id)
        if outcomes is None:
            outcomes = self.outcomes[member_id] = Outcomes()
        # What the gateway learned counts as learned here: windows take their usual size.
        outcomes.resized = True
        self._set_cap(member_id, units)
        return True

    def on_shared_speed(self, token_s: float) -> bool:
        """The gateways' median prefill speed, seconds a token (0: none): answers are judged
        by it; a gateway with no speed of its own starts from it. Returns whether it did."""
        if not token_s > 0:
            return False
        self.pool_s = token_s * self.index.block_chars / self.bytes_per_token
        if self.unit_s is not None:
            return False
        self.unit_s = self.pool_s
        self._first.clear()
        return True

    def learned_tokens(self) -> dict[str, int]:
        """The cache, in tokens, this gateway learned (from its answers or from other gateways)
        each member has, where that is below the member's report or, where it reports none,
        other than the starting guess. (A member's first window decided without a change left
        the guess there, and it went out as learned: two of three gateways sending it made it
        the lower median, over the third's bound of 10k tokens, and every gateway took it back
        as learned. Four equal silent engines, three gateways, seeds 5-12: mean p99 1.33 s,
        1.21 s without.)"""
        guess = self.index.member_blocks
        return {
            mid: self.cap_tokens(mid)
            for mid, seen in self.outcomes.items()
            if seen.resized
            and self.cap_units(mid) < self.reported.get(mid, UNBOUNDED)
            and (mid in self.reported or self.cap_units(mid) != guess)
        }

    def drain_verdicts(self) -> dict[str, list[tuple[int, bool]]]:
        """The verdicts since the last call, per member: (depth in units, hit)."""
        out, self.verdicts = self.verdicts, {}
        return out

    def drain_verdict_tokens(self) -> dict[str, list[tuple[int, bool]]]:
        """drain_verdicts() with depths in tokens, as usage reports carry them."""
        tokens = self.index.block_chars / self.bytes_per_token
        # A uint32 on the wire (the controller believes no depth past any engine's anyway).
        most = (1 << 32) - 1
        return {
            mid: [(min(max(1, int(reach * tokens)), most), hit) for reach, hit in points]
            for mid, points in self.drain_verdicts().items()
        }

    def report(self, member_ids: Iterable[str]) -> dict[str, tuple[int, float]]:
        """Per member, what this gateway learned there: the cache (tokens; 0 for a member that
        reports its own or none learned) and the prefill speed (seconds a token; 0: none). Sent
        to the controller with usage, which hands every gateway the lower median cache and the
        median speed."""
        caches = self.learned_tokens()
        speed = self.token_s()
        found = {mid: (caches.get(mid, 0), speed) for mid in member_ids}
        return {mid: v for mid, v in found.items() if v[0] or v[1]}

    def forget(self, keep: set[str]) -> None:
        for table in (self.reported, self.outcomes, self._shared, self.verdicts):
            for m in [m for m in table if m not in keep]:
                del table[m]
        self.rooms.forget(keep)
        self._reports_cached &= keep

    def timed(self, member_id: str) -> bool:
        """Whether only time to first token tells of the member's answers (none of them said
        what came from its cache)."""
        return member_id not in self._reports_cached

    def reports_cached(self, member_id: str) -> None:
        """The member's answer said what of its prompt came from cache: later ones are judged
        by that."""
        self._reports_cached.add(member_id)

    @property
    def judged_s(self) -> float | None:
        """Seconds a unit prefills, as answers are judged: the gateways' median, else own."""
        return self.pool_s or self.unit_s

    def token_s(self) -> float:
        """Seconds a prompt token takes to prefill, as learned (0.0: not yet)."""
        return (self.unit_s or 0.0) * self.bytes_per_token / self.index.block_chars

    def cap_units(self, member_id: str) -> int:
        return self.index.cap(member_id) or 0

    def cap_tokens(self, member_id: str) -> int:
        return self.cap_units(member_id) * self.index.block_chars // self.bytes_per_token

    def settle(self, ticket: Ticket, ttft_s: float | None, cached_tokens: int) -> bool | None:
        """A request ended well: ttft_s for a stream (None for a whole answer, whose time
        includes its decode), cached_tokens from its usage (0 when none was said). Returns
        whether it found its prefix cached (None: cannot tell)."""
        member = ticket.member
        if cached_tokens > 0:
            self._reports_cached.add(member)
        if ttft_s is not None and ttft_s > 0 and (self.floor_s is None or ttft_s < self.floor_s):
            self.floor_s = ttft_s
        outcomes = self.outcomes.get(member)
        if outcomes is None:
            outcomes = self.outcomes[member] = Outcomes()
        self.forgot = []
        hit = self._hit(ticket, ttft_s, cached_tokens)
        if hit is not True and ticket.held < MIN_HELD and ttft_s is not None:
            self._stalled(ticket, ttft_s)
        if hit is None or ticket.presumed:
            # A presumed home's hit came from another gateway's traffic: not about its size.
            return hit
        # What an engine says of its cache outweighs a window's share of slow answers (on a busy
        # or noisy host a hit can look slow, and caps learned from that collapse).
        timed_report = member in self.reported and member not in self._reports_cached
        if ticket.held < MIN_HELD:
            if hit:
                outcomes.surprises += 1
            return hit
        held = self.index.held(member)  # before a miss forgets anything there
        if hit:
            outcomes.hits += 1
            outcomes.window_hits += 1
        else:
            outcomes.misses += 1
            outcomes.window_misses += 1
            outcomes.window_held = max(outcomes.window_held, held)
            if self.forgets_on_miss(member):
                self._missed(ticket)
        if ticket.reach:
            outcomes.points.append((ticket.reach, hit))
            out = self.verdicts.setdefault(member, [])
            if len(out) < VERDICTS_TO_REPORT and not ticket.seen:
                # Another gateway's request: its sender reports it.
                out.append((ticket.reach, hit))
            if not hit:
                bound = cap_bound(outcomes.points)
                cap = self.cap_units(member)
                if bound is not None and (not cap or bound < cap):
                    # Past some depth the member misses and above it hits: its LRU holds
                    # about that much, whatever the window says (a few thrashing prompts
                    # among many that fit miss too rarely to shrink it).
                    outcomes.resized = True
                    self._set_cap(member, bound)
        self.rooms.verdict(member, outcomes.points, ticket.reach, hit, held, ticket.sent_at)
        decided = outcomes.window_hits + outcomes.window_misses
        # The first verdict on a guess nobody confirmed comes sooner: a member far smaller than
        # the guess thrashes until it does.
        if decided >= (FIRST_WINDOW if not outcomes.resized else WINDOW):
            outcomes.resized = True
            self._resize(
                member, outcomes.window_misses / decided, outcomes.window_held, timed_report
            )
            outcomes.window_hits = outcomes.window_misses = outcomes.window_held = 0
        return hit

    def _missed(self, ticket: Ticket) -> None:
        """The member had lost a prompt the index said it held, and prefilled it again: it holds
        it now, and what that took in pushed out its least recent prompts. Those the miss shows
        gone (sitting at least as deep as the missed one was: the cache is smaller than that)
        are forgotten, the deepest first, up to the prompt's size: their next requests are
        placed afresh rather than sent back to miss and evict it in turn (seen: two 6k-token
        prompt groups on an 8k-token engine; forgetting the one that missed instead kept
        sending the other there to miss, its requests queued behind its prefill, 0.34 s
        against 0.14 s for a first request elsewhere). Where the miss shows nothing gone
        (depth not known, nothing that deep), the prompt that missed is forgotten there,
        whatever the cap: its next request goes where it is held, or is placed afresh. So is
        one that nothing this gateway sent since its last request pushed out (another gateway's
        traffic did, or it was never cached): it would miss there again."""
        member = ticket.member
        record = self.index.record(member)
        key = ticket.hashes[0] if ticket.hashes else -1
        # It prefilled the part again: its cache took that in.
        record.took_again(key, ticket.held)
        gone = (
            record.deeper(ticket.reach, ticket.held + ticket.new, key)
            if ticket.reach > ticket.held
            else []
        )
        if gone:
            for prefix in gone:
                self.index.unhold(member, (prefix,))
            self.forgot = gone
        else:
            self.index.unhold(member, ticket.hashes)
            self.forgot = [key] if ticket.hashes else []

    def _stalled(self, ticket: Ticket, ttft_s: float) -> None:
        """A prompt new to the member, sent with its prefill to itself there, that took
        STALL_MARGIN times that prefill and this gateway's queue ahead: it waited for KV room
        (an engine admits a prompt once its blocks fit beside its running requests'), so the
        member cannot keep it beside what it holds. Forgotten there, like a miss, when the
        member holds other prompts: the next request of it is placed afresh, elsewhere (seen:
        two 6k-token prompt groups on an 8k-token engine; the first request of the second waited
        3x its prefill, its later ones missed as the two groups evicted each other)."""
        member, new, unit_s = ticket.member, ticket.new, self.judged_s
        if not ticket.clear or unit_s is None or new < MIN_NEW_FOR_SPEED:
            return
        if ttft_s - (self.floor_s or 0.0) <= STALL_MARGIN * unit_s * (new + ticket.queued):
            return
        if self.index.held(member) < STALL_OTHERS * new or not self.forgets_on_miss(member):
            return
        self.forgot = [ticket.hashes[0]] if ticket.hashes else []
        self.index.unhold(member, ticket.hashes)

    def forgets_on_miss(self, member: str) -> bool:
        """Whether a prompt that missed at member is forgotten there: always where the member
        reports nothing or its answers say what was cached; where it reports its cache and only
        time tells, while the index holds it full (FULL_ON_MISS of its cap): a miss on a full
        cache is one prompt too many for it (seen: an engine of 16k tokens whose four sessions
        outgrew it kept them all, re-prefilling their tails every turn, as staying always costs
        less than moving whole), on one with room more likely a slow answer on a busy host,
        which must not scatter its prefixes."""
        if member not in self.reported or member in self._reports_cached:
            return True
        cap = self.cap_units(member)
        return bool(cap) and self.index.held(member) >= FULL_ON_MISS * cap

    def _resize(self, member: str, missed: float, held_at_miss: int, grow_only: bool) -> None:
        cap = self.cap_units(member)
        held = max(self.index.held(member), held_at_miss)
        if missed > MISSES_TO_SHRINK and not grow_only:
            kept = max(LEAST_KEPT, 1.0 - missed / 2)
            self._set_cap(member, (min(cap, held) if cap else held) * kept)
        elif missed < MISSES_TO_GROW and cap and held >= 0.9 * cap:
            self._set_cap(member, cap * GROW)

    def _hit(self, ticket: Ticket, ttft_s: float | None, cached_tokens: int) -> bool | None:
        """Whether the request found its prefix cached (None: cannot tell, or nothing to learn
        from). Learns the pool's prefill speed from expected misses on the way."""
        member = ticket.member
        held, new = ticket.held, ticket.new
        if member in self._reports_cached:
            found = cached_tokens * self.bytes_per_token / self.index.block_chars
            if held >= MIN_HELD:
                return found >= 0.5 * held
            return found >= 0.5 * new if new >= MIN_NEW_FOR_SPEED or ticket.presumed else None
        if ttft_s is None or ttft_s <= 0:
            return None
        unit_s = self.unit_s
        if held < MIN_HELD:
            if new < MIN_NEW_FOR_SPEED:
                return None
            sample = ttft_s / new
            # Presumed ones too: one cached by another gateway is only faster, and a bound too
            # fast makes queues drain early, not prefixes spill (a bound left unset until the
            # speed was learned, the prior's 8,000 tokens/s against an engine 16x that, made
            # queues of first prefills look full, and groups spilled onto a second member).
            if self.bound_s is None or sample < self.bound_s:
                self.bound_s = sample
            if unit_s is not None and sample < 0.25 * unit_s:
                # Far faster than a prefill of it all, whatever else ran: it was cached.
                return True
            # Before any speed is known, a sample another gateway's request shared the member
            # with counts: with three gateways at 10 requests/s one is in flight on a member
            # nearly always, mostly decoding, and waiting for clear ones a gateway often
            # learned nothing all run (no verdicts, no caps: its groups thrashed a small
            # engine, p99 0.51 s against 0.15). The upper quartile of the first few weathers
            # the odd one that waited behind their prefill.
            if ticket.clear or (unit_s is None and ticket.foreign):
                return self._learn_speed(sample, unit_s, ticket)
            return None
        unit_s = self.judged_s
        if unit_s is None:
            return None
        past = ttft_s - (self.floor_s or 0.0)
        if past <= unit_s * (new + 0.5 * held):
            return True  # Fast is a hit however busy the member was.
        if ticket.clear and past > unit_s * (new + 0.75 * held):
            # Slow, and nothing else could have held it up but a decode step of requests
            # already answering (a member thrashing its sessions' tails is rarely alone).
            return False
        if past > LOADED_MARGIN * unit_s * (new + held + ticket.queued):
            return False
        return None

    def drain_rate(self, prior: float) -> float:
        """Units a second a member prefills: learned, else at least what the fastest expected
        miss showed, else the prior."""
        speed = self.judged_s
        if speed:
            return 1.0 / speed
        bound = self.bound_s
        if bound and 1.0 / bound > prior:
            return 1.0 / bound
        return prior

    def _learn_speed(self, sample: float, unit_s: float | None, ticket: Ticket) -> bool | None:
        if unit_s is None:
            first = self._first
            first.append(sample)
            if len(first) >= FIRST_SAMPLES:
                first.sort()
                self.unit_s = first[len(first) * 3 // 4]
                first.clear()
            return None
        sample = min(sample, SAMPLE_CEILING * unit_s)
        self.unit_s = unit_s + SPEED_ALPHA * (sample - unit_s)
        return False if ticket.presumed else None

    def _set_cap(self, member_id: str, units: float) -> None:
        ceiling = self.reported.get(member_id)
        if ceiling is None:
            # No report: member_capacity_tokens is a guess that may be low as well as high.
            ceiling = (self.index.member_blocks or 0) * UNREPORTED_CEILING
        cap = max(MIN_UNITS, int(units))
        if ceiling:
            cap = min(cap, ceiling)
        if member_id in self.reported:
            cap = max(cap, int(ceiling * REPORTED_FLOOR))
        self.index.set_cap(member_id, cap)
