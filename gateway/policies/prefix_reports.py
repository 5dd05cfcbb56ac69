"""What prefix_aware tells beyond its picks: the lines of its gateway's usage reports (what it
learned, sent and found missing at each member), its asks for homes, and what the gateway's
metrics read of each member."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from gateway.members import Member
from gateway.policies.backlog import Backlog
from gateway.policies.base import PickContext
from gateway.policies.cache_estimate import CacheSizer
from gateway.policies.homes import Homes
from gateway.policies.kv_room import KvRooms
from gateway.policies.missed import MissedPrefixes
from gateway.policies.prefix_index import PrefixIndex
from gateway.policies.shared_sends import SharedSends
from llmpool.clock import Clock


class PrefixReports:
    """Mixed into PrefixAware, ahead of Policy (its wants_home() is the one a relay asks)."""

    # PrefixAware's, built when it is configured.
    clock: Clock
    index: PrefixIndex
    sizer: CacheSizer
    sends: SharedSends
    missed: MissedPrefixes
    homes: Homes
    kv_rooms: KvRooms
    gateways: int
    _backlog: dict[str, Backlog]

    def _tokens_per_unit(self) -> float:
        return self.index.block_chars / self.sizer.bytes_per_token

    def backlog_blocks(self, member_id: str) -> float:
        """Units this gateway's requests to member_id have left to prefill, as last counted."""
        backlog = self._backlog.get(member_id)
        return backlog.left if backlog is not None else 0.0

    def cache_tokens(self, member_id: str) -> int:
        """The cache this gateway believes member_id has, in tokens (0: unbounded)."""
        return self.sizer.cap_tokens(member_id)

    def room_tokens(self, member_id: str) -> int:
        """Prompt tokens member_id was seen unable to run at once beside this gateway's requests
        running there (kv_room.py; 0: none seen lately)."""
        units = self.kv_rooms.bound(member_id, self.clock.monotonic())
        return int(units * self._tokens_per_unit())

    def learned(self, member_ids: Iterable[str]) -> dict[str, tuple[int, float]]:
        """What this gateway learned of each member, for its usage report (CacheSizer.report)."""
        return self.sizer.report(member_ids)

    def wants_home(self, candidates: Sequence[Member], ctx: PickContext) -> tuple[int, int] | None:
        """With several gateways, a long prompt's prefix new to all (Homes.wants)."""
        if self.gateways < 2:
            return None
        return self.homes.wants(
            ctx.prefix_key, candidates, self.index, self.sends.by_prefix, self.sizer.bytes_per_token
        )

    def asks_ahead(self) -> bool:
        """Where long prompts' prefixes do not recur (Homes.unique)."""
        return self.homes.unique()

    def told_home(self, prefix: int, member_id: str) -> None:
        self.homes.told(prefix, member_id, self.clock.monotonic())

    def drain_sent(self) -> dict[str, dict[int, int]]:
        """The prefixes this gateway sent each member since the last call, with their prompts'
        sizes in tokens, for its usage report."""
        tokens = self._tokens_per_unit()
        return {
            mid: {prefix: max(1, int(units * tokens)) for prefix, units in sent.items()}
            for mid, sent in self.sends.drain(self.clock.monotonic()).items()
        }

    def urgent(self) -> bool:
        """Whether the others need to hear before the next usage report is due: with several
        gateways, a homed prefix found missing at a member (the controller moves a home that its
        member did not keep: each report's wait is requests sent there to miss)."""
        homes = self.homes.by_prefix
        return self.gateways > 1 and bool(homes) and self.missed.pending(homes)

    def drain_missed(self) -> dict[str, list[int]]:
        """The prefixes this gateway found members no longer held since the last call, per
        member, for its usage report."""
        return self.missed.drain()

    def drain_verdicts(self) -> dict[str, list[tuple[int, bool]]]:
        """The verdicts on this gateway's predictions since the last call, per member, for its
        usage report (CacheSizer.drain_verdict_tokens)."""
        return self.sizer.drain_verdict_tokens()
