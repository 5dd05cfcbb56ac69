"""Runs one generation through the engine and turns it into an SSE stream or a whole body."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, MutableMapping
from typing import Any, TypeVar

from llmpool.sim.engine import Engine, Generation
from llmpool.sim.openai_requests import GenerateRequest
from llmpool.sim.openai_responses import SSE_DONE, Formatter, sse
from llmpool.sim.textgen import output_token, prompt_seed
from llmpool.sim.tokens import tokenize

T = TypeVar("T")
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]

# Every prompt starts with a begin-of-sequence token, as with Llama-family tokenizers.
BOS = "<s>"


class ClientGone(Exception):
    """The client disconnected before the answer was complete."""


class Job:
    """A submitted request and the text of each token it will produce."""

    def __init__(self, engine: Engine, request: GenerateRequest) -> None:
        tokens = [BOS, *tokenize(request.prompt)]
        self.prompt_tokens = len(tokens)
        self._pieces: list[str] | None = None
        max_tokens = request.max_tokens
        if request.tool_call is not None:
            # A tool call streams its arguments one token at a time; its length is the call's.
            self._pieces = tokenize(request.tool_call.arguments) or [request.tool_call.arguments]
            max_tokens = len(self._pieces)
        self._seed = prompt_seed(request.prompt)
        self.generation: Generation = engine.submit(tokens, max_tokens)

    def text(self, index: int) -> str:
        if self._pieces is not None:
            return self._pieces[index]
        return output_token(self._seed, index)


async def stream_sse(job: Job, fmt: Formatter, include_usage: bool) -> AsyncIterator[bytes]:
    """OpenAI SSE: opening chunks, one chunk a token, the finish chunk, usage, [DONE].
    The opening (the role chunk) goes out with the first token, after prefill, as vLLM's does:
    otherwise a client's time to first chunk would not include prefill. Closing the iterator
    early (client gone) cancels the sequence and frees its blocks."""
    completion = 0
    try:
        async for index in job.generation.tokens():
            if completion == 0:
                for chunk in fmt.opening():
                    yield sse(chunk)
            completion += 1
            yield sse(fmt.token(index, job.text(index)))
        if completion == 0:
            for chunk in fmt.opening():
                yield sse(chunk)
        yield sse(fmt.closing())
        if include_usage:
            yield sse(fmt.usage_chunk(job.prompt_tokens, completion))
        yield SSE_DONE
    finally:
        job.generation.cancel()


async def collect(job: Job, fmt: Formatter) -> dict[str, Any]:
    try:
        texts = [job.text(index) async for index in job.generation.tokens()]
    finally:
        job.generation.cancel()
    return fmt.complete(texts, job.prompt_tokens)


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(receive: Receive, work: Coroutine[Any, Any, T]) -> T:
    """Runs work, cancelling it if the client disconnects first (raises ClientGone)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, watcher):
            if not pending.done():
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pending
    if task.cancelled():
        raise ClientGone()
    return task.result()
