"""prefix_aware's fast path, called directly: the one holder cheaper than any other member could
be wins, a tie wins nothing, and queues lose the requests that ended."""

from __future__ import annotations

from gateway.members import idle_member
from gateway.policies.backlog import Backlog
from gateway.policies.columns import Columns
from gateway.policies.holders import cheapest_holder, drop_ended
from gateway.policies.prefix_index import PrefixIndex

WEIGHTS = (4.0, 0.5, 1.0, 2.0)  # request_blocks, active_weight, evict, hot evict


def held_on(members: tuple[str, ...]) -> tuple[PrefixIndex, str]:
    index = PrefixIndex(block_chars=8, max_blocks=1000, max_prompt_blocks=100, max_holders=4)
    prompt = "p" * 160  # 20 blocks
    for mid in members:
        index.insert(mid, index.match(prompt))
    return index, prompt


def test_the_one_cheaper_holder_wins_and_a_tie_wins_nothing() -> None:
    index, prompt = held_on(("a", "b"))
    # "b" runs one more request of the other gateways: 4 units dearer.
    candidates = (idle_member("a"), idle_member("b", in_flight=1), idle_member("c"))
    cols = Columns(candidates, {}, index, *WEIGHTS[:1], *WEIGHTS[2:], {})
    match = index.match(prompt)
    # Below what "c", holding nothing, could cost (its whole prompt, 20 units, to prefill).
    assert cheapest_holder(cols, match, {}, {}, 0.0, 100.0, 20.0, WEIGHTS) == 0
    # Ours in flight on "a" make the two equal: neither wins here.
    assert cheapest_holder(cols, match, {"a": 1}, {}, 0.0, 100.0, 20.0, WEIGHTS) == -1
    # Nor does one that costs more than the bound.
    assert cheapest_holder(cols, match, {}, {}, 0.0, 100.0, -30.0, WEIGHTS) == -1


def test_queues_lose_the_requests_that_ended() -> None:
    index = PrefixIndex(block_chars=8, max_blocks=1000, max_prompt_blocks=100, max_holders=4)
    busy = {mid: Backlog(index.record(mid)) for mid in ("a", "b", "gone")}
    for backlog in busy.values():
        backlog.add(1, 10.0, 0.0, None)
        backlog.add(2, 10.0, 0.0, None)
    # "a" still runs both, "b" one, "gone" is no candidate now.
    drop_ended(busy, {"a": 0, "b": 1}, {"a": 2, "b": 1}, 0.05, 100.0)
    assert len(busy["a"].entries) == 2
    assert len(busy["b"].entries) == 1
    assert len(busy["gone"].entries) == 2  # Left as it was: not among the candidates.
    drop_ended(busy, {"a": 0, "b": 1}, {"a": 2}, 0.1, 100.0)
    assert "b" not in busy
    assert set(busy) == {"a", "gone"}
