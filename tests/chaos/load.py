"""Steady mixed load for the chaos suite: plain and streaming chats across every gateway through
the official openai client, each outcome recorded with its timing."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import openai

MESSAGES = [{"role": "user", "content": "Tell me about the weather today"}]


@dataclass(frozen=True)
class Outcome:
    started: float
    ended: float
    gateway: str
    stream: bool
    # "ok", "failed" (plain: an error answer), "error_event" (a stream that ended with an error
    # event), "cut" (a stream that ended with neither its finish nor an error: never allowed).
    result: str
    detail: str = ""

    @property
    def seconds(self) -> float:
        return self.ended - self.started


class Load:
    """Workers that loop over gateways (taken from `gateways()` each time, so gateways may come
    and go), alternating plain and streaming requests, until stop()."""

    def __init__(
        self, gateways: Callable[[], list[str]], workers: int = 3, model: str = "chaos"
    ) -> None:
        self._gateways = gateways
        self._model = model
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.outcomes: list[Outcome] = []
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(workers)
        ]

    def start(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def since(self, t: float) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if o.started >= t]

    def _run(self, worker: int) -> None:
        clients: dict[str, openai.OpenAI] = {}
        for n in itertools.count(worker):
            if self._stop.is_set():
                return
            gateways = self._gateways()
            if not gateways:
                time.sleep(0.05)
                continue
            gateway = gateways[n % len(gateways)]
            client = clients.get(gateway)
            if client is None:
                client = clients[gateway] = openai.OpenAI(
                    base_url=f"http://{gateway}/v1", api_key="unused", max_retries=0, timeout=60
                )
            outcome = _one(client, gateway, self._model, stream=n % 2 == 1)
            with self._lock:
                self.outcomes.append(outcome)
            time.sleep(0.02)


def _one(client: openai.OpenAI, gateway: str, model: str, stream: bool) -> Outcome:
    started = time.monotonic()
    try:
        if not stream:
            chat = client.chat.completions.create(
                model=model,
                messages=MESSAGES,
                max_tokens=8,  # type: ignore[arg-type]
            )
            result = "ok" if chat.choices else "failed"
            return Outcome(started, time.monotonic(), gateway, False, result)
        finished = False
        for chunk in client.chat.completions.create(
            model=model,
            messages=MESSAGES,
            max_tokens=8,
            stream=True,  # type: ignore[arg-type]
        ):
            if chunk.choices and chunk.choices[0].finish_reason:
                finished = True
        result = "ok" if finished else "cut"
        return Outcome(started, time.monotonic(), gateway, True, result)
    except openai.APIStatusError as exc:
        return Outcome(started, time.monotonic(), gateway, stream, "failed", str(exc)[:200])
    except openai.APIConnectionError as exc:
        return Outcome(started, time.monotonic(), gateway, stream, "cut" if stream else "failed",
                       str(exc)[:200])  # fmt: skip
    except openai.APIError as exc:
        # The openai client raises a plain APIError for an error event inside a stream.
        kind = "error_event" if stream else "failed"
        return Outcome(started, time.monotonic(), gateway, stream, kind, str(exc)[:200])
    except Exception as exc:
        kind = "cut" if stream else "failed"
        return Outcome(started, time.monotonic(), gateway, stream, kind, repr(exc)[:200])
