"""The HTTP adapter: Starlette routes for the OpenAI API, /health and /metrics over one Engine."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from llmpool.errors import InvalidArgumentError, UnavailableError
from llmpool.sim.embeddings import embed, to_base64
from llmpool.sim.engine import Engine
from llmpool.sim.openai_requests import (
    ApiError,
    GenerateRequest,
    parse_body,
    parse_chat,
    parse_completion,
    parse_embedding,
)
from llmpool.sim.openai_responses import (
    ChatFormatter,
    CompletionFormatter,
    Formatter,
    embeddings_body,
)
from llmpool.sim.serving import ClientGone, Job, collect, stream_sse, unless_disconnected
from llmpool.sim.tokens import tokenize

log = logging.getLogger(__name__)


class JsonResponse(Response):
    media_type = "application/json"

    def render(self, content: object) -> bytes:
        return orjson.dumps(content)


class _GenerationStream(StreamingResponse):
    """SSE that cancels its sequence however the response ends, even before the first chunk
    (a generator that never started would never run its own cleanup)."""

    def __init__(self, job: Job, fmt: Formatter, include_usage: bool) -> None:
        super().__init__(
            stream_sse(job, fmt, include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )
        self._job = job

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._job.generation.cancel()


def _error(exc: ApiError) -> Response:
    return JsonResponse(exc.body(), status_code=exc.status)


def build_app(engine: Engine) -> Starlette:
    """The app starts the engine's step loop on start-up and stops it after the server drained."""
    settings = engine.settings
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            await engine.stop()

    async def health(_: Request) -> Response:
        if engine.running:
            return PlainTextResponse("ok")
        return PlainTextResponse("engine loop is not running", status_code=503)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(engine.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def reset_prefix_cache(_: Request) -> Response:
        # vLLM's endpoint of the same name: benchmarks start every run from a cold cache.
        dropped = engine.scheduler.kv.reset_prefix_cache()
        log.info("prefix cache reset", extra={"dropped_blocks": dropped})
        return JsonResponse({"dropped_blocks": dropped})

    async def models(_: Request) -> Response:
        card = {
            "id": settings.model,
            "object": "model",
            "created": started,
            "owned_by": "llm-pool",
            "root": settings.model,
            "max_model_len": settings.kv_blocks * settings.block_size,
        }
        return JsonResponse({"object": "list", "data": [card]})

    async def generate(request: Request, req: GenerateRequest, fmt: Formatter) -> Response:
        job = Job(engine, req)
        if req.stream:
            return _GenerationStream(job, fmt, req.include_usage)
        try:
            body = await unless_disconnected(request.receive, collect(job, fmt))
        except ClientGone:
            job.generation.cancel()
            log.info("client disconnected", extra={"seq_id": job.generation.seq.seq_id})
            return Response(status_code=499)
        return JsonResponse(body)

    async def chat(request: Request) -> Response:
        req = parse_chat(
            parse_body(await request.body()), settings.model, settings.max_tokens_default
        )
        return await generate(request, req, ChatFormatter(req))

    async def completions(request: Request) -> Response:
        body = parse_body(await request.body())
        req = parse_completion(body, settings.model, settings.max_tokens_default)
        return await generate(request, req, CompletionFormatter(req))

    async def embeddings(request: Request) -> Response:
        req = parse_embedding(
            parse_body(await request.body()), settings.model, settings.embedding_dim
        )
        vectors: list[list[float] | str] = []
        for text in req.inputs:
            vector = embed(text, req.dimensions)
            vectors.append(to_base64(vector) if req.base64 else vector)
        prompt_tokens = sum(len(tokenize(text)) + 1 for text in req.inputs)
        return JsonResponse(embeddings_body(req.model, vectors, prompt_tokens))

    async def api_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _error(exc)

    async def invalid(_: Request, exc: Exception) -> Response:
        return _error(ApiError(400, str(exc)))

    async def unavailable(_: Request, exc: Exception) -> Response:
        return _error(ApiError(503, str(exc), type_="service_unavailable"))

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(ApiError(exc.status_code, str(exc.detail), type_="invalid_request_error"))

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/reset_prefix_cache", reset_prefix_cache, methods=["POST"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
    ]
    handlers = {
        ApiError: api_error,
        InvalidArgumentError: invalid,
        UnavailableError: unavailable,
        HTTPException: http_error,
    }
    return Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)  # type: ignore[arg-type]
