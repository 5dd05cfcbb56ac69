"""Policy plugins (entry points and --policy-plugin) with their start-up errors, the
controller's check, and the relay's observe() hook."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

from controller.model import PoolSpec
from controller.validation import check_pool
from gateway.policies import (
    PolicyPluginError,
    PolicyRegistry,
    ResponseTime,
    UnknownPolicyError,
    load_plugin,
    validate_policy,
)
from gateway.settings import parse_settings
from llmpool.errors import InvalidArgumentError

PLUGIN = textwrap.dedent(
    '''
    from gateway.policies import Policy


    class FirstOne(Policy, name="first_one"):
        """Always the first candidate."""

        def configure(self, params):
            self.offset = params.integer("offset", 0, min=0)

        def pick(self, candidates, ctx):
            return candidates[self.offset % len(candidates)]


    class Nameless(Policy):
        def pick(self, candidates, ctx):
            return candidates[0]


    NOT_A_POLICY = object()
    '''
)


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"llmpool_test_plugin_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(PLUGIN)
    (tmp_path / "broken_policy_plugin.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def entry_point(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group="llmpool.policies")


def test_entry_point_plugin_is_built_like_a_builtin(plugin_module: str) -> None:
    registry = PolicyRegistry.load(entry_points=[entry_point("first", f"{plugin_module}:FirstOne")])
    assert "first" in registry and "round_robin" in registry
    policy = registry.build("first", {"offset": "1"})
    assert policy.params == {"offset": "1"}
    with pytest.raises(ValueError, match="unknown param"):
        registry.build("first", {"nope": "1"})


def test_flag_plugin_takes_the_class_name_or_an_explicit_one(plugin_module: str) -> None:
    assert load_plugin(f"{plugin_module}:FirstOne")[0] == "first_one"
    assert load_plugin(f"mine={plugin_module}:Nameless")[0] == "mine"
    registry = PolicyRegistry.load([f"{plugin_module}:FirstOne"], entry_points=[])
    assert "first_one" in registry


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("no_colon_here", "expected MODULE:CLASS"),
        ("broken_policy_plugin:X", "cannot import module 'broken_policy_plugin': boom at import"),
        ("{mod}:Missing", "has no 'Missing'"),
        ("{mod}:NOT_A_POLICY", "is not a subclass of Policy"),
        ("{mod}:Nameless", "has no name"),
        ("round_robin={mod}:FirstOne", "clashes with"),
    ],
)
def test_flag_plugin_errors_name_the_plugin(plugin_module: str, spec: str, needle: str) -> None:
    spec = spec.format(mod=plugin_module)
    with pytest.raises(PolicyPluginError, match=needle) as info:
        PolicyRegistry.load([spec], entry_points=[])
    assert spec in str(info.value)


def test_broken_entry_point_names_itself(plugin_module: str) -> None:
    with pytest.raises(PolicyPluginError, match=r"'bad' .*broken_policy_plugin:X.* boom"):
        PolicyRegistry.load(entry_points=[entry_point("bad", "broken_policy_plugin:X")])


def test_settings_take_plugins_from_flag_or_env_and_exit_2_on_a_bad_one(
    plugin_module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    good = f"{plugin_module}:FirstOne"
    env = {"LLMPOOL_GATEWAY_POLICY_PLUGINS": f"{good}, x={plugin_module}:Nameless"}
    assert parse_settings([], env).policy_plugins == (good, f"x={plugin_module}:Nameless")
    assert parse_settings(["--policy-plugin", good], env).policy_plugins == (good,)
    with pytest.raises(SystemExit) as exit_info:
        parse_settings(["--policy-plugin", "broken_policy_plugin:X"], {})
    assert exit_info.value.code == 2
    assert "broken_policy_plugin:X" in capsys.readouterr().err


def test_gateway_command_refuses_a_broken_plugin_at_start_up() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "llmpool.cli", "gateway", "--policy-plugin", "no_such_mod:P"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "policy plugin 'no_such_mod:P': cannot import module 'no_such_mod'" in proc.stderr


def test_validate_policy_rules_for_the_controller(plugin_module: str) -> None:
    validate_policy("prefix_aware", {"block_chars": "128"}, entry_points=[])
    with pytest.raises(ValueError, match="block_chars"):
        validate_policy("prefix_aware", {"block_chars": "x"}, entry_points=[])
    with pytest.raises(UnknownPolicyError, match="'gw_only'"):
        validate_policy("gw_only", {}, entry_points=[])
    # Named by --extra-policies: accepted, params unchecked.
    validate_policy("gw_only", {"any": "thing"}, extra_names=["gw_only"], entry_points=[])
    # Installed entry points count; only the one named is loaded, so a broken other is no matter.
    eps = [
        entry_point("bad", "broken_policy_plugin:X"),
        entry_point("first", f"{plugin_module}:FirstOne"),
    ]
    validate_policy("first", {"offset": "2"}, entry_points=eps)
    validate_policy("round_robin", {}, entry_points=eps)


def test_controller_check_pool_maps_policy_errors_to_invalid_argument() -> None:
    check_pool(PoolSpec(name="p", policy="session", policy_params={"load_factor": "2"}))
    with pytest.raises(InvalidArgumentError, match=r"load_factor='0\.5' is not valid"):
        check_pool(PoolSpec(name="p", policy="session", policy_params={"load_factor": "0.5"}))
    with pytest.raises(InvalidArgumentError, match="unknown routing policy 'mine'"):
        check_pool(PoolSpec(name="p", policy="mine"))
    check_pool(PoolSpec(name="p", policy="mine", policy_params={"x": "1"}), ["mine"])


def test_controller_imports_policies_without_the_web_stack() -> None:
    code = (
        "import sys, controller.validation; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('fastapi', 'starlette', 'uvicorn', 'httpx', 'aiohttp')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


async def test_relay_observes_each_request_end(
    kit: Any, engines: Any, controller: Any, gateway_factory: Any, http: Any
) -> None:
    import gateway.app as gateway_app

    fast = await engines("fast")
    model = kit.route("m1", [kit.member("fast", fast.url)], policy="response_time")
    controller.full = kit.snapshot(1, [model])
    gw = await gateway_factory(f"127.0.0.1:{controller.port}")
    await kit.wait_until(
        lambda: gateway_app.parts_of(gw.app.app).table.get("m1") is not None, 5, "route"
    )
    route = gateway_app.parts_of(gw.app.app).table.get("m1")
    assert route is not None and isinstance(route.policy, ResponseTime)
    policy = route.policy
    body = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
    r = await http.post(gw.url + "/v1/chat/completions", json=body)
    assert r.status_code == 200
    assert policy.stats.ttft("fast") is not None
    first = policy.stats.ttft("fast")
    fast.chunks = 5
    r = await http.post(gw.url + "/v1/chat/completions", json={**body, "stream": True})
    assert r.status_code == 200 and b"[DONE]" in r.content
    await kit.wait_until(lambda: policy.stats.ttft("fast") != first, 5, "stream observed")
    # Five chunks with usage: a time per token after the first was measured (0 means unknown).
    assert policy.stats.tpot("fast") > 0.0
