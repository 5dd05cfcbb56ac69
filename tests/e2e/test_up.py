"""`llm-pool up` from a user's seat: the OpenAI SDK, curl-like errors, grpcurl, a killed replica."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import cli, grpcurl_bin

pytestmark = pytest.mark.e2e

MESSAGES: Any = [{"role": "user", "content": "Tell me about pooling inference."}]


def client_for(cluster: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=cluster.base_url, api_key="unused", max_retries=0, timeout=30)


def test_openai_sdk_round_trip(up_cluster: Any) -> None:
    client = client_for(up_cluster)

    assert "sim-small" in [m.id for m in client.models.list()]

    chat = client.chat.completions.create(model="sim-small", messages=MESSAGES, max_tokens=8)
    assert chat.choices[0].message.content
    assert chat.usage is not None and chat.usage.completion_tokens == 8

    contents: list[str] = []
    finish_reasons: list[str] = []
    stream = client.chat.completions.create(
        model="sim-small", messages=MESSAGES, max_tokens=6, stream=True
    )
    for chunk in stream:  # the SDK ends the loop at `data: [DONE]`
        for choice in chunk.choices:
            if choice.delta.content:
                contents.append(choice.delta.content)
            if choice.finish_reason:
                finish_reasons.append(choice.finish_reason)
    assert len(contents) >= 2, contents
    assert finish_reasons == ["length"]

    completion = client.completions.create(model="sim-small", prompt="Once upon", max_tokens=5)
    assert completion.choices[0].text

    embeddings = client.embeddings.create(model="sim-small", input=["alpha", "beta"])
    assert len(embeddings.data) == 2
    assert len(embeddings.data[0].embedding) > 8
    assert embeddings.data[0].embedding != embeddings.data[1].embedding

    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)


def test_tool_calls_pass_through(up_cluster: Any) -> None:
    tools: Any = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    chat = client_for(up_cluster).chat.completions.create(
        model="sim-small", messages=MESSAGES, tools=tools, tool_choice="required"
    )
    calls = chat.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert chat.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize(
    ("body", "headers", "status", "param"),
    [
        (b"{not json", {"content-type": "application/json"}, 400, None),
        (json.dumps({"messages": MESSAGES}).encode(), {"content-type": "application/json"}, 400,
         "model"),
        (json.dumps({"model": "sim-small"}).encode(), {"content-type": "application/json"}, 400,
         "messages"),
        (b'{"model": "sim-small", "pad": "' + b"x" * (11 << 20) + b'"}',
         {"content-type": "application/json"}, 413, None),
        (json.dumps({"model": "sim-small", "messages": MESSAGES}).encode(),
         {"content-type": "text/plain"}, 415, None),
    ],
    ids=["malformed-json", "missing-model", "missing-messages", "oversized", "wrong-content-type"],
)  # fmt: skip
def test_bad_requests_get_openai_errors(
    up_cluster: Any, body: bytes, headers: dict[str, str], status: int, param: str | None
) -> None:
    url = f"{up_cluster.base_url}/chat/completions"
    resp = httpx.post(url, content=body, headers=headers, timeout=30)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["message"]
    if param:
        assert error["param"] == param
    # The gateway is still there and still serving.
    assert httpx.get(f"http://{up_cluster.gateway}/healthz", timeout=5).status_code == 200
    ok = client_for(up_cluster).chat.completions.create(
        model="sim-small", messages=MESSAGES, max_tokens=2
    )
    assert ok.choices[0].message.content


def test_grpcurl_lists_services_and_adds_a_backend_live(up_cluster: Any, wait: Any) -> None:
    listed = up_cluster.grpcurl(up_cluster.controller, "list")
    assert listed.returncode == 0, listed.stderr
    services = set(listed.stdout.split())
    assert {
        "llmpool.v1.AdminService",
        "llmpool.v1.AgentService",
        "llmpool.v1.GatewayService",
        "grpc.health.v1.Health",
    } <= services, services
    assert any(s.startswith("grpc.reflection.") for s in services), services

    replica_url = up_cluster.ready_replicas("sim-small")[0].status.url
    request = {
        "backend": {
            "id": "extra-1",
            "pool": "sim-extra",
            "url": replica_url,
            "upstream_model": "sim-small",
        }
    }
    added = up_cluster.grpcurl(
        "-d", json.dumps(request), up_cluster.controller, "llmpool.v1.AdminService/AddBackend"
    )
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["id"] == "extra-1"
    # Within 1 s of the admin call, with no restart, the gateway serves the new model.
    wait(lambda: "sim-extra" in up_cluster.model_ids(), 1.0, "sim-extra in /v1/models")
    chat = client_for(up_cluster).chat.completions.create(
        model="sim-extra", messages=MESSAGES, max_tokens=3
    )
    assert chat.choices[0].message.content

    for url in (
        "ftp://x",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:8000",
        "http://0x7f000001:8000",
        f"{replica_url}/v1?",
        f"{replica_url}/#",
    ):
        bad = up_cluster.grpcurl(
            "-d", json.dumps({"backend": {"id": "bad", "pool": "p", "url": url}}),
            up_cluster.controller, "llmpool.v1.AdminService/AddBackend",
        )  # fmt: skip
        assert bad.returncode != 0, url
        assert "InvalidArgument" in bad.stderr, bad.stderr

    for call, body in (("DeleteBackend", {"id": "extra-1"}), ("DeletePool", {"name": "sim-extra"})):
        done = up_cluster.grpcurl(
            "-d", json.dumps(body), up_cluster.controller, f"llmpool.v1.AdminService/{call}"
        )
        assert done.returncode == 0, done.stderr
    wait(lambda: "sim-extra" not in up_cluster.model_ids(), 5.0, "sim-extra gone")


def test_grpcurl_needs_a_certificate_and_a_viewer_may_only_read(up_cluster: Any) -> None:
    admin_api = "llmpool.v1.AdminService"
    anonymous = up_cluster.grpcurl(up_cluster.controller, f"{admin_api}/ListPools", role=None)
    assert anonymous.returncode != 0
    plaintext = subprocess.run(
        [grpcurl_bin(), "-plaintext", up_cluster.controller, f"{admin_api}/ListPools"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert plaintext.returncode != 0

    # A viewer's certificate, made as a user would, with the CA that `up` made.
    made = subprocess.run(
        [*cli("certs", "issue", "--dir", str(up_cluster.tls_dir), "--role", "viewer")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    pools = up_cluster.grpcurl(up_cluster.controller, f"{admin_api}/ListPools", role="viewer")
    assert pools.returncode == 0, pools.stderr
    assert "sim-small" in {p["name"] for p in json.loads(pools.stdout)["pools"]}
    body = {"backend": {"id": "sneaky", "pool": "sim-small", "url": "http://10.9.9.9:80"}}
    denied = up_cluster.grpcurl(
        "-d", json.dumps(body), up_cluster.controller, f"{admin_api}/AddBackend", role="viewer"
    )
    assert denied.returncode != 0
    assert "PermissionDenied" in denied.stderr, denied.stderr

    audit = up_cluster.grpcurl(
        "-d", json.dumps({"actor": "viewer"}), up_cluster.controller,
        f"{admin_api}/ListAuditEvents",
    )  # fmt: skip
    assert audit.returncode == 0, audit.stderr
    events = json.loads(audit.stdout)["events"]
    assert any(
        e["action"] == "AddBackend" and e["outcome"] == "denied" and e["role"] == "viewer"
        for e in events
    ), events


def test_only_a_gateway_may_ask_for_a_prefix_home_and_gets_a_proper_status(
    up_cluster: Any,
) -> None:
    """GatewayService.AskHome through grpcurl: a gateway's certificate gets an answer (no home
    in sim-small: round_robin, one gateway), NOT_FOUND for an unknown model; an admin's
    certificate is refused."""
    method = "llmpool.v1.GatewayService/AskHome"

    def ask(model: str, role: str) -> Any:
        body = {"gatewayId": "probe", "model": model, "prefix": "12345", "tokens": 4000}
        return up_cluster.grpcurl("-d", json.dumps(body), up_cluster.controller, method, role=role)

    answered = ask("sim-small", "gateway")
    assert answered.returncode == 0, answered.stderr
    assert json.loads(answered.stdout or "{}").get("memberId", "") == ""
    unknown = ask("no-such-model", "gateway")
    assert unknown.returncode != 0 and "NotFound" in unknown.stderr, unknown.stderr
    denied = ask("sim-small", "admin")
    assert denied.returncode != 0 and "PermissionDenied" in denied.stderr, denied.stderr


def test_agent_refuses_a_shell_template_and_the_pool_status_says_why(
    up_cluster: Any, wait: Any, tmp_path: Any
) -> None:
    admin_api = "llmpool.v1.AdminService"
    marker = tmp_path / "pwned"
    pool = {
        "name": "evil",
        "replicas": 1,
        "template": {"engine": "openai", "command": ["/bin/sh", "-c", f"touch {marker}"]},
    }
    made = up_cluster.grpcurl(
        "-d", json.dumps({"pool": pool}), up_cluster.controller, f"{admin_api}/CreatePool"
    )
    assert made.returncode == 0, made.stderr

    def refused() -> str:
        done = up_cluster.grpcurl(
            "-d", json.dumps({"name": "evil"}), up_cluster.controller, f"{admin_api}/GetPoolStatus"
        )
        message = json.loads(done.stdout).get("message", "") if done.returncode == 0 else ""
        return message if "refused by this agent" in message else ""

    message = wait(refused, 20.0, "the refusal in GetPoolStatus")
    assert "/bin/sh" in message and "runs other programs" in message, message
    assert not marker.exists()
    deleted = up_cluster.grpcurl(
        "-d", json.dumps({"name": "evil"}), up_cluster.controller, f"{admin_api}/DeletePool"
    )
    assert deleted.returncode == 0, deleted.stderr


def test_killed_replica_is_restarted_without_failed_requests(up_cluster: Any, wait: Any) -> None:
    victim = up_cluster.ready_replicas("sim-small")[0].status
    client = client_for(up_cluster)
    ok = 0
    errors: list[str] = []
    stop = threading.Event()

    def load() -> None:
        nonlocal ok
        while not stop.is_set():
            try:
                client.chat.completions.create(model="sim-small", messages=MESSAGES, max_tokens=4)
                ok += 1
            except Exception as exc:  # every failure is a finding
                errors.append(repr(exc))

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        wait(lambda: ok >= 5, 30, "traffic flowing")
        os.kill(victim.pid, signal.SIGKILL)

        def restarted() -> bool:
            for replica in up_cluster.ready_replicas("sim-small"):
                s = replica.status
                if s.replica_id == victim.replica_id and s.restarts > victim.restarts:
                    return s.pid != victim.pid
            return False

        wait(restarted, 30, f"{victim.replica_id} restarted and READY")
        served = ok
        wait(lambda: ok >= served + 10, 30, "traffic after the restart")
    finally:
        stop.set()
        worker.join(30)
    assert not errors, errors[:5]
    assert len(up_cluster.ready_replicas("sim-small")) == 2


def test_sigterm_stops_everything(start_up: Any, wait: Any, proctree: Any) -> None:
    cluster = start_up()
    cluster.wait_ready("sim-small", 2)
    up = cluster.procs[0]
    # up -> controller, agent, gateway, and the two engines below the agent.
    tree = wait(lambda: t if len(t := proctree.descendants(up.pid)) >= 5 else None, 10, "tree")
    assert up.stop(signal.SIGTERM) == 0, up.tail()
    left = [pid for pid in tree if proctree.alive(pid)]
    assert not left, f"still running after llm-pool up exited: {left}"


def test_every_process_exports_metrics(up_cluster: Any) -> None:
    client_for(up_cluster).chat.completions.create(
        model="sim-small", messages=MESSAGES, max_tokens=2
    )
    gateway = up_cluster.scrape("gateway")
    assert 'llmpool_gateway_requests_total{backend="sim-small-' in gateway
    assert 'llmpool_gateway_tokens_total{kind="completion",model="sim-small"}' in gateway
    controller = up_cluster.scrape("controller")
    assert 'llmpool_controller_replicas{pool="sim-small",state="ready"} 2.0' in controller
    assert 'llmpool_controller_agents{state="connected"} 1.0' in controller
    assert "llmpool_controller_snapshot_push_seconds_count" in controller
    agent = up_cluster.scrape("agent")
    # At least the two sim-small replicas (the default also has smollm2 with the llamacpp extra).
    ready = re.search(r'^llmpool_agent_replicas\{state="ready"\} (\S+)$', agent, re.MULTILINE)
    assert ready and float(ready.group(1)) >= 2, agent
    assert "llmpool_agent_engine_running_requests{replica=" in agent


SLOW_POOL = """
pools:
  - name: slow
    replicas: 1
    template:
      engine: sim
      command: ["{python}", "-m", "llmpool.cli", "sim-engine", "--host", "{host}",
                "--port", "{port}", "--model", "{model}", "--speedup", "1"]
      cpu_slots: 0
"""


def test_sigterm_lets_an_in_flight_stream_finish(start_up: Any, tmp_path: Any) -> None:
    config = tmp_path / "slow.yaml"
    config.write_text(SLOW_POOL)
    cluster = start_up("--config", str(config))
    cluster.wait_ready("slow", 1)
    up = cluster.procs[0]
    # About 6 ms a token at speedup 1: this stream lasts over a second.
    stream = client_for(cluster).chat.completions.create(
        model="slow", messages=MESSAGES, max_tokens=200, stream=True
    )
    tokens = 0
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                tokens += 1
                if tokens == 3:
                    up.popen.send_signal(signal.SIGTERM)
            finish = choice.finish_reason or finish
    assert tokens == 200
    assert finish == "length"
    assert up.popen.wait(40) == 0, up.tail()


def test_grpcurl_tails_a_replica_log(up_cluster: Any) -> None:
    replica = up_cluster.ready_replicas("sim-small")[0].status.replica_id
    request = json.dumps({"replica_id": replica, "lines": 50})
    tail = up_cluster.grpcurl(
        "-d", request, up_cluster.controller, "llmpool.v1.AdminService/TailLogs"
    )
    assert tail.returncode == 0, tail.stderr
    lines = [doc["line"] for doc in _json_docs(tail.stdout)]
    assert any("sim-engine listening" in line for line in lines), lines

    unknown = up_cluster.grpcurl(
        "-d", json.dumps({"replica_id": "nope"}), up_cluster.controller,
        "llmpool.v1.AdminService/TailLogs",
    )  # fmt: skip
    assert unknown.returncode != 0
    assert "NotFound" in unknown.stderr, unknown.stderr


def _json_docs(text: str) -> list[Any]:
    """grpcurl prints one pretty JSON object per streamed message, one after another."""
    decoder = json.JSONDecoder()
    docs, pos = [], 0
    while (pos := _skip_space(text, pos)) < len(text):
        doc, pos = decoder.raw_decode(text, pos)
        docs.append(doc)
    return docs


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos
