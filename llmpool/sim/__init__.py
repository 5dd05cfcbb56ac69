"""A simulated OpenAI-compatible engine: continuous batching, a KV cache with prefix caching."""
