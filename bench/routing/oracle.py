"""The benchmark's oracle: a gateway policy plugin that sends each group or session to one engine.

Load it with `llm-pool gateway --policy-plugin bench.routing.oracle:AffinityOracle` (or
LLMPOOL_GATEWAY_POLICY_PLUGINS) and set a pool's policy to `bench_oracle`. The load generator
names each request's group or session in the `x-bench-affinity` header ("g3", "s12", "u40").
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence

from gateway.members import Member
from gateway.policies import ParamReader, PickContext, Policy

AFFINITY_HEADER = "x-bench-affinity"
ORACLE_POLICY = "bench_oracle"

_INDEX = re.compile(r"(\d+)$")


def affinity_index(key: str) -> int:
    """Group i, session i or unique request i -> i; other keys -> a stable hash."""
    match = _INDEX.search(key)
    if match:
        return int(match.group(1))
    return zlib.crc32(key.encode())


def assign(key: str, ids: Sequence[str]) -> int:
    """Index into `ids` of the engine for this key: key i -> the (i mod n)-th id in sorted
    order, so groups spread evenly and every gateway and run agrees."""
    if not ids:
        raise ValueError("no engines to assign to")
    ranked = sorted(ids)
    return list(ids).index(ranked[affinity_index(key) % len(ranked)])


def weighted_sequence(weights: dict[str, int]) -> list[str]:
    """One cycle of smooth weighted round robin over ids (sorted), each id as often as its
    weight over the weights' greatest common divisor."""
    unit = math.gcd(*weights.values())
    share = {k: w // unit for k, w in sorted(weights.items())}
    current = dict.fromkeys(share, 0)
    total = sum(share.values())
    out: list[str] = []
    for _ in range(total):
        for k in current:
            current[k] += share[k]
        top = max(current, key=lambda k: (current[k], k))
        current[top] -= total
        out.append(top)
    return out


def parse_weights(text: str) -> dict[str, int]:
    """'engine-0=512,engine-1=1024' -> {'engine-0': 512, 'engine-1': 1024}."""
    weights: dict[str, int] = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        if not name or not value.isdigit() or int(value) <= 0:
            raise ValueError(f"weights: {part!r} is not id=positive integer")
        weights[name] = int(value)
    return weights


class AffinityOracle(Policy, name=ORACLE_POLICY):
    """Knows each request's group or session (a header the load generator sets) and always
    sends it to the same engine; requests without the header go round robin. With `weights`
    (member id=KV cache size, ...), group i goes to the i-th id of a smooth weighted round
    robin, so an engine with twice the cache gets twice the groups."""

    def configure(self, params: ParamReader) -> None:
        self._next = 0
        text = params.text("weights", "")
        self._sequence = weighted_sequence(parse_weights(text)) if text else []

    def pick(self, candidates: Sequence[Member], ctx: PickContext) -> Member:
        key = ctx.headers.get(AFFINITY_HEADER)
        if key and self._sequence:
            want = self._sequence[affinity_index(key) % len(self._sequence)]
            for member in candidates:
                if member.id == want:
                    return member
        if key:
            return candidates[assign(key, [m.id for m in candidates])]
        member = candidates[self._next % len(candidates)]
        self._next += 1
        return member
