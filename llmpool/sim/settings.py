"""Every knob of the simulated engine in one typed object (filled from flags and env vars)."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmpool.sim.costs import CostModel


@dataclass(frozen=True)
class SimSettings:
    model: str = "sim"
    speedup: float = 1.0
    max_num_seqs: int = 64
    kv_blocks: int = 16384
    block_size: int = 64
    max_tokens_default: int = 32
    embedding_dim: int = 384
    # Whether /metrics says the cache's size (vLLM's cache_config_info); off: an engine that
    # says nothing of it, as llama-cpp-python's server.
    cache_info: bool = True
    costs: CostModel = field(default_factory=CostModel)

    def __post_init__(self) -> None:
        checks = (
            (self.speedup > 0, "speedup must be > 0"),
            (self.max_num_seqs >= 1, "max-num-seqs must be >= 1"),
            (self.kv_blocks >= 1, "kv-blocks must be >= 1"),
            (self.block_size >= 1, "block-size must be >= 1"),
            (self.max_tokens_default >= 1, "max-tokens-default must be >= 1"),
            (self.embedding_dim >= 1, "embedding-dim must be >= 1"),
            (bool(self.model), "model must not be empty"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
