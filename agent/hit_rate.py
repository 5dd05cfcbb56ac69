"""An engine's recent prefix cache hit rate, from its cumulative counters or its own gauge."""

from __future__ import annotations

from agent.engine_metrics import EngineLoad


class HitRate:
    """Hits over lookups between the last two scrapes that saw lookups (vLLM's counters), or the
    rate the engine exports (SGLang). -1 until known. A counter that went down means the engine
    restarted: that scrape only sets the new baseline."""

    def __init__(self) -> None:
        self.value = -1.0
        self._hits: float | None = None
        self._queries: float | None = None

    def update(self, load: EngineLoad) -> None:
        if load.prefix_cache_hit_rate is not None:
            self.value = min(max(load.prefix_cache_hit_rate, 0.0), 1.0)
            return
        hits, queries = load.prefix_cache_hits, load.prefix_cache_queries
        if hits is None or queries is None:
            return
        if self._hits is not None and self._queries is not None:
            looked_up = queries - self._queries
            found = hits - self._hits
            if looked_up > 0 and found >= 0:
                self.value = min(found / looked_up, 1.0)
        self._hits, self._queries = hits, queries
