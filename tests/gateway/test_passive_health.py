"""Passive health: outlier ejection with a half-open probe, the first-byte deadline, the retry
budget; unit-level on a fake clock, then through a real gateway with misbehaving engines."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from gateway.app import parts_of
from gateway.bodies import first_byte_deadline, with_usage
from gateway.members import idle_member
from gateway.outliers import MAX_EJECTION_S, EjectionSettings, Outliers
from gateway.parsing import Endpoint, ParsedRequest
from gateway.retry_budget import RetryBudget
from llmpool.clock import FakeClock

THREE = EjectionSettings(consecutive=3, base_s=5.0)
A, B = idle_member("a"), idle_member("b")


def ids(members: tuple[Any, ...]) -> list[str]:
    return [m.id for m in members]


def test_ejected_after_failures_in_a_row_then_one_probe_brings_it_back() -> None:
    clock = FakeClock()
    o = Outliers(clock)
    assert not o.failure("a", THREE) and not o.failure("a", THREE)
    o.success("a")  # a success in between starts the count again
    assert not o.failure("a", THREE) and not o.failure("a", THREE)
    assert o.failure("a", THREE)
    assert ids(o.available((A, B))) == ["b"]
    clock.advance(4.9)
    assert ids(o.available((A, B))) == ["b"]
    clock.advance(0.2)
    # Half-open: one request probes it, nobody else is sent meanwhile.
    assert ids(o.available((A, B))) == ["a", "b"]
    assert o.picked("a")
    assert ids(o.available((A, B))) == ["b"] and not o.picked("a")
    o.success("a")
    assert ids(o.available((A, B))) == ["a", "b"] and list(o.ejected()) == []


def test_a_failed_probe_ejects_for_twice_as_long_up_to_the_cap() -> None:
    clock = FakeClock()
    o = Outliers(clock)
    for _ in range(3):
        o.failure("a", THREE)
    waits = []
    for _ in range(10):
        (ejected,) = o.ejected()
        waits.append(ejected.seconds_left)
        clock.advance(ejected.seconds_left)
        assert o.picked("a")
        assert o.failure("a", THREE)
    assert waits[:4] == [5.0, 10.0, 20.0, 40.0] and waits[-1] == MAX_EJECTION_S


def test_a_probe_the_client_abandoned_goes_back() -> None:
    clock = FakeClock()
    o = Outliers(clock)
    for _ in range(3):
        o.failure("a", THREE)
    clock.advance(5.0)
    assert o.picked("a")
    o.released("a")
    assert ids(o.available((A, B))) == ["a", "b"] and o.picked("a")


def test_error_ratio_ejects_a_member_that_fails_half_the_time() -> None:
    o = Outliers(FakeClock())
    ejected = False
    for _ in range(20):
        ejected = ejected or o.failure("a", THREE)
        o.success("a")
    assert ejected and o.is_out("a")


def test_when_every_member_is_out_all_are_tried_and_zero_disables() -> None:
    o = Outliers(FakeClock())
    for m in ("a", "b"):
        for _ in range(3):
            o.failure(m, THREE)
    assert ids(o.available((A, B))) == ["a", "b"]
    never = EjectionSettings(consecutive=0)
    assert not any(o.failure("c", never) for _ in range(50)) and not o.is_out("c")


def test_nothing_out_costs_nothing() -> None:
    members = (A, B)
    assert Outliers(FakeClock()).available(members) is members


def test_retry_budget_is_a_share_of_requests_plus_a_floor() -> None:
    clock = FakeClock()
    budget = RetryBudget(clock, ratio=0.2, floor_per_s=1.0, cap=2.0)
    assert budget.withdraw() and budget.withdraw() and not budget.withdraw()
    for _ in range(5):
        budget.deposit()  # five requests pay for one retry
    assert budget.withdraw() and not budget.withdraw()
    clock.advance(1.0)  # the floor: one per second
    assert budget.withdraw() and not budget.withdraw()


def _req(stream: bool = False, endpoint: Endpoint = Endpoint.CHAT, **payload: Any) -> Any:
    return ParsedRequest(endpoint=endpoint, model="m", stream=stream, body=b"{}", payload=payload)


def testfirst_byte_deadline() -> None:
    assert first_byte_deadline(30.0, _req(stream=True)) == 30.0
    assert first_byte_deadline(30.0, _req(endpoint=Endpoint.EMBEDDINGS)) == 30.0
    # Non-streamed: the first byte is the whole answer, so the length asked for counts.
    assert first_byte_deadline(30.0, _req(max_tokens=100)) == pytest.approx(50.0)
    assert first_byte_deadline(30.0, _req(max_completion_tokens=10, n=2)) == pytest.approx(34.0)
    assert first_byte_deadline(30.0, _req()) is None
    assert first_byte_deadline(30.0, _req(max_tokens="lots")) is None


CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
FAST = {"ttfb_timeout_s": 0.3, "eject_after_failures": 2, "eject_base_s": 0.3}


async def _gateway(kit: Any, gateway_factory: Any, controller: Any, engines: list[Any]) -> Any:
    members = [kit.member(e.name, e.url) for e in engines]
    controller.full = kit.snapshot(1, [kit.route("m1", members, **FAST)])
    gw = await gateway_factory(f"127.0.0.1:{controller.port}")
    await kit.wait_until(lambda: parts_of(gw.app).table.received, what="first snapshot")
    return gw


@pytest.mark.parametrize("stream", [False, True])
async def test_a_hung_member_costs_one_deadline_then_is_ejected_until_it_heals(
    stream: bool, kit: Any, engines: Any, controller: Any, gateway_factory: Any,
    http: httpx.AsyncClient,
) -> None:  # fmt: skip
    hung, good = await engines("hung"), await engines("good")
    hung.hang = True
    gw = await _gateway(kit, gateway_factory, controller, [hung, good])
    for _ in range(10):
        resp = await http.post(gw.url + "/v1/chat/completions", json={**CHAT, "stream": stream})
        assert resp.status_code == 200 and resp.headers["x-llmpool-member"] == "good"
    # Two tries timed out and ejected it; the probes after each ejection time out too.
    assert 2 <= len(hung.requests) <= 4
    page = (await http.get(gw.url + "/metrics")).text
    assert kit.metric(page, "llmpool_gateway_member_ejections_total", model="m1") >= 1
    assert kit.metric(page, "llmpool_gateway_ttfb_timeouts_total", model="m1") >= 2

    hung.hang = False

    async def served_by_hung() -> bool:
        resp = await http.post(gw.url + "/v1/chat/completions", json=CHAT)
        return resp.status_code == 200 and resp.headers["x-llmpool-member"] == "hung"

    await kit.wait_until(served_by_hung, what="healed member back in rotation", within=15)


async def test_a_failing_member_is_ejected_and_retries_stay_within_budget(
    kit: Any, engines: Any, controller: Any, gateway_factory: Any, http: httpx.AsyncClient
) -> None:
    bad, good = await engines("bad"), await engines("good")
    bad.status = 500
    gw = await _gateway(kit, gateway_factory, controller, [bad, good])
    for _ in range(20):
        resp = await http.post(gw.url + "/v1/chat/completions", json=CHAT)
        assert resp.status_code == 200
    assert len(bad.requests) <= 4  # 2 to eject, then a failed probe or two

    # The controller hears of it (GetPoolStatus shows it).
    def reported() -> Any:
        last = controller.reports[-1] if controller.reports else None
        return last and [(c.member_id, c.condition) for c in last.conditions]

    assert await kit.wait_until(reported, what="ejection reported") == [("bad", "ejected")]

    # An outage: every member fails, and retries may not multiply the load.
    good.status = 500
    parts_of(gw.app).relay._budget = RetryBudget(
        parts_of(gw.app).relay._clock, floor_per_s=0, cap=0
    )
    before = len(bad.requests) + len(good.requests)
    for _ in range(10):
        resp = await http.post(gw.url + "/v1/chat/completions", json=CHAT)
        assert resp.status_code == 502
    assert len(bad.requests) + len(good.requests) - before <= 12
    page = (await http.get(gw.url + "/metrics")).text
    assert kit.metric(page, "llmpool_gateway_retry_budget_exhausted_total", model="m1") >= 8


@pytest.mark.parametrize(
    ("body", "asked"),
    [
        (b'{"model":"m","stream":true}', {"include_usage": True}),
        (b'  {"model":"m","stream":true,"stream_options":null}', {"include_usage": True}),
        (b'{"model":"m","stream_options":{"include_usage":false,"x":1}}',
         {"include_usage": True, "x": 1}),
    ],
)  # fmt: skip
def test_streams_ask_the_member_for_usage(body: bytes, asked: dict[str, Any]) -> None:
    req = ParsedRequest(
        endpoint=Endpoint.CHAT, model="m", stream=True, body=body, payload=orjson.loads(body)
    )
    sent = orjson.loads(with_usage(body, req))
    assert sent["stream_options"] == asked and sent["model"] == "m"
