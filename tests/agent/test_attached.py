"""AttachedEngine's state machine, fed by a scripted prober and a fake clock (no I/O, no sleeps)."""

from __future__ import annotations

from collections import deque

import httpx

from agent.attach_spec import AttachSpec
from agent.attached import AttachedEngine
from agent.engine_metrics import EngineLoad
from agent.probe import ProbeError, Prober
from agent.settings import SupervisorSettings
from llmpool.clock import FakeClock
from llmpool.status import ReplicaState

LOAD = EngineLoad(running=2, waiting=1, kv_usage=0.5)


class ScriptedProber(Prober):
    """Answers health probes from a script: a float is a round trip in seconds, a str an error."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(httpx.AsyncClient(), clock)
        self.health_script: deque[float | str] = deque()
        self.load_script: deque[EngineLoad | str] = deque()
        self.urls: list[str] = []

    async def health(self, url: str, timeout_s: float) -> float:
        self.urls.append(url)
        answer = self.health_script.popleft()
        if isinstance(answer, str):
            raise ProbeError(answer)
        return answer

    async def load(self, engine: str, url: str, timeout_s: float) -> EngineLoad:
        self.urls.append(url)
        answer = self.load_script.popleft() if self.load_script else LOAD
        if isinstance(answer, str):
            raise ProbeError(answer)
        return answer


class Harness:
    def __init__(self, metrics_path: str = "/metrics") -> None:
        self.clock = FakeClock()
        self.prober = ScriptedProber(self.clock)
        self.changes = 0
        spec = AttachSpec(
            replica_id="att-1",
            pool="chat",
            url="http://10.0.0.5:8000",
            engine="vllm",
            served_model="served",
            health_path="/health",
            metrics_path=metrics_path,
        )
        self.engine = AttachedEngine(
            spec, SupervisorSettings(unhealthy_after=3), self.prober, self.clock, self._changed
        )

    def _changed(self) -> None:
        self.changes += 1

    async def probe(self, *answers: float | str) -> None:
        """One probe per answer, the clock moving a second before each."""
        for answer in answers:
            self.clock.advance(1.0)
            self.prober.health_script.append(answer)
            await self.engine.probe_once()


async def test_starting_until_the_first_good_probe_then_ready_with_load() -> None:
    h = Harness()
    first = h.engine.status()
    assert first.state is ReplicaState.STARTING and not first.healthy
    assert (first.attached, first.pid, first.restarts) == (True, 0, 0)
    assert (first.url, first.pool, first.served_model) == ("http://10.0.0.5:8000", "chat", "served")

    await h.probe("connection refused", "connection refused")
    waiting = h.engine.status()
    assert waiting.state is ReplicaState.STARTING and not waiting.healthy
    assert waiting.message == "not answering yet: connection refused"
    assert h.changes == 0

    await h.probe(0.004)
    ready = h.engine.status()
    assert ready.state is ReplicaState.READY and ready.healthy and ready.message == ""
    assert ready.latency_ms == 4.0
    assert (ready.running, ready.waiting, ready.kv_usage) == (2.0, 1.0, 0.5)
    assert h.changes == 1
    assert h.prober.urls[-2:] == ["http://10.0.0.5:8000/health", "http://10.0.0.5:8000/metrics"]


async def test_unhealthy_after_the_threshold_never_failed_and_recovers() -> None:
    h = Harness()
    await h.probe(0.01)
    await h.probe("HTTP 503", "HTTP 503")
    below = h.engine.status()
    assert below.healthy and below.state is ReplicaState.READY and h.changes == 1
    assert below.message == "2 failed health probes in 1.0s: HTTP 503"

    await h.probe("HTTP 503")
    down = h.engine.status()
    assert down.state is ReplicaState.READY and not down.healthy
    assert down.message == "3 failed health probes in 2.0s: HTTP 503"
    assert h.changes == 2
    # Staying down changes nothing worth an immediate report, and never becomes FAILED.
    await h.probe(*["timeout"] * 10)
    still = h.engine.status()
    assert still.state is ReplicaState.READY and not still.healthy and still.restarts == 0
    assert still.message == "13 failed health probes in 12.0s: timeout" and h.changes == 2

    await h.probe(0.02)
    back = h.engine.status()
    assert back.state is ReplicaState.READY and back.healthy and back.message == ""
    assert h.changes == 3
    # A new streak counts from one again.
    await h.probe("HTTP 500", "HTTP 500")
    assert h.engine.status().healthy


async def test_latency_is_an_ewma_of_good_probes() -> None:
    h = Harness()
    await h.probe(0.010, "down", 0.020)
    # alpha 0.3: 0.3 * 20 + 0.7 * 10
    assert h.engine.status().latency_ms == 13.0


async def test_no_metrics_path_means_no_scrape_and_failed_scrapes_keep_the_last_load() -> None:
    bare = Harness(metrics_path="")
    await bare.probe(0.01, 0.01)
    assert bare.prober.urls == ["http://10.0.0.5:8000/health"] * 2
    assert bare.engine.status().kv_usage == -1.0

    h = Harness()
    await h.probe(0.01)
    h.prober.load_script.append("GET /metrics: HTTP 500")
    await h.probe(0.01)
    status = h.engine.status()
    assert status.healthy and (status.running, status.waiting) == (2.0, 1.0)


async def test_a_failed_health_probe_skips_the_load_scrape() -> None:
    h = Harness()
    await h.probe(0.01)
    h.prober.urls.clear()
    await h.probe("refused")
    assert h.prober.urls == ["http://10.0.0.5:8000/health"]


async def test_stop_before_start_is_harmless_and_reports_stopped() -> None:
    h = Harness()
    await h.engine.stop()
    status = h.engine.status()
    assert status.state is ReplicaState.STOPPED and not status.healthy
