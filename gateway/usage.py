"""Per-member in-flight counts and usage deltas, drained into UsageReports for the controller."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from llmpool.v1 import gateway_pb2


@dataclass(slots=True)
class _Delta:
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms_sum: float = 0.0
    ttft_ms_sum: float = 0.0
    ttft_count: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    # True once a zero in-flight has been reported, so idle members drop out of reports.
    idle_reported: bool = False


class UsageTracker:
    """Counts what this gateway sends to each member; the policies read `in_flight` live."""

    def __init__(self) -> None:
        # This gateway's own requests in flight per member (reported).
        self._in_flight: dict[str, int] = {}
        # Those and the other gateways' that they told this one of (pool_sends.py): what the
        # policies read.
        self._pool: dict[str, int] = {}
        # That as of the last report: the part of the controller's aggregate that the
        # policies count already (they subtract it, then add the live count).
        self._reported: dict[str, int] = {}
        self._deltas: dict[tuple[str, str], _Delta] = {}

    @property
    def in_flight(self) -> Mapping[str, int]:
        """Requests in flight per member id (a live view): this gateway's, and the others'
        that they told it of."""
        return self._pool

    @property
    def reported_in_flight(self) -> Mapping[str, int]:
        """In flight per member id when the last report was made."""
        return self._reported

    def seen_started(self, member_id: str) -> None:
        """Another gateway told of its request to member_id (pool_sends.py)."""
        self._pool[member_id] = self._pool.get(member_id, 0) + 1

    def seen_finished(self, member_id: str) -> None:
        """That request ended."""
        _drop_one(self._pool, member_id)

    def started(self, member_id: str, model: str) -> None:
        self._in_flight[member_id] = self._in_flight.get(member_id, 0) + 1
        self._pool[member_id] = self._pool.get(member_id, 0) + 1
        key = (member_id, model)
        if key not in self._deltas:
            self._deltas[key] = _Delta()

    def finished(
        self,
        member_id: str,
        model: str,
        *,
        ok: bool,
        latency_s: float,
        ttft_s: float | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cached_tokens: int = 0,
        cost_usd: float = 0.0,
    ) -> None:
        _drop_one(self._in_flight, member_id)
        _drop_one(self._pool, member_id)
        delta = self._deltas.setdefault((member_id, model), _Delta())
        delta.requests += 1
        delta.idle_reported = False
        if not ok:
            delta.errors += 1
        delta.prompt_tokens += prompt_tokens
        delta.completion_tokens += completion_tokens
        delta.cached_tokens += cached_tokens
        delta.cost_usd += cost_usd
        delta.latency_ms_sum += latency_s * 1000.0
        if ttft_s is not None:
            delta.ttft_ms_sum += ttft_s * 1000.0
            delta.ttft_count += 1

    def drain_report(self, gateway_id: str) -> gateway_pb2.UsageReport:
        """Everything since the last report; resets the deltas."""
        report = gateway_pb2.UsageReport(gateway_id=gateway_id)
        self._reported = dict(self._pool)
        for key in list(self._deltas):
            member_id, model = key
            delta = self._deltas[key]
            in_flight = self._in_flight.get(member_id, 0)
            if in_flight == 0 and delta.requests == 0:
                if delta.idle_reported:
                    del self._deltas[key]
                    continue
                delta.idle_reported = True
            report.members.append(
                gateway_pb2.MemberUsage(
                    member_id=member_id,
                    model=model,
                    in_flight=in_flight,
                    requests=delta.requests,
                    errors=delta.errors,
                    prompt_tokens=delta.prompt_tokens,
                    completion_tokens=delta.completion_tokens,
                    mean_latency_ms=_mean(delta.latency_ms_sum, delta.requests),
                    mean_ttft_ms=_mean(delta.ttft_ms_sum, delta.ttft_count),
                    cached_tokens=delta.cached_tokens,
                    cost_usd=delta.cost_usd,
                )
            )
            idle = delta.idle_reported
            self._deltas[key] = _Delta(idle_reported=idle)
        return report


def _mean(total: float, count: int) -> float:
    return total / count if count else 0.0


def _drop_one(counts: dict[str, int], key: str) -> None:
    count = counts.get(key, 0) - 1
    if count > 0:
        counts[key] = count
    else:
        counts.pop(key, None)
