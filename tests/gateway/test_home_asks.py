"""A gateway's asks for prompt prefixes' homes are bounded: one per prefix at a time, a few at
once, none while the controller is away or for a pause after one failed."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import grpc.aio
import httpx
import pytest

from gateway.app import parts_of
from gateway.home_asks import AHEAD_S, PAUSE_S, HomeAsks
from gateway.members import idle_member
from gateway.metrics import GatewayMetrics
from gateway.policies import PickContext
from gateway.policies.homes import RECUR_WINDOW
from llmpool.clock import FakeClock
from tests.support import eventually


class Controller:
    """Answers asks when told to (release), or fails them with `error`."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int, float]] = []
        self.release = asyncio.Event()
        self.error: BaseException | None = None
        self.up = True

    async def call(self, model: str, prefix: int, tokens: int, timeout_s: float) -> str:
        self.calls.append((model, prefix, tokens, timeout_s))
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return f"m{prefix % 2}"


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="x")


def outcomes(metrics: GatewayMetrics) -> dict[str, float]:
    return {
        name: metrics.home_asks.labels(name)._value.get()
        for name in ("homed", "none", "failed", "skipped")
    }


def make(clock: FakeClock, max_pending: int = 64) -> tuple[Controller, HomeAsks, GatewayMetrics]:
    controller = Controller()
    metrics = GatewayMetrics()
    asks = HomeAsks(controller.call, lambda: controller.up, clock, metrics, max_pending=max_pending)
    return controller, asks, metrics


async def test_requests_for_one_prefix_share_one_ask_and_a_leaving_one_cancels_nothing() -> None:
    controller, asks, metrics = make(FakeClock())
    waiting = [asyncio.create_task(asks.ask("p", 7, 5000)) for _ in range(3)]
    await asyncio.sleep(0)
    waiting[0].cancel()  # That client left.
    controller.release.set()
    assert await asyncio.gather(*waiting[1:]) == ["m1", "m1"]
    assert waiting[0].cancelled()
    assert controller.calls == [("p", 7, 5000, 0.05)]
    assert outcomes(metrics)["homed"] == 1
    # Answered, the prefix may be asked again (a later gateway restart, another pool).
    assert await asks.ask("p", 7, 5000) == "m1"
    assert len(controller.calls) == 2


async def test_a_failed_ask_pauses_asks_and_a_refusal_does_not() -> None:
    clock = FakeClock()
    controller, asks, metrics = make(clock)
    controller.release.set()
    controller.error = rpc_error(grpc.StatusCode.NOT_FOUND)
    assert await asks.ask("gone", 1, 5000) == ""
    controller.error = rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED)
    assert await asks.ask("p", 2, 5000) == ""
    assert len(controller.calls) == 2
    # Paused: placed without asking, however many new prefixes come.
    controller.error = None
    assert [await asks.ask("p", n, 5000) for n in (3, 4, 5)] == ["", "", ""]
    assert len(controller.calls) == 2
    clock.advance(PAUSE_S + 0.01)
    assert await asks.ask("p", 3, 5000) == "m1"
    controller.error = ConnectionError("not connected")
    assert await asks.ask("p", 6, 5000) == ""
    assert outcomes(metrics) == {"homed": 1, "none": 1, "failed": 2, "skipped": 3}


async def test_no_ask_while_the_controller_is_away_or_too_many_are_pending() -> None:
    controller, asks, metrics = make(FakeClock(), max_pending=2)
    controller.up = False
    assert await asks.ask("p", 1, 5000) == ""
    controller.up = True
    pending = [asyncio.create_task(asks.ask("p", n, 5000)) for n in (1, 2)]
    await asyncio.sleep(0)
    assert await asks.ask("p", 3, 5000) == ""
    controller.release.set()
    assert await asyncio.gather(*pending) == ["m1", "m0"]
    assert [c[1] for c in controller.calls] == [1, 2]
    assert outcomes(metrics)["skipped"] == 2


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL])
async def test_any_error_from_the_controller_places_the_prompt_here(code: grpc.StatusCode) -> None:
    controller, asks, _ = make(FakeClock())
    controller.release.set()
    controller.error = rpc_error(code)
    assert await asks.ask("p", 1, 5000) == ""


LONG = "You are the support assistant of a large company; answer with care. " * 80


async def asking_gateway(kit: Any, engines: Any, controller: Any, gateway_factory: Any) -> Any:
    """A gateway linked to the controller, which routes m1 to engines a and b (16k-token caches)
    with prefix_aware and two gateways: it asks for new prefixes' homes."""
    a, b = await engines("a"), await engines("b")
    members = [kit.member(e.name, e.url) for e in (a, b)]
    for m in members:
        m.cache_tokens = 16_384
    controller.full = kit.snapshot(1, [kit.route("m1", members, "prefix_aware", gateways=2)])
    gw = await gateway_factory(f"127.0.0.1:{controller.port}")
    await kit.wait_until(lambda: parts_of(gw.app).link.ready(), what="linked")
    return gw


async def test_a_gateway_asks_before_a_long_new_prefix_is_sent_and_sends_it_there(
    kit: Any, engines: Any, controller: Any, gateway_factory: Any, http: httpx.AsyncClient
) -> None:
    gw = await asking_gateway(kit, engines, controller, gateway_factory)

    async def chat(system: str, question: str) -> str:
        body = {
            "model": "m1",
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": question},
            ],
            "max_tokens": 1,
        }
        resp = await http.post(gw.url + "/v1/chat/completions", json=body)
        assert resp.status_code == 200, resp.text
        return str(resp.headers["x-llmpool-member"])

    # Each new group goes where the controller homes it, whatever this gateway would choose.
    homes = ["b", "a", "b", "a", "a", "b"]
    controller.answers = list(homes)
    for i, home in enumerate(homes):
        system = f"Group {i}. " + LONG
        assert await chat(system, "one?") == home
        asked = controller.asks[i]
        assert asked.model == "m1" and asked.gateway_id == "gw-test"
        assert asked.tokens >= len(LONG) // 4
        # Its next request finds it held there: no second ask.
        assert await chat(system, "two?") == home
        assert len(controller.asks) == i + 1
    assert len({ask.prefix for ask in controller.asks}) == len(homes)
    # Short prompts are placed without asking.
    await chat("short", "three?")
    assert len(controller.asks) == len(homes)
    page = (await http.get(gw.url + "/metrics")).text
    assert kit.metric(page, "llmpool_gateway_home_asks_total", outcome="homed") == len(homes)


class Booking:
    """A policy whose every prompt is new: it asks ahead when `ahead`, and keeps the homes."""

    def __init__(self, ahead: bool) -> None:
        self.ahead = ahead
        self.next = 100
        self.homes: dict[int, str] = {}

    def wants_home(self, candidates: Any, ctx: Any) -> tuple[int, int]:
        self.next += 2  # Even prefixes: the controller answers m0.
        return self.next, 5000

    def asks_ahead(self) -> bool:
        return self.ahead

    def told_home(self, prefix: int, member_id: str) -> None:
        self.homes[prefix] = member_id


CANDIDATES = [idle_member("m0"), idle_member("m1")]


async def test_a_pool_of_unique_prompts_takes_homes_booked_ahead_without_waiting() -> None:
    clock = FakeClock()
    controller = Controller()
    metrics = GatewayMetrics()
    asks = HomeAsks(controller.call, lambda: True, clock, metrics, book_after_s=0.0)
    policy: Any = Booking(ahead=True)
    ctx = PickContext(model="p", payload={})
    # The first waits on an ask of its own, and books the next.
    first = asyncio.create_task(asks.home(policy, CANDIDATES, ctx, "p"))
    await eventually(lambda: controller.calls, what="the first ask")
    assert not first.done()
    controller.release.set()
    await asyncio.wait_for(first, timeout=5.0)
    await eventually(lambda: len(controller.calls) == 2 and not asks._booking, what="booked")
    booked = controller.calls[1][1]
    assert controller.calls[0][1] == 102 and booked not in (102, 104)
    # The next takes the booking at once: its own prefix is never asked for.
    controller.release.clear()
    await asyncio.wait_for(asks.home(policy, CANDIDATES, ctx, "p"), timeout=1.0)
    assert policy.homes == {102: "m0", 104: f"m{booked % 2}"}
    assert all(call[1] != 104 for call in controller.calls)
    assert metrics.home_asks.labels("ahead")._value.get() == 1
    # A booking past AHEAD_S, or on a member no longer a candidate, is not taken.
    controller.release.set()
    await eventually(lambda: len(controller.calls) == 3 and not asks._booking, what="booked")
    clock.advance(AHEAD_S + 1)
    await asyncio.wait_for(asks.home(policy, CANDIDATES, ctx, "p"), timeout=5.0)
    assert controller.calls[3][1] == 106 and policy.homes[106] == "m0"
    await eventually(lambda: len(controller.calls) == 5 and not asks._booking, what="booked")
    gone = [m for m in CANDIDATES if m.id != f"m{controller.calls[4][1] % 2}"]
    await asyncio.wait_for(asks.home(policy, gone, ctx, "p"), timeout=5.0)
    assert controller.calls[5][1] == 108
    # Where prefixes recur, every new one waits on its own ask; nothing is booked.
    await eventually(lambda: not asks._booking, what="no booking under way")
    calls = len(controller.calls)
    policy.ahead = False
    await asyncio.wait_for(asks.home(policy, CANDIDATES, ctx, "p"), timeout=5.0)
    assert not asks._booking  # No booking under way, nor made (no ask but its own).
    assert [c[1] for c in controller.calls[calls:]] == [110]
    assert metrics.home_asks.labels("ahead")._value.get() == 1


async def test_a_gateway_of_unique_prompts_books_homes_ahead_and_sends_there_at_once(
    kit: Any, engines: Any, controller: Any, gateway_factory: Any, http: httpx.AsyncClient
) -> None:
    gw = await asking_gateway(kit, engines, controller, gateway_factory)

    async def chat(i: int) -> str:
        message = {"role": "user", "content": f"{i} {LONG}"}
        body = {"model": "m1", "messages": [message], "max_tokens": 1}
        resp = await http.post(gw.url + "/v1/chat/completions", json=body)
        assert resp.status_code == 200, resp.text
        return str(resp.headers["x-llmpool-member"])

    async def answered(count: int) -> bool:
        page = (await http.get(gw.url + "/metrics")).text
        return bool(kit.metric(page, "llmpool_gateway_home_asks_total", outcome="homed") == count)

    # Eight new prompts in a row, each asked for (a); with the eighth the window is all new,
    # and once it is on its way the gateway books the next home (b).
    controller.answers = ["a"] * RECUR_WINDOW + ["b"]
    for i in range(RECUR_WINDOW):
        assert await chat(i) == "a"
    await eventually(lambda: len(controller.asks) == RECUR_WINDOW + 1, what="a booking")
    await eventually(lambda: answered(RECUR_WINDOW + 1), what="the booking answered")
    booked = controller.asks[RECUR_WINDOW].prefix
    assert booked not in {ask.prefix for ask in controller.asks[:RECUR_WINDOW]}
    # The next goes to the booked home without an ask of its own, and books the one after.
    controller.answers = ["a"]
    assert await chat(RECUR_WINDOW) == "b"
    page = (await http.get(gw.url + "/metrics")).text
    assert kit.metric(page, "llmpool_gateway_home_asks_total", outcome="ahead") == 1
    await eventually(lambda: len(controller.asks) == RECUR_WINDOW + 2, what="the next booking")
    assert controller.asks[-1].prefix not in {ask.prefix for ask in controller.asks[:-1]}
