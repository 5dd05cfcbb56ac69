"""The `llm-pool` command: one subcommand per process, and `up` for all three at once."""

from __future__ import annotations

import sys
from collections.abc import Callable

USAGE = """usage: llm-pool COMMAND [options]

commands:
  up          controller, one agent and a gateway on this machine (embedded defaults)
  controller  the control plane: desired state, routing snapshots, admin gRPC API
  agent       supervises model servers on this host and reports them to the controller
  gateway     OpenAI-compatible HTTP gateway
  certs       a CA and certificates for mutual TLS between the parts
  sim-engine  a simulated OpenAI-compatible engine with batching and a prefix cache

`llm-pool COMMAND --help` lists each command's options; every address is also an
environment variable (shown in the help).
"""


def _entry(command: str) -> Callable[[list[str]], int] | None:
    # Imported lazily so that each process loads only what it runs.
    if command == "controller":
        from controller.cli import main as controller_main

        return controller_main
    if command == "agent":
        from agent.cli import main as agent_main

        return agent_main
    if command == "gateway":
        from gateway.cli import main as gateway_main

        return gateway_main
    if command == "sim-engine":
        from llmpool.sim.cli import main as sim_main

        return sim_main
    if command == "certs":
        from llmpool.certs_cli import main as certs_main

        return certs_main
    if command == "up":
        from llmpool.up import main as up_main

        return up_main
    return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if args else 2
    entry = _entry(args[0])
    if entry is None:
        print(f"llm-pool: unknown command {args[0]!r}\n\n{USAGE}", end="", file=sys.stderr)
        return 2
    return entry(args[1:])


if __name__ == "__main__":
    sys.exit(main())
