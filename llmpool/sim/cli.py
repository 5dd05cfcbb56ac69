"""`llm-pool sim-engine`: flags (also LLMPOOL_SIM_<NAME>), the uvicorn server, graceful exit."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import fields
from types import FrameType
from typing import Any

import uvicorn

from llmpool.cliargs import add_logging_options, env_option, parse_bool
from llmpool.logs import setup_logging
from llmpool.sim.app import build_app
from llmpool.sim.costs import CostModel
from llmpool.sim.engine import Engine
from llmpool.sim.settings import SimSettings

log = logging.getLogger("llmpool.sim")

# In-flight requests get this long to finish after SIGTERM/SIGINT.
GRACEFUL_SHUTDOWN_S = 10


def _env_name(flag: str) -> str:
    return "LLMPOOL_SIM_" + flag.upper().replace("-", "_")


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llm-pool sim-engine",
        description="A simulated OpenAI-compatible engine: continuous batching, a KV cache with "
        "prefix caching, latency from the Dynamo mocker's cost model. See docs/sim-engine.md.",
    )

    def add(
        flag: str, kind: Callable[[str], Any], default: Any, help_: str, required: bool = False
    ) -> None:
        env_option(
            p, f"--{flag}", env, _env_name(flag), default, help_, type=kind, required=required
        )

    d = SimSettings()
    add("host", str, "127.0.0.1", "address to listen on")
    add("port", int, None, "port to listen on; 0 picks one and prints it", required=True)
    add("model", str, d.model, "model name served")
    add("speedup", float, d.speedup, "divide every simulated time by this")
    add("max-num-seqs", int, d.max_num_seqs, "largest running batch")
    add("kv-blocks", int, d.kv_blocks, "KV cache size in blocks")
    add("block-size", int, d.block_size, "tokens per KV block")
    for f in fields(CostModel):
        flag = f.name.replace("_ms", "-ms").replace("_", "-")
        add(flag, float, f.default, f"cost model coefficient {f.name}")
    add("max-tokens-default", int, d.max_tokens_default, "max_tokens when a request has none")
    add("embedding-dim", int, d.embedding_dim, "length of embedding vectors")
    add(
        "cache-info",
        parse_bool,
        d.cache_info,
        "say the KV cache's size on /metrics (vllm:cache_config_info); false: say nothing of it",
    )
    add_logging_options(p, env, command_prefix="LLMPOOL_SIM_")
    return p


def settings_from_args(args: argparse.Namespace) -> SimSettings:
    costs = CostModel(**{f.name: getattr(args, f.name) for f in fields(CostModel)})
    return SimSettings(
        model=args.model,
        speedup=args.speedup,
        max_num_seqs=args.max_num_seqs,
        kv_blocks=args.kv_blocks,
        block_size=args.block_size,
        max_tokens_default=args.max_tokens_default,
        embedding_dim=args.embedding_dim,
        cache_info=args.cache_info,
        costs=costs,
    )


class SimServer(uvicorn.Server):
    """Logs the listening line (and prints the port) once the socket accepts connections."""

    def __init__(self, config: uvicorn.Config, engine: Engine) -> None:
        super().__init__(config)
        self.engine = engine
        self.port = 0

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # uvicorn re-raises a captured signal after its graceful shutdown, which would end the
        # process by SIGTERM; the contract is exit 0 after draining, so only flag the exit.
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C stops waiting for in-flight requests
        else:
            self.should_exit = True

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.should_exit or not self.servers:
            return
        host, self.port = self.servers[0].sockets[0].getsockname()[:2]
        print(self.port, flush=True)
        fields_ = {"host": host, "port": self.port, "model": self.engine.settings.model}
        log.info("sim-engine listening", extra=fields_)


def build_server(settings: SimSettings, host: str, port: int) -> SimServer:
    """A server for tests and main alike; `await server.serve()` runs it until should_exit."""
    engine = Engine(settings)
    config = uvicorn.Config(
        build_app(engine),
        host=host,
        port=port,
        loop="none",
        http="httptools",
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    return SimServer(config, engine)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def main(argv: list[str]) -> int:
    parser = build_parser(os.environ)
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    setup_logging("sim-engine", args.log_level, args.log_json)
    # uvicorn's own start-up lines repeat what "sim-engine listening" says.
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    server = build_server(settings, args.host, args.port)
    # uvicorn's serve() turns SIGTERM/SIGINT into a graceful stop: close the listener, let
    # in-flight requests finish (bounded), then the lifespan stops the engine.
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(server.serve())
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
