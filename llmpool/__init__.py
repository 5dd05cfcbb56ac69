"""llm-pool: shared code of the controller, agent and gateway (config, protocol, CLI, simulator)."""

__version__ = "0.1.0"
