"""Routing from a real (fake) controller: snapshots, deltas, usage reports, outages, reconnects."""

from __future__ import annotations

from typing import Any

import httpx

from gateway.app import parts_of
from gateway.policies import PrefixAware

CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}


async def models(http: httpx.AsyncClient, gw: Any) -> list[str]:
    resp = await http.get(gw.url + "/v1/models")
    return sorted(m["id"] for m in resp.json()["data"])


async def test_ready_after_first_snapshot_then_deltas(
    kit: Any, engines: Any, gateway_factory: Any, http: httpx.AsyncClient
) -> None:
    e1 = await engines("e1")
    ctl = kit.FakeController(kit.free_port())
    gw = await gateway_factory(f"127.0.0.1:{ctl.port}")
    # No controller yet: alive but not ready.
    assert (await http.get(gw.url + "/healthz")).status_code == 200
    resp = await http.get(gw.url + "/readyz")
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "not_ready"

    ctl.full = kit.snapshot(
        3, [kit.route("m1", [kit.member("a", e1.url)]), kit.route("m2", [kit.member("a", e1.url)])]
    )
    await ctl.start()
    try:
        await kit.wait_until(lambda: parts_of(gw.app).table.received, what="snapshot")
        ready = await http.get(gw.url + "/readyz")
        assert ready.status_code == 200 and ready.json()["version"] == 3
        assert await models(http, gw) == ["m1", "m2"]

        ctl.push(
            kit.snapshot(
                4, [kit.route("m3", [kit.member("a", e1.url)])], full=False, removed=["m2"]
            )
        )
        await kit.wait_until(lambda: parts_of(gw.app).table.version == 4, what="delta")
        assert await models(http, gw) == ["m1", "m3"]
        page = (await http.get(gw.url + "/metrics")).text
        assert kit.metric(page, "llmpool_gateway_snapshot_version") == 4
        assert kit.metric(page, "llmpool_gateway_controller_connected") == 1
    finally:
        await ctl.stop()


async def test_usage_reports_reach_controller(
    kit: Any, engines: Any, controller: Any, gateway_factory: Any, http: httpx.AsyncClient
) -> None:
    e1 = await engines("e1")
    controller.full = kit.snapshot(1, [kit.route("m1", [kit.member("a", e1.url)])])
    gw = await gateway_factory(f"127.0.0.1:{controller.port}")
    await kit.wait_until(lambda: parts_of(gw.app).table.received, what="snapshot")
    for _ in range(2):
        assert (await http.post(gw.url + "/v1/chat/completions", json=CHAT)).status_code == 200

    def reported() -> Any:
        usages = [m for r in controller.reports for m in r.members if m.member_id == "a"]
        return usages if sum(u.requests for u in usages) >= 2 else None

    usages = await kit.wait_until(reported, what="usage report with 2 requests")
    assert all(r.gateway_id == "gw-test" for r in controller.reports)
    assert sum(u.prompt_tokens for u in usages) == 14
    assert sum(u.completion_tokens for u in usages) == 6
    assert any(u.mean_latency_ms > 0 for u in usages)
    assert {u.model for u in usages} == {"m1"}
    # Each report says which routing snapshot the gateway counted with (drains rely on it).
    assert controller.reports[-1].routing_version == 1


async def test_learned_caches_go_up_with_usage_and_come_down_with_routing(
    kit: Any, engines: Any, controller: Any, gateway_factory: Any, http: httpx.AsyncClient
) -> None:
    """A cache another gateway learned (the controller's smallest, on the member) bounds this
    gateway's index and shows in its metrics; its usage reports say what it learned."""
    e1 = await engines("e1")
    learned = kit.member("a", e1.url)
    learned.learned_cache_tokens = 8192
    learned.learned_prefill_s_per_token = 5e-5
    controller.full = kit.snapshot(
        1, [kit.route("m1", [learned, kit.member("b", e1.url)], policy="prefix_aware")]
    )
    gw = await gateway_factory(f"127.0.0.1:{controller.port}")
    await kit.wait_until(lambda: parts_of(gw.app).table.received, what="snapshot")
    page = (await http.get(gw.url + "/metrics")).text
    cache = "llmpool_gateway_member_cache_tokens"
    assert kit.metric(page, cache, model="m1", backend="a") == 8192
    assert kit.metric(page, cache, model="m1", backend="b") == 262144  # the starting guess
    assert kit.metric(page, "llmpool_gateway_prefill_seconds_per_token", model="m1") == 5e-5
    route = parts_of(gw.app).table.get("m1")
    assert route is not None and isinstance(route.policy, PrefixAware)
    # Verdicts on predictions there (as settle() leaves them): (depth in units, hit).
    route.policy.sizer.verdicts.update({"a": [(5, True)], "b": [(5, True)]})
    for _ in range(4):
        assert (await http.post(gw.url + "/v1/chat/completions", json=CHAT)).status_code == 200

    def said() -> Any:
        usages = {m.member_id: m for r in controller.reports for m in r.members}
        return usages if usages else None

    usages = await kit.wait_until(said, what="a usage report")
    for mid, usage in usages.items():
        # What it learned (here: from the others) of a; nothing of b, still the guess; the
        # speed it took from the others, for both.
        assert usage.learned_cache_tokens == (8192 if mid == "a" else 0)
        assert usage.learned_prefill_s_per_token == 5e-5
    # The verdicts went up with the members' usage, their depths in tokens.
    said = [
        (list(m.verdict_reach_tokens), list(m.verdict_hits))
        for r in controller.reports
        for m in r.members
    ]
    assert ([160], [True]) in said


async def test_prefixes_sent_go_up_with_usage_and_the_others_come_down_with_routing(
    kit: Any, engines: Any, controller: Any, gateway_factory: Any, http: httpx.AsyncClient
) -> None:
    """What other gateways sent a member (on it in the snapshot) counts in this gateway's view
    of its cache (metrics); the prefixes this gateway sends go up with its usage reports."""
    e1 = await engines("e1")
    busy = kit.member("b", e1.url)
    busy.cache_tokens = 16384  # Others' sends count only against a cache of known size.
    busy.sent_prefixes.extend([5, 6])
    busy.sent_prefix_tokens.extend([3200, 1600])
    busy.sent_prefix_senders.extend([1, 2])
    controller.full = kit.snapshot(
        1, [kit.route("m1", [kit.member("a", e1.url), busy], policy="prefix_aware")]
    )
    gw = await gateway_factory(f"127.0.0.1:{controller.port}")
    await kit.wait_until(lambda: parts_of(gw.app).table.received, what="snapshot")
    page = (await http.get(gw.url + "/metrics")).text
    others = "llmpool_gateway_member_others_tokens"
    assert kit.metric(page, others, model="m1", backend="b") == 4800
    assert kit.metric(page, others, model="m1", backend="a") == 0
    system = {"role": "system", "content": "You answer briefly and well. " * 40}
    chat = {**CHAT, "messages": [system, *CHAT["messages"]]}
    assert (await http.post(gw.url + "/v1/chat/completions", json=chat)).status_code == 200

    def said() -> Any:
        lines = [m for r in controller.reports for m in r.members if m.sent_prefixes]
        return lines or None

    (line,) = await kit.wait_until(said, what="a usage report with a prefix sent")
    assert len(line.sent_prefixes) == len(line.sent_prefix_tokens) == 1
    # The prompt's whole blocks, in tokens: a quarter of their bytes, which are at least half
    # of the prompt's ~1,250 (blocks double in size along a prompt).
    assert 160 < line.sent_prefix_tokens[0] < 330


async def test_keeps_serving_through_outage_and_reconnects(
    kit: Any, engines: Any, gateway_factory: Any, http: httpx.AsyncClient
) -> None:
    e1 = await engines("e1")
    e2 = await engines("e2")
    ctl = kit.FakeController(kit.free_port())
    ctl.full = kit.snapshot(1, [kit.route("m1", [kit.member("a", e1.url)])])
    await ctl.start()
    gw = await gateway_factory(f"127.0.0.1:{ctl.port}")
    parts = parts_of(gw.app)
    try:
        await kit.wait_until(lambda: parts.link.connected, what="connected")
        await ctl.stop()
        await kit.wait_until(lambda: not parts.link.connected, what="disconnect noticed")
        page = (await http.get(gw.url + "/metrics")).text
        assert kit.metric(page, "llmpool_gateway_controller_connected") == 0
        # The last table still routes.
        resp = await http.post(gw.url + "/v1/chat/completions", json=CHAT)
        assert (
            resp.status_code == 200
            and resp.json()["choices"][0]["message"]["content"] == "hello from e1"
        )
        assert (await http.get(gw.url + "/readyz")).status_code == 200

        # The controller comes back (same address) with a new table.
        ctl.full = kit.snapshot(7, [kit.route("m1", [kit.member("b", e2.url)])])
        await ctl.start()
        await kit.wait_until(lambda: parts.table.version == 7, what="reconnect")
        assert parts.link.sessions == 2
        assert ctl.known_versions[-1] == 1  # It told the controller what it held.
        resp = await http.post(gw.url + "/v1/chat/completions", json=CHAT)
        assert resp.json()["choices"][0]["message"]["content"] == "hello from e2"
    finally:
        await ctl.stop()
