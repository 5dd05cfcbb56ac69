"""What a pick expected of one request on one member, judged when its answer comes
(cache_estimate.CacheSizer.settle) and queued meanwhile (backlog.Backlog)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(slots=True)
class Ticket:
    """What a pick expected of one request on one member."""

    member: str
    held: int  # units the index said the member holds of this prompt
    new: int  # units it lacks (to prefill)
    queued: float  # units of this gateway's prefill queued ahead of it there
    # Sent to the prefix's place though this gateway's index knew nothing of it there.
    presumed: bool = False
    # Nothing else was in flight on the member when it was sent (its TTFT is its own).
    alone: bool = True
    # Nothing else was waiting for its first token there when it was sent: this gateway's
    # other requests had all begun answering (decoding slows its prefill a little, no more)
    # and no other gateway's was in flight.
    clear: bool = True
    # Not clear only for another gateway's request in flight there (as last reported: up to
    # a report old, and mostly decoding): good enough for a first speed sample.
    foreign: bool = False
    sent_at: float = 0.0  # monotonic seconds
    # The prompt's block hashes (Match.hashes): forgotten at the member if it missed them.
    hashes: Sequence[int] = ()
    # It got its first byte (or ended without one).
    started: bool = False
    # How deep in the member's LRU its held part sat (Held.reach; 0: not known).
    reach: int = 0
    # Its outcome was judged (at its first byte where time alone tells, else at its end).
    judged: bool = False
    # Units of this gateway's requests in flight there when it was sent (kv_room.py).
    running: float = 0.0
    # Another gateway's request, told by it (PrefixAware.seen_sent): judged here, not reported.
    seen: bool = False
