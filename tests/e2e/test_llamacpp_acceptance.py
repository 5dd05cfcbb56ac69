"""Issue 4 acceptance with a real model: the default `llm-pool up` serving SmolLM2-135M-Instruct on
llama_cpp.server replicas, driven with the OpenAI SDK and grpcurl as a user drives it.

Needs the `llamacpp` extra (pip install -e '.[llamacpp]'); skipped without it. The tests share one
`llm-pool up` (no --config: what a newcomer gets) and run in file order; each first waits for the
replicas it needs, so a failure in one does not hide the others.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import needs_llamacpp, wait_for

pytestmark = [pytest.mark.e2e, needs_llamacpp]

POOL = "smollm2"
# SmolLM2-135M's hidden size (n_embd in its GGUF metadata, llama.embedding_length): the width of
# every mean-pooled embedding.
EMBEDDING_WIDTH = 576
# Asks for more text than max_tokens allows, so that greedy replies end with "length".
LONG: Any = [{"role": "user", "content": "Write a long essay about the history of Paris."}]
SHORT: Any = [{"role": "user", "content": "What is the capital of France?"}]
# tests/e2e/conftest.py's Cluster (conftest modules are not imported by tests).
Cluster = Any
DRAIN_ENV = "LLMPOOL_CONTROLLER_DRAIN_S"


@pytest.fixture(scope="module")
def pool(module_up: Callable[..., Cluster]) -> Cluster:
    # A replica being removed gets up to 10 s by default to finish its streams; on a busy CI
    # host a 160-token stream on llama.cpp can take longer, and the scale-down test is about
    # the drain waiting for streams (it still ends as soon as none is left), not about 10 s.
    before = os.environ.get(DRAIN_ENV)
    os.environ[DRAIN_ENV] = "120"
    try:
        cluster = module_up()
    finally:
        if before is None:
            del os.environ[DRAIN_ENV]
        else:
            os.environ[DRAIN_ENV] = before
    try:
        cluster.wait_ready(POOL, 2, timeout=240)
    except AssertionError:
        raise AssertionError(f"smollm2 did not get ready:\n{cluster.procs[0].tail(120)}") from None
    return cluster


def client_for(base_url: str, timeout: float = 120) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=timeout)


@dataclass
class Streamed:
    pieces: list[str] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def stream_chat(
    client: openai.OpenAI,
    max_tokens: int,
    messages: Any = LONG,
    first: threading.Event | None = None,
) -> Streamed:
    """One greedy streamed chat; `first` is set when its first content chunk arrives."""
    out = Streamed()
    stream = client.chat.completions.create(
        model=POOL, messages=messages, max_tokens=max_tokens, stream=True, temperature=0
    )
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                out.pieces.append(choice.delta.content)
                if first is not None:
                    first.set()
            if choice.finish_reason:
                out.finish_reasons.append(choice.finish_reason)
    return out


def chat_text(client: openai.OpenAI, max_tokens: int = 8, messages: Any = SHORT) -> str:
    chat = client.chat.completions.create(
        model=POOL, messages=messages, max_tokens=max_tokens, temperature=0
    )
    text = chat.choices[0].message.content or ""
    assert text.strip(), chat
    return text


def served_by(cluster: Cluster) -> dict[str, float]:
    """Successful smollm2 requests the gateway relayed, per member (replica id)."""
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(cluster.scrape("gateway")):
        if family.name != "llmpool_gateway_requests":
            continue
        for sample in family.samples:
            labels = sample.labels
            if sample.name.endswith("_total") and labels["model"] == POOL:
                if labels["status"] == "200":
                    counts[labels["backend"]] = counts.get(labels["backend"], 0) + sample.value
    return counts


def wait_served(cluster: Cluster, replica_id: str, client: openai.OpenAI, within: float) -> None:
    """Sends concurrent chats through the gateway until replica_id has answered one more."""
    before = served_by(cluster).get(replica_id, 0)
    width = len(cluster.ready_replicas(POOL))
    deadline = time.monotonic() + within
    with ThreadPoolExecutor(width) as pool:
        while served_by(cluster).get(replica_id, 0) <= before:
            assert time.monotonic() < deadline, f"{replica_id} got no traffic: {served_by(cluster)}"
            list(pool.map(lambda _: chat_text(client, 2), range(width)))


def ready_status(cluster: Cluster, replica_id: str) -> Any:
    for replica in cluster.ready_replicas(POOL):
        if replica.status.replica_id == replica_id:
            return replica.status
    return None


def engine_cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def grpcurl_json(cluster: Cluster, method: str, body: dict[str, Any]) -> Any:
    done = cluster.grpcurl(
        "-d", json.dumps(body), cluster.controller, f"llmpool.v1.AdminService/{method}"
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_two_replicas_chat_stream_and_embed(pool: Cluster) -> None:
    client = client_for(pool.base_url)
    assert POOL in [m.id for m in client.models.list()]
    replicas = pool.ready_replicas(POOL)
    assert len(replicas) == 2
    assert all(r.status.engine == "llamacpp" and r.status.pid > 0 for r in replicas)

    chat = client.chat.completions.create(model=POOL, messages=SHORT, max_tokens=16, temperature=0)
    assert (chat.choices[0].message.content or "").strip(), chat
    assert chat.model == POOL
    assert chat.usage is not None and 0 < chat.usage.completion_tokens <= 16

    streamed = stream_chat(client, 16)
    assert len(streamed.pieces) >= 4, streamed
    assert streamed.text.strip()
    assert streamed.finish_reasons == ["length"], streamed

    texts = ["The cat sat on the mat.", "Quarterly revenue grew by four percent."]
    vectors = [d.embedding for d in client.embeddings.create(model=POOL, input=texts).data]
    assert [len(v) for v in vectors] == [EMBEDDING_WIDTH, EMBEDDING_WIDTH]
    assert all(math.isfinite(x) for v in vectors for x in v)
    assert any(abs(x) > 1e-6 for x in vectors[0])
    assert max(abs(a - b) for a, b in zip(*vectors, strict=True)) > 1e-3
    again = client.embeddings.create(model=POOL, input=texts[0]).data[0].embedding
    assert max(abs(a - b) for a, b in zip(vectors[0], again, strict=True)) < 1e-4


# Greedy decoding (a sampled first token can be end-of-text); this anthropic SDK takes the
# Messages API's temperature field through extra_body.
GREEDY = {"temperature": 0}


def test_anthropic_clients_get_smollm2_through_v1_messages(pool: Cluster) -> None:
    """The anthropic package against the real model: text, a stream, and a tool call (a named
    tool: llama_cpp.server constrains its output to the function's arguments)."""
    client = anthropic.Anthropic(
        base_url=f"http://{pool.gateway}", api_key="unused", max_retries=0, timeout=120
    )
    msg = client.messages.create(model=POOL, max_tokens=16, messages=SHORT, extra_body=GREEDY)
    assert msg.role == "assistant" and msg.model == POOL
    assert msg.content[0].type == "text" and msg.content[0].text.strip(), msg
    assert msg.usage.output_tokens > 0
    with client.messages.stream(model=POOL, max_tokens=16, messages=SHORT, extra_body=GREEDY) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text.strip() and final.stop_reason in ("end_turn", "max_tokens"), final
    weather = {
        "name": "get_weather",
        "description": "Current weather in a city",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
    asked: Any = [{"role": "user", "content": "What is the weather in Lisbon?"}]
    tool = client.messages.create(
        model=POOL, max_tokens=64, messages=asked, tools=[weather],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "get_weather"}, extra_body=GREEDY,
    )  # fmt: skip
    [use] = [b for b in tool.content if b.type == "tool_use"]
    assert use.name == "get_weather" and isinstance(use.input, dict) and "city" in use.input
    assert tool.stop_reason == "tool_use"


def test_concurrent_streams_are_not_cut_short(pool: Cluster) -> None:
    # Three streams on two replicas: one replica serves two at once. llama_cpp.server's default
    # (--interrupt_requests true) ends the running stream early when another waits.
    pool.wait_ready(POOL, 2, timeout=60)
    client = client_for(pool.base_url)
    before = served_by(pool)
    start = threading.Barrier(3, timeout=30)

    def one(_: int) -> Streamed:
        start.wait()
        return stream_chat(client, 32)

    with ThreadPoolExecutor(3) as executor:
        results = list(executor.map(one, range(3)))
    for streamed in results:
        assert streamed.finish_reasons == ["length"], results
        assert streamed.text.strip(), results
    after = served_by(pool)
    per_member = [after.get(k, 0) - before.get(k, 0) for k in after]
    assert sum(per_member) == 3 and max(per_member) >= 2, (before, after)


def test_grpcurl_tail_follows_replica_log(pool: Cluster) -> None:
    pool.wait_ready(POOL, 2, timeout=60)
    replica = pool.ready_replicas(POOL)[0].status
    request = json.dumps({"replica_id": replica.replica_id, "lines": 1, "follow": True})
    tail = pool.grpcurl_popen("-d", request, pool.controller, "llmpool.v1.AdminService/TailLogs")
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert tail.stdout is not None
        for line in tail.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:

        def next_line(within: float) -> str:
            got = lines.get(timeout=within)
            assert got is not None, f"tail ended: {tail.stderr.read() if tail.stderr else ''}"
            return got

        # grpcurl prints each message as indented JSON, one field a line. The backlog line
        # proves the stream is open before the request that must show up.
        deadline = time.monotonic() + 20
        while '"line"' not in next_line(max(0.1, deadline - time.monotonic())):
            assert time.monotonic() < deadline, "no backlog line"
        # The access log line of a request only this test sends (health probes hit /v1/models
        # too, so the marker in the query string tells this one apart).
        marker = f"tail-{uuid.uuid4().hex[:8]}"
        httpx.get(f"{replica.url}/v1/models?probe={marker}", timeout=10).raise_for_status()
        deadline = time.monotonic() + 20
        seen: list[str] = []
        while not any(marker in line for line in seen):
            assert time.monotonic() < deadline, f"no line with {marker}; got {seen[-10:]}"
            seen.append(next_line(max(0.1, deadline - time.monotonic())))
        assert tail.poll() is None, "the tail ended instead of following"
    finally:
        tail.terminate()
        tail.wait(10)
        reader.join(10)
    assert not reader.is_alive()


def test_kill_9_of_an_engine_is_survived_and_restarted(pool: Cluster, proctree: Any) -> None:
    pool.wait_ready(POOL, 2, timeout=60)
    victim = pool.ready_replicas(POOL)[0].status
    assert "llama_cpp.server" in engine_cmdline(victim.pid)
    client = client_for(pool.base_url)
    ok: list[int] = []
    errors: list[str] = []
    stop = threading.Event()

    def load() -> None:
        for _ in range(2000):  # bounded; stop ends it long before
            if stop.is_set():
                return
            try:
                chat_text(client, 4)
                ok.append(1)
            except Exception as exc:  # every failure is a finding
                errors.append(repr(exc))

    workers = [threading.Thread(target=load, daemon=True) for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        wait_for(lambda: len(ok) >= 4, 60, "traffic flowing")
        os.kill(victim.pid, signal.SIGKILL)

        def restarted() -> Any:
            s = ready_status(pool, victim.replica_id)
            ok_now = s is not None and s.restarts == victim.restarts + 1 and s.pid != victim.pid
            return s if ok_now else None

        new = wait_for(restarted, 120, f"{victim.replica_id} restarted and READY")
        served = len(ok)
        wait_for(lambda: len(ok) >= served + 4, 60, "traffic after the restart")
    finally:
        stop.set()
        for worker in workers:
            worker.join(120)
    assert not errors, errors[:5]
    assert not proctree.alive(victim.pid)
    assert "llama_cpp.server" in engine_cmdline(new.pid)
    # It serves again: straight at its new process, and through the gateway.
    assert chat_text(client_for(f"{new.url}/v1"), 4)
    wait_served(pool, victim.replica_id, client, within=60)


@dataclass
class Busy:
    """What happened to the requests kept in flight by busy()."""

    firsts: list[threading.Event]
    results: list[Streamed] = field(default_factory=list)
    calls_ok: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # time.monotonic() when each stream ended.
    ended: list[float] = field(default_factory=list)


@contextlib.contextmanager
def busy(
    client: openai.OpenAI, streams: int = 3, callers: int = 2, stream_tokens: int = 64
) -> Iterator[Busy]:
    """Keeps `streams` long streams and `callers` loops of short calls going; on exit the loops
    stop and every stream is waited for."""
    state = Busy(firsts=[threading.Event() for _ in range(streams)])
    stop = threading.Event()

    def one_stream(first: threading.Event) -> None:
        try:
            state.results.append(stream_chat(client, stream_tokens, first=first))
            state.ended.append(time.monotonic())
        except Exception as exc:  # every failure is a finding
            state.errors.append(repr(exc))
            first.set()

    def calls() -> None:
        for _ in range(500):  # bounded; stop ends it long before
            if stop.is_set():
                return
            try:
                chat_text(client, 8)
                state.calls_ok.append(1)
            except Exception as exc:
                state.errors.append(repr(exc))

    with ThreadPoolExecutor(streams + callers) as executor:
        futures = [executor.submit(one_stream, first) for first in state.firsts]
        futures += [executor.submit(calls) for _ in range(callers)]
        try:
            yield state
        finally:
            stop.set()
    for future in futures:
        future.result()


def test_grpcurl_scale_to_three_then_to_one_under_load(pool: Cluster, proctree: Any) -> None:
    pool.wait_ready(POOL, 2, timeout=60)
    client = client_for(pool.base_url)
    before = {r.status.replica_id for r in pool.replicas(POOL)}
    scaled = grpcurl_json(pool, "ScalePool", {"name": POOL, "replicas": 3})
    assert scaled["replicas"] == 3, scaled
    pool.wait_ready(POOL, 3, timeout=120)
    (third,) = {r.status.replica_id for r in pool.ready_replicas(POOL)} - before
    wait_served(pool, third, client, within=60)

    replicas = {r.status.replica_id: r.status for r in pool.ready_replicas(POOL)}
    # Streams that outlast the controller's settle time and a usage report or two: the drain of
    # the replicas serving them must wait for them, and they must end normally.
    with busy(client, stream_tokens=160) as load:
        for first in load.firsts:
            assert first.wait(60), "a stream got no first chunk"
        started = time.monotonic()
        assert grpcurl_json(pool, "ScalePool", {"name": POOL, "replicas": 1})["replicas"] == 1

        def scaled_down() -> Any:
            left = pool.replicas(POOL)
            if len(left) != 1 or not pool.ready_replicas(POOL):
                return None
            gone = [s for rid, s in replicas.items() if rid != left[0].status.replica_id]
            return left if not any(proctree.alive(s.pid) for s in gone) else None

        (survivor,) = wait_for(scaled_down, 90, "two replicas drained and stopped")
        took = time.monotonic() - started
    print(
        f"scale-down 3 -> 1 took {took:.1f}s; the last stream ended"
        f" {max(load.ended) - started:.1f}s after ScalePool"
    )
    assert not load.errors, load.errors[:5]
    assert len(load.results) == len(load.firsts)
    for streamed in load.results:
        # A stream cut off mid-way ends with no finish_reason at all.
        assert streamed.finish_reasons in (["length"], ["stop"]), load.results
        assert streamed.text.strip(), load.results
    assert load.calls_ok
    assert survivor.status.replica_id in replicas
    assert chat_text(client, 4)
