"""Size and range bounds of everything the admin API stores, declared once by field name.

Every string, list, map and number of a pool, template, rule, split arm or backend is checked
here before it is stored: strings and collections have a length, numbers are finite and within
a range. Without this a 3 MB description made ListPools fail and NaN passed as a price.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from llmpool.errors import InvalidArgumentError


@dataclass(frozen=True)
class Bound:
    max_chars: int = 256
    max_items: int = 64
    max_number: float = 1e9
    min_number: float = 0.0


DEFAULT = Bound()
FIELD_BOUNDS: dict[str, Bound] = {
    "description": Bound(max_chars=4096),
    "url": Bound(max_chars=2048),
    "weights": Bound(max_chars=1024),
    "command": Bound(max_chars=4096, max_items=256),
    "args": Bound(max_chars=4096, max_items=256),
    "env": Bound(max_chars=4096, max_items=128),
    "policy_params": Bound(max_chars=1024, max_items=32),
    "labels": Bound(max_chars=256, max_items=32),
    "rules": Bound(max_items=64),
    "splits": Bound(max_items=16),
    "prompt_regex": Bound(max_chars=1000),
    "header_regex": Bound(max_chars=1000),
    "metadata_regex": Bound(max_chars=1000),
    "replicas": Bound(max_number=1000),
    "gpus": Bound(max_number=64),
    "cpu_slots": Bound(max_number=4096),
    "ready_timeout_s": Bound(max_number=86400),
    "ttfb_timeout_s": Bound(max_number=3600),
    "eject_after_failures": Bound(max_number=1000),
    "eject_base_s": Bound(max_number=300),
    "min_replicas": Bound(max_number=1000),
    "max_replicas": Bound(max_number=1000),
    "metric": Bound(max_chars=16),
    "target": Bound(max_number=3_600_000),
    "up_window_s": Bound(max_number=86400),
    "down_window_s": Bound(max_number=86400),
    "up_cooldown_s": Bound(max_number=86400),
    "down_cooldown_s": Bound(max_number=86400),
    "cold_start_timeout_s": Bound(max_number=3600),
    "ttft_slo_ms": Bound(max_number=3_600_000),
    "fallbacks": Bound(max_items=8),
    "spill_waiting": Bound(max_number=100_000),
    "weight": Bound(max_number=1_000_000),
    "input_cost_per_mtok": Bound(max_number=1_000_000),
    "output_cost_per_mtok": Bound(max_number=1_000_000),
    "cached_input_cost_per_mtok": Bound(max_number=1_000_000),
    "hourly_cost_usd": Bound(max_number=100_000),
    "min_prompt_chars": Bound(max_number=100_000_000),
    "max_prompt_chars": Bound(max_number=100_000_000),
    "tenant": Bound(max_chars=128),
    "rpm": Bound(max_number=100_000_000),
    "tpm": Bound(max_number=10_000_000_000),
    "redaction": Bound(max_chars=4096, max_items=8),
    "max_in_flight_per_member": Bound(max_number=100_000),
    "budget_usd": Bound(max_number=1_000_000_000),
    # Higher is served first; below 0 ranks under the default.
    "priority": Bound(min_number=-1000, max_number=1000),
    "metadata": Bound(max_chars=512, max_items=32),
    "pools": Bound(max_items=256),
    # Unix seconds.
    "created_at": Bound(max_number=1e11),
    "expires_at": Bound(max_number=1e11),
}


def check_bounds(obj: Any, where: str) -> None:
    """InvalidArgumentError naming the first field of dataclass `obj` out of its bounds."""
    for f in dataclasses.fields(obj):
        _check(getattr(obj, f.name), f"{where}.{f.name}", FIELD_BOUNDS.get(f.name, DEFAULT))


def _check(value: Any, path: str, bound: Bound) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        if len(value) > bound.max_chars:
            raise InvalidArgumentError(f"{path} is longer than {bound.max_chars} characters")
        return
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise InvalidArgumentError(f"{path} must be a finite number, not {value}")
        if not bound.min_number <= value <= bound.max_number:
            raise InvalidArgumentError(
                f"{path} must be from {bound.min_number:g} to {bound.max_number:g}"
            )
        return
    if isinstance(value, dict):
        if len(value) > bound.max_items:
            raise InvalidArgumentError(f"{path} has more than {bound.max_items} entries")
        for key, item in value.items():
            _check(key, f"{path} key", bound)
            _check(item, f"{path}[{str(key)[:40]!r}]", bound)
        return
    if isinstance(value, tuple | list):
        if len(value) > bound.max_items:
            raise InvalidArgumentError(f"{path} has more than {bound.max_items} items")
        for i, item in enumerate(value):
            _check(item, f"{path}[{i}]", bound)
        return
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        check_bounds(value, path)
