"""Content rules and an A/B split end to end: `llm-pool up --config` and the OpenAI SDK."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import openai
import pytest

pytestmark = pytest.mark.e2e

SIM = """
    replicas: 1
    template:
      engine: sim
      command: ["{python}", "-m", "llmpool.cli", "sim-engine", "--host", "{host}",
                "--port", "{port}", "--model", "{model}", "--speedup", "50"]
      ready_timeout_s: 30
      cpu_slots: 0
"""
CONFIG = f"""
pools:
  - name: chat
    description: Front door with no members of its own.
    rules:
      - {{target: chat-long, min_prompt_chars: 300}}
      - {{target: chat-long, header: X-Priority, header_regex: "^high$"}}
      - {{target: chat-long, metadata_key: tier, metadata_regex: "^gold$"}}
    splits:
      - {{target: chat-a, weight: 1}}
      - {{target: chat-b, weight: 1}}
  - name: magic-only
    rules:
      - {{target: chat-long, prompt_regex: "^magic"}}
  - name: chat-long{SIM}
  - name: chat-a{SIM}
  - name: chat-b{SIM}
"""
SHORT: Any = [{"role": "user", "content": "Hi there"}]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.e2e.conftest import _Launcher

    root = tmp_path_factory.mktemp("rules")
    (root / "pools.yaml").write_text(CONFIG)
    launcher = _Launcher(root)
    started = launcher("--config", str(root / "pools.yaml"))
    try:
        for pool in ("chat-long", "chat-a", "chat-b"):
            started.wait_ready(pool, 1)
    except AssertionError:
        launcher.stop_all()
        raise AssertionError(f"not ready:\n{started.procs[0].tail(120)}") from None
    yield started
    launcher.stop_all()


def client_for(cluster: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=cluster.base_url, api_key="unused", max_retries=0, timeout=30)


def served_by(cluster: Any, **kwargs: Any) -> tuple[str, str]:
    """(response model, member header) of one chat request to `chat`."""
    kwargs.setdefault("model", "chat")
    kwargs.setdefault("messages", SHORT)
    raw = client_for(cluster).chat.completions.with_raw_response.create(max_tokens=2, **kwargs)
    return raw.parse().model, raw.headers["x-llmpool-member"]


def test_rules_route_by_length_header_and_metadata(cluster: Any, wait: Any) -> None:
    assert {"chat", "magic-only", "chat-long"} <= cluster.model_ids()
    long_id = cluster.ready_replicas("chat-long")[0].status.replica_id
    wait(lambda: served_by(cluster)[0] in ("chat-a", "chat-b"), 10, "gateway has every member")

    long_prompt: Any = [{"role": "user", "content": "word " * 80}]
    assert served_by(cluster, messages=long_prompt) == ("chat-long", long_id)
    assert served_by(cluster, extra_headers={"X-Priority": "high"}) == ("chat-long", long_id)
    assert served_by(cluster, extra_body={"metadata": {"tier": "gold"}}) == ("chat-long", long_id)
    # Near misses fall through to the split.
    assert served_by(cluster, extra_headers={"X-Priority": "low"})[0] != "chat-long"
    assert served_by(cluster, extra_body={"metadata": {"tier": "silver"}})[0] != "chat-long"

    # Streaming follows the same rule.
    stream = client_for(cluster).chat.completions.create(
        model="chat", messages=long_prompt, max_tokens=3, stream=True
    )
    models = {chunk.model for chunk in stream}
    assert models == {"chat-long"}

    metrics = cluster.scrape("gateway")
    matched = _sample(
        metrics, "llmpool_gateway_rule_matches_total", model="chat", target="chat-long"
    )
    assert matched >= 4


def test_split_is_sticky_per_user_and_uses_both_arms(cluster: Any) -> None:
    arms = {user: {served_by(cluster, user=user)[0] for _ in range(4)} for user in "abcdefghij"}
    assert all(len(seen) == 1 for seen in arms.values()), arms
    assert set().union(*arms.values()) == {"chat-a", "chat-b"}
    # The session header keys it too when there is no user field.
    by_header = {served_by(cluster, extra_headers={"x-session-id": "s-42"})[0] for _ in range(4)}
    assert len(by_header) == 1

    metrics = cluster.scrape("gateway")
    a = _sample(metrics, "llmpool_gateway_split_requests_total", model="chat", arm="chat-a")
    b = _sample(metrics, "llmpool_gateway_split_requests_total", model="chat", arm="chat-b")
    assert a > 0 and b > 0 and a + b >= 44
    # Per-arm request metrics: the served pool labels them.
    assert _sample(
        metrics, "llmpool_gateway_requests_total", model="chat-a", backend=_any, status="200"
    )


def test_a_rules_only_pool_answers_503_when_nothing_matches(cluster: Any) -> None:
    client = client_for(cluster)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="magic-only", messages=SHORT, max_tokens=2)
    assert info.value.status_code == 503
    assert "No rule or split of model 'magic-only'" in info.value.message
    magic: Any = [{"role": "user", "content": "magic words"}]
    chat = client.chat.completions.create(model="magic-only", messages=magic, max_tokens=2)
    assert chat.model == "chat-long"


_any = object()


def _sample(text: str, name: str, **labels: object) -> float:
    """Sum of the samples of name whose labels match (_any matches every value)."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^(\w+)\{(.*)\} (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        if all(v is _any or got.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total
