"""Fallback pools in config and the admin API: targets exist, no cycles, no deleting a pool
another falls back to; snapshots carry them to gateways."""

from __future__ import annotations

import pytest
import yaml

from controller.model import PoolSpec
from controller.snapshot import build_routes
from controller.validation import check_not_routed_to, check_pool_routes
from llmpool.config import ConfigError, parse_config
from llmpool.errors import FailedPreconditionError, InvalidArgumentError


def config(*pools: dict[str, object]) -> str:
    return yaml.safe_dump({"pools": list(pools)})


def test_config_fallbacks_must_name_pools_without_a_cycle() -> None:
    ok = parse_config(config({"name": "a", "fallbacks": ["b"], "spill_waiting": 4}, {"name": "b"}))
    assert ok.pools[0].fallbacks == ["b"]
    with pytest.raises(ConfigError, match="not a pool"):
        parse_config(config({"name": "a", "fallbacks": ["nope"]}))
    with pytest.raises(ConfigError, match="cycle"):
        parse_config(config({"name": "a", "fallbacks": ["b"]}, {"name": "b", "fallbacks": ["a"]}))


def test_admin_checks_fallbacks_and_refuses_deleting_a_target() -> None:
    pools = {"b": PoolSpec(name="b")}
    a = PoolSpec(name="a", fallbacks=("b",), spill_waiting=4.0)
    assert check_pool_routes(a, pools) is a
    with pytest.raises(InvalidArgumentError, match="twice"):
        check_pool_routes(PoolSpec(name="a", fallbacks=("b", "b")), pools)
    with pytest.raises(InvalidArgumentError, match="not a pool"):
        check_pool_routes(PoolSpec(name="a", fallbacks=("zz",)), pools)
    with pytest.raises(FailedPreconditionError, match="fallback"):
        check_not_routed_to("b", {"a": a, "b": pools["b"]})
    routes = build_routes({"a": a, "b": pools["b"]}, {}, {}, {}, {})
    assert routes["a"].fallbacks == ("b",) and routes["a"].spill_waiting == 4.0
