"""UsageAggregator.quiet_since: when the gateways' reports say nothing is in flight on a member."""

from __future__ import annotations

from controller.metrics import ControllerMetrics
from controller.usage import UsageAggregator
from llmpool.clock import FakeClock
from llmpool.v1 import gateway_pb2


def report(gateway: str, **in_flight: int) -> gateway_pb2.UsageReport:
    members = [
        gateway_pb2.MemberUsage(member_id=m, model="m", in_flight=n) for m, n in in_flight.items()
    ]
    return gateway_pb2.UsageReport(gateway_id=gateway, members=members)


def test_quiet_needs_a_report_after_since_from_every_live_gateway() -> None:
    clock = FakeClock()
    usage = UsageAggregator(clock, ControllerMetrics(), ttl_s=5.0)
    usage.record(report("g1", r1=1))
    usage.record(report("g2"))
    since = clock.monotonic() + 0.5
    assert not usage.quiet_since("r1", since)  # no report after since yet

    clock.advance(1.0)
    usage.record(report("g1", r1=1))
    usage.record(report("g2"))
    assert not usage.quiet_since("r1", since)  # g1 still has one in flight

    clock.advance(1.0)
    usage.record(report("g1"))  # an idle member drops out of a gateway's reports
    assert usage.quiet_since("r1", since)

    usage.record(report("g2", r2=3))
    assert usage.quiet_since("r1", since)
    assert not usage.quiet_since("r2", since)


def test_a_silent_gateway_stops_counting_after_ttl() -> None:
    clock = FakeClock()
    usage = UsageAggregator(clock, ControllerMetrics(), ttl_s=5.0)
    usage.record(report("gone", r1=1))
    since = clock.monotonic() + 1.0
    clock.advance(2.0)
    usage.record(report("g1"))
    assert not usage.quiet_since("r1", since)
    clock.advance(4.0)
    usage.record(report("g1"))
    assert usage.quiet_since("r1", since)


def test_no_gateway_means_nothing_in_flight() -> None:
    usage = UsageAggregator(FakeClock(), ControllerMetrics(), ttl_s=5.0)
    assert usage.quiet_since("r1", 0.0)


def test_quiet_needs_every_gateway_routing_with_the_draining_snapshot() -> None:
    clock = FakeClock()
    usage = UsageAggregator(clock, ControllerMetrics(), ttl_s=5.0)
    old = report("g1")
    old.routing_version = 41
    usage.record(old)
    # Nothing in flight, but g1 still routes with a table in which r1 takes requests.
    assert not usage.quiet_since("r1", 0.0, min_version=42)
    new = report("g1")
    new.routing_version = 42
    usage.record(new)
    assert usage.quiet_since("r1", 0.0, min_version=42)
